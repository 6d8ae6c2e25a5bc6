"""The Cortensor envelope surface (`/v1/completions`): the router's own call, wrapped with our request id and status."""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError
from gateway.translate.common import (
    CompletionRequest,
    bounded_model,
    invalid_type,
    invalid_value,
    json_compact,
    missing,
    optional_bool,
    optional_number,
    optional_positive_int,
    require_object,
)
from gateway.translate.sse import format_sse


def parse_envelope_request(body: object) -> CompletionRequest:
    """Validates a `/v1/completions` body; `model` None means the caller applies PORTAL_DEFAULT_MODEL."""
    body = require_object(body)
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise invalid_type("model", "a string", model)
        model = bounded_model(model) or None
    prompt = body.get("prompt")
    if prompt is None:
        raise missing("prompt")
    if not isinstance(prompt, str):
        raise invalid_type("prompt", "a string", prompt)
    if not prompt:
        raise invalid_value("prompt", "must not be empty.")
    return CompletionRequest(
        surface="envelope",
        model=model,
        prompt=prompt,
        max_tokens=optional_positive_int(body, "max_tokens"),
        temperature=optional_number(body, "temperature", 0, 2),
        top_p=optional_number(body, "top_p", 0, 1),
        stream=bool(optional_bool(body, "stream")),
    )


def envelope_response(*, request_id: str, model: str, pool_name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "status": "ok",
        "model": model,
        "router_pool": pool_name,
        "data": data,
        "error": None,
    }


def envelope_error_body(err: GatewayError, *, request_id: str, model: str | None, pool_name: str | None) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "status": "failed",
        "model": model,
        "router_pool": pool_name,
        "data": None,
        "error": {"code": err.envelope_code, "message": err.message, "details": err.details},
    }


_DONE = b"data: [DONE]\n\n"


class EnvelopeStreamTranslator:
    """Relays the router's chunks one to one (the caller has already dropped other miners' chunks)."""

    __slots__ = ("_model", "_pool_name")

    def __init__(self, *, model: str | None = None, pool_name: str | None = None) -> None:
        self._model = model
        self._pool_name = pool_name

    def start(self) -> bytes:
        return b""

    def chunk(self, raw: dict[str, Any] | str) -> bytes:
        """A router chunk as a frame; pass the event's data string to relay it byte for byte without re-encoding."""
        if isinstance(raw, str):
            return format_sse(raw)
        return f"data: {json_compact(raw)}\n\n".encode()

    def finish(self) -> bytes:
        return _DONE

    def error(self, err: GatewayError, request_id: str) -> bytes:
        body = envelope_error_body(err, request_id=request_id, model=self._model, pool_name=self._pool_name)
        return f"data: {json_compact(body)}\n\n".encode()
