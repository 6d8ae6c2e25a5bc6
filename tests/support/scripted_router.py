"""A router that streams exactly what a test scripts (CJK text, usage when and as it says, a stall, a dropped
connection), on a thread of its own; for the attacks the simulator's English word answers cannot stage."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


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


@dataclass
class ScriptedRouter:
    """Answers every completion with `script`; `finished` counts streams written to their end, `cut` those the
    gateway hung up on before the script was done."""

    script: list[Step] = field(default_factory=list)
    port: int = 0
    finished: int = 0
    cut: int = 0
    requests: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ScriptedRouter:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def boot() -> None:
            app = web.Application()
            app.router.add_get("/api/v1/status", self._status)
            app.router.add_get("/api/v1/ping", self._status)
            app.router.add_post("/api/v3/completions/{session}", self._complete)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(boot())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="scripted-router", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the scripted router did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

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
