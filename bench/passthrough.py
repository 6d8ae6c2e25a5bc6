"""The reference for this stack: a bare ASGI application under daphne, no Django, that forwards to the router.

Served with `daphne bench.passthrough:application`; `FLOOR_UPSTREAM` is the router URL to post to. It calls the
router the way the gateway does (gateway/upstream.py): httpx's transport API straight, on the same aiohttp
transport built by the same function (portal_project/patches.py), with the same limits and a per-call timeout.
A body with `"stream": true` gets the router's 64-token SSE stream relayed chunk by chunk as it arrives; any
other body gets the router's fixed JSON answer, with a Content-Length. Nothing else: no auth, limits, parsing,
translation, usage or logs, so the gateway's figures divided by these are what the gateway's own work costs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from portal_project.patches import aiohttp_transport_keeping_received_bytes

UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:5010/api/v3/completions/101")
PROMPT = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
BODY = json.dumps({"prompt": PROMPT, "max_tokens": 16, "stream": False}, separators=(",", ":")).encode()
STREAM_BODY = json.dumps({"prompt": PROMPT, "max_tokens": 64, "stream": True}, separators=(",", ":")).encode()
TIMEOUT = {"connect": 5.0, "read": 30.0, "write": 30.0, "pool": 30.0}

_transport: httpx.AsyncBaseTransport | None = None

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def transport() -> httpx.AsyncBaseTransport:
    global _transport
    if _transport is None:
        # As gateway/upstream.py's _make_transport.
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30)
        _transport = aiohttp_transport_keeping_received_bytes(limits)
    return _transport


def wants_stream(body: bytes) -> bool:
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("stream") is True


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    stream = wants_stream(body)
    headers = {"content-type": "application/json", "user-agent": "cortensor-gateway"}
    if stream:
        headers["accept"] = "text/event-stream"
    request = httpx.Request(
        "POST", UPSTREAM, content=STREAM_BODY if stream else BODY, headers=headers, extensions={"timeout": TIMEOUT}
    )
    response = await transport().handle_async_request(request)
    if not stream:
        content = await response.aread()
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": content})
        return
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )
    try:
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        await response.aclose()
    await send({"type": "http.response.body", "body": b""})
