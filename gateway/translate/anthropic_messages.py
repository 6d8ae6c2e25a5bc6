"""The Anthropic messages surface: request validation, the message object, the named-event stream and the error body."""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError
from gateway.translate.bounds import MAX_ANTHROPIC_STOPS, MAX_MESSAGES, MAX_USER_CHARS
from gateway.translate.common import (
    ChatMessage,
    CompletionRequest,
    Usage,
    bounded_stops,
    invalid_type,
    invalid_value,
    is_int,
    json_bytes,
    json_compact,
    json_text,
    missing,
    optional_bool,
    optional_metadata,
    optional_number,
    optional_object,
    optional_positive_int,
    optional_str,
    require_object,
    required_model,
    shown,
    text_blocks,
    unsupported_parameter,
    unsupported_value,
)

_ROLES = ("user", "assistant")
_NO_TOOLS = "Tool use is not offered on hosted routes."

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence"}

# Every request field Anthropic defines beyond those the router is given is decided here (README, compatibility):
# - used: `metadata.user_id`, the customer's own end-user id, stored on the usage row for their attribution;
# - accepted and ignored: the `anthropic-beta` header (no beta feature is offered; a body field that needs one is
#   refused by its own rule), `cache_control` at the top and on blocks (a caching hint; usage reports no cache
#   tokens), `service_tier` "auto"/"standard_only" and `speed: "standard"` (the one tier and speed), `diagnostics`,
#   `thinking: {"type": "disabled"}`, `tools: []`, `tool_choice: {"type": "none"}`, other `metadata` keys, and any
#   field Anthropic does not define;
# - refused with a 400 naming the field, because the answer could not be what they ask for: below.
_SERVICE_TIERS = ("auto", "standard_only")
_REFUSED_WHEN_SET = {
    "container": "code execution containers are not offered on hosted routes.",
    "context_management": "context management is not offered on hosted routes.",
    "inference_geo": "the inference location cannot be chosen on hosted routes.",
}


def parse_messages_request(body: object) -> CompletionRequest:
    """Validates a `/v1/messages` body; every refusal is an InvalidRequest naming the field in `param`."""
    body = require_object(body)
    model = required_model(body)
    max_tokens = optional_positive_int(body, "max_tokens")
    if max_tokens is None:
        raise missing("max_tokens")  # required by the real API too; clients always send it
    _refuse_unsupported(body)
    messages = _parse_messages(body)
    system = _parse_system(body.get("system"))

    top_k = body.get("top_k")
    if top_k is not None:
        if not is_int(top_k):
            raise invalid_type("top_k", "an integer", top_k)
        if top_k < 0:
            raise invalid_value("top_k", f"must be at least 0, got {shown(top_k)}.")

    metadata = optional_metadata(body)
    user_id = metadata.get("user_id") if metadata else None
    if isinstance(user_id, str) and len(user_id) > MAX_USER_CHARS:
        raise invalid_value("metadata.user_id", f"must be at most {MAX_USER_CHARS} characters long, got {len(user_id)}.")

    return CompletionRequest(
        surface="anthropic_messages",
        model=model,
        messages=messages,
        system=system,
        max_tokens=max_tokens,
        # Anthropic's temperature scale ends at 1, unlike OpenAI's.
        temperature=optional_number(body, "temperature", 0, 1),
        top_p=optional_number(body, "top_p", 0, 1),
        top_k=top_k,
        stop=_parse_stop_sequences(body.get("stop_sequences")),
        stream=bool(optional_bool(body, "stream")),
        # Anthropic always reports usage, in the answer and in the stream.
        include_usage=True,
        metadata=metadata,
        user=user_id if isinstance(user_id, str) else None,
    )


def _refuse_unsupported(body: dict[str, Any]) -> None:
    if body.get("tools") not in (None, []):
        raise unsupported_parameter("tools", _NO_TOOLS)
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and tool_choice != {"type": "none"}:
        raise unsupported_parameter("tool_choice", _NO_TOOLS)
    if body.get("mcp_servers") not in (None, []):
        raise unsupported_parameter("mcp_servers", _NO_TOOLS)
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict):
            raise invalid_type("thinking", "an object", thinking)
        if thinking.get("type") != "disabled":
            raise unsupported_value("thinking", "extended thinking is not offered on hosted routes.")
    for key, reason in _REFUSED_WHEN_SET.items():
        if body.get(key) is not None:
            raise unsupported_parameter(key, reason)
    output_config = optional_object(body, "output_config")
    if output_config is not None:
        if output_config.get("format") is not None:
            raise unsupported_parameter("output_config.format", "structured outputs are not offered on hosted routes.")
        if output_config.get("effort") is not None:
            raise unsupported_parameter("output_config.effort", "effort cannot be chosen on hosted routes.")
    tier = optional_str(body, "service_tier")
    if tier is not None and tier not in _SERVICE_TIERS:
        raise invalid_value("service_tier", "must be 'auto' or 'standard_only'.")
    speed = optional_str(body, "speed")
    if speed is not None and speed != "standard":
        raise unsupported_value("speed", "one speed is offered: 'standard'.")


