"""A router that streams exactly what a test scripts (CJK text, usage when and as it says, a stall, a dropped
connection), on a thread of its own; for the attacks the simulator's English word answers cannot stage."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from simulator.server import BackgroundServer


@dataclass
class Step:
    """One thing the router does: wait `delay_s`, then write `event` (a whole SSE event), or drop the connection."""

    delay_s: float = 0.0
    event: bytes = b""
    drop: bool = False


def chunk(text: str = "", *, finish: str | None = None, usage: tuple[int, int] | None = None, task_id: int = 7) -> bytes:
    payload: dict[str, Any] = {
        "id": "cmpl-scripted",
        "task_id": task_id,
        "object": "text_completion",
        "choices": [{"index": 0, "text": text, "finish_reason": finish}],
    }
    if usage is not None:
        payload["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


class ScriptedRouter(BackgroundServer):
    """Answers every completion with `script`; `finished` counts streams written to their end, `cut` those the
    gateway hung up on before the script was done."""

    thread_name = "scripted-router"

    def __init__(self, script: list[Step] | None = None) -> None:
        super().__init__()
        self.script: list[Step] = script or []
        self.finished = 0
        self.cut = 0
        self.requests = 0

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/status", self._status)
        app.router.add_get("/api/v1/ping", self._status)
        app.router.add_post("/api/v3/completions/{session}", self._complete)
        return app

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.requests += 1
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for step in self.script:
                if step.delay_s:
                    await asyncio.sleep(step.delay_s)
                if step.drop:
                    if request.transport is not None:
                        request.transport.close()  # mid chunked body: the client sees a truncated stream
                    return response
                if step.event:
                    await response.write(step.event)
            await response.write_eof()
            self.finished += 1
        except (ConnectionResetError, asyncio.CancelledError):
            self.cut += 1
            raise
        return response
