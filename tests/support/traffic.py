"""Request bodies, headers and stream checks for the three completion routes, shared by the fault and observability tests."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx

from tests.support.live import ALIAS

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
ENVELOPE = "/v1/completions"
SURFACES = (CHAT, MESSAGES, ENVELOPE)


def body_for(path: str, *, text: str = "hi", model: str = ALIAS, max_tokens: int = 16, stream: bool = False) -> dict[str, Any]:
    if path == ENVELOPE:
        return {"model": model, "prompt": text, "max_tokens": max_tokens, "stream": stream}
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    return body


def headers_for(raw_key: str, path: str) -> dict[str, str]:
    if path == MESSAGES:
        return {"x-api-key": raw_key, "anthropic-version": "2023-06-01"}
    return {"authorization": f"Bearer {raw_key}"}


def post(client: httpx.Client, base_url: str, raw_key: str, path: str = CHAT, **body: Any) -> httpx.Response:
    """One request, its body read to the end (streams included)."""
    return client.post(f"{base_url}{path}", json=body_for(path, **body), headers=headers_for(raw_key, path))


def stream_completed(path: str, text: str) -> bool:
    """A stream that reached its normal end in the route's own format (not an error event, not cut)."""
    if path == MESSAGES:
        return text.rstrip().endswith('data: {"type":"message_stop"}') and "event: error" not in text
    return text.rstrip().endswith("data: [DONE]") and '"error"' not in text.replace('"error":null', "")


def stream_text(path: str, text: str) -> str:
    """The answer text carried by a stream's events."""
    parts: list[str] = []
    for line in text.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if path == CHAT:
            parts.extend(choice["delta"].get("content") or "" for choice in event.get("choices") or [])
        elif path == MESSAGES:
            if event.get("type") == "content_block_delta":
                parts.append(event["delta"]["text"])
        else:
            parts.extend(choice.get("text") or "" for choice in (event.get("choices") or []))
    return "".join(parts)


def random_request_id() -> str:
    return f"client-{uuid.uuid4().hex}"