def _parse_messages(body: dict[str, Any]) -> list[ChatMessage]:
    raw = body.get("messages")
    if raw is None:
        raise missing("messages")
    if not isinstance(raw, list):
        raise invalid_type("messages", "an array", raw)
    if not raw:
        raise invalid_value("messages", "must contain at least one message.")
    if len(raw) > MAX_MESSAGES:
        raise invalid_value("messages", f"at most {MAX_MESSAGES} messages are allowed, got {len(raw)}.")
    messages: list[ChatMessage] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid_type(where, "an object", message)
        role = message.get("role")
        if role is None:
            raise missing(f"{where}.role")
        if not isinstance(role, str):
            raise invalid_type(f"{where}.role", "a string", role)
        if role not in _ROLES:
            hint = " Use the top-level 'system' field." if role == "system" else ""
            raise invalid_value(f"{where}.role", f"'{shown(role)}' is not one of 'user', 'assistant'.{hint}")
        content = message.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = text_blocks(content, f"{where}.content")
        elif content is None:
            raise missing(f"{where}.content")
        else:
            raise invalid_type(f"{where}.content", "a string or an array of content blocks", content)
        messages.append(ChatMessage(role, text))
    return messages


def _parse_system(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, list):
        return text_blocks(value, "system") or None
    raise invalid_type("system", "a string or an array of text blocks", value)


def _parse_stop_sequences(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid_type("stop_sequences", "an array of strings", value)
    if len(value) > MAX_ANTHROPIC_STOPS:
        raise invalid_value("stop_sequences", f"at most {MAX_ANTHROPIC_STOPS} stop sequences are allowed, got {len(value)}.")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise invalid_type(f"stop_sequences[{i}]", "a string", item)
    return bounded_stops(value, "stop_sequences")


def _stop(finish_reason: str, stop_sequence: str | None) -> tuple[str, str | None]:
    reason = _STOP_REASONS.get(finish_reason, "end_turn")
    return reason, stop_sequence if reason == "stop_sequence" else None


def messages_response(
    *, message_id: str, model: str, text: str, finish_reason: str, stop_sequence: str | None, usage: Usage
) -> dict[str, Any]:
    """The `message` object of a non-streaming answer."""
    stop_reason, stop_sequence = _stop(finish_reason, stop_sequence)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def anthropic_error_body(err: GatewayError, request_id: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": err.anthropic_type, "message": err.message},
        "request_id": request_id,
    }


def _event(name: str, payload: str) -> str:
    return f"event: {name}\ndata: {payload}\n\n"


_PING = _event("ping", '{"type":"ping"}').encode()
_BLOCK_START = _event(
    "content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'
).encode()
_BLOCK_STOP = _event("content_block_stop", '{"type":"content_block_stop","index":0}').encode()
_MESSAGE_STOP = _event("message_stop", '{"type":"message_stop"}').encode()
_DELTA_OPEN = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'
_DELTA_CLOSE = b"}}\n\n"


class MessagesStreamTranslator:
    """Frames one answer as Anthropic's named events, one text block at index 0; no `[DONE]` in this format."""

    __slots__ = ("_message_id", "_model", "_input_tokens", "_started")

    def __init__(self, *, message_id: str, model: str, input_tokens: int) -> None:
        self._message_id = message_id
        self._model = model
        self._input_tokens = input_tokens
        self._started = False

    def start(self) -> bytes:
        self._started = True
        message: dict[str, Any] = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self._input_tokens,
                "output_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }
        start = b"event: message_start\ndata: " + json_bytes({"type": "message_start", "message": message}) + b"\n\n"
        return start + _BLOCK_START + _PING

    def text(self, t: str) -> bytes:
        if not t:
            return b""
        frame = _DELTA_OPEN + json_text(t) + _DELTA_CLOSE
        return frame if self._started else self.start() + frame

    def finish(self, *, finish_reason: str, stop_sequence: str | None, usage: Usage) -> bytes:
        stop_reason, stop_sequence = _stop(finish_reason, stop_sequence)
        # Usage here is cumulative; input_tokens is repeated because the router's count,
        # known only now, may differ from the estimate sent in message_start.
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens},
        }
        frames = b"".join((_BLOCK_STOP, b"event: message_delta\ndata: ", json_bytes(delta), b"\n\n", _MESSAGE_STOP))
        return (b"" if self._started else self.start()) + frames

    def error(self, err: GatewayError) -> bytes:
        payload = {"type": "error", "error": {"type": err.anthropic_type, "message": err.message}}
        return _event("error", json_compact(payload)).encode()
