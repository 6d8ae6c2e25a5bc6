"""The OpenAI chat-completions surface: request validation, the answer object, the chunk stream and the error body."""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError
from gateway.translate.bounds import MAX_MESSAGES, MAX_OPENAI_STOPS, MAX_USER_CHARS
from gateway.translate.common import (
    ChatMessage,
    CompletionRequest,
    Usage,
    bounded_stops,
    bounded_str,
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

_ROLES = frozenset({"system", "developer", "user", "assistant"})
_NO_TOOLS = "Tool calling is not offered on hosted routes."

# Every request field OpenAI defines beyond those the router is given is decided here (README, compatibility):
# - used: `user` (or `safety_identifier`, its successor, when `user` is absent) is the customer's own end-user id,
#   stored on the usage row for their attribution;
# - accepted and ignored, after a type check, because ignoring them changes nothing the caller can rely on: `seed`
#   (determinism is best effort at OpenAI too), `metadata` (kept by OpenAI only with stored completions),
#   `parallel_tool_calls` (no tools), `prediction` (a latency hint: the answer is the same), `prompt_cache_key` and
#   `prompt_cache_retention` (caching hints), `service_tier` "auto"/"default" (the one tier), `store: false`,
#   `stream_options.include_obfuscation` (nothing is obfuscated), and any field OpenAI does not define;
# - refused with a 400 naming the field, because the answer could not be what they ask for: below and in
#   _refuse_unsupported.
_SERVICE_TIERS = ("auto", "default")
# Fields refused whenever they carry a value (null is "not set" in OpenAI's API), with the reason given.
_REFUSED_WHEN_SET = {
    "audio": "audio output is not offered; answers are text.",
    "reasoning_effort": "reasoning effort cannot be chosen on hosted routes.",
    "verbosity": "verbosity cannot be chosen on hosted routes.",
    "web_search_options": "web search is not offered on hosted routes.",
    "top_logprobs": "log probabilities are not available.",
    "moderation": "moderation policies are not offered on hosted routes.",
}


def parse_chat_request(body: object) -> CompletionRequest:
    """Validates a `/v1/chat/completions` body; every refusal is an InvalidRequest naming the field in `param`."""
    body = require_object(body)
    model = required_model(body)
    _refuse_unsupported(body)
    messages = _parse_messages(body)

    # max_completion_tokens is OpenAI's current name; max_tokens the deprecated one still sent by many clients.
    max_tokens = optional_positive_int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = optional_positive_int(body, "max_tokens")

    stream = bool(optional_bool(body, "stream"))
    include_usage = False
    options = optional_object(body, "stream_options")
    if options is not None:
        flag = options.get("include_usage")
        if flag is not None and not isinstance(flag, bool):
            raise invalid_type("stream_options.include_usage", "a boolean", flag)
        include_usage = stream and bool(flag)

    seed = body.get("seed")
    if seed is not None and not is_int(seed):
        raise invalid_type("seed", "an integer", seed)
    _check_ignored(body)
    user = bounded_str(body, "user", MAX_USER_CHARS)
    # OpenAI's successor of `user`; both name the caller's end user, `user` wins when both are sent.
    safety_identifier = bounded_str(body, "safety_identifier", MAX_USER_CHARS)

    return CompletionRequest(
        surface="openai_chat",
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=optional_number(body, "temperature", 0, 2),
        top_p=optional_number(body, "top_p", 0, 1),
        presence_penalty=optional_number(body, "presence_penalty", -2, 2),
        frequency_penalty=optional_number(body, "frequency_penalty", -2, 2),
        stop=_parse_stop(body.get("stop")),
        stream=stream,
        include_usage=include_usage,
        metadata=optional_metadata(body),
        user=user or safety_identifier or None,
    )


def _check_ignored(body: dict[str, Any]) -> None:
    """Fields accepted and ignored still have their type: a wrong one is a mistake the caller should hear of."""
    optional_bool(body, "parallel_tool_calls")
    optional_object(body, "prediction")
    optional_str(body, "prompt_cache_key")
    optional_str(body, "prompt_cache_retention")


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for key in ("tools", "functions"):
        # An empty list asks for nothing; clients that always send the field should not fail.
        if body.get(key) not in (None, []):
            raise unsupported_parameter(key, _NO_TOOLS)
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and tool_choice != "none":
        raise unsupported_value("tool_choice", f"only 'none' is accepted. {_NO_TOOLS}")
    if body.get("function_call") not in (None, "none"):
        raise unsupported_parameter("function_call", _NO_TOOLS)

    n = body.get("n")
    if n is not None:
        if not is_int(n):
            raise invalid_type("n", "an integer", n)
        if n != 1:
            raise unsupported_value("n", "only one choice is generated, so 'n' must be 1.")

    response_format = body.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict):
            raise invalid_type("response_format", "an object", response_format)
        if response_format.get("type") != "text":
            raise unsupported_value("response_format", "only {'type': 'text'} is supported.")

    if optional_bool(body, "logprobs"):
        raise unsupported_value("logprobs", "log probabilities are not available.")

    for key, reason in _REFUSED_WHEN_SET.items():
        if body.get(key) is not None:
            raise unsupported_parameter(key, reason)
    logit_bias = body.get("logit_bias")
    if logit_bias is not None:
        if not isinstance(logit_bias, dict):
            raise invalid_type("logit_bias", "an object", logit_bias)
        if logit_bias:  # {} biases nothing
            raise unsupported_parameter("logit_bias", "token biases cannot be applied on hosted routes.")
    modalities = body.get("modalities")
    if modalities is not None:
        if not isinstance(modalities, list):
            raise invalid_type("modalities", "an array", modalities)
        if any(kind != "text" for kind in modalities):
            raise unsupported_value("modalities", "only ['text'] is supported.")
    if optional_bool(body, "store"):
        raise unsupported_value("store", "chat completions are not stored; send store: false or leave it out.")
    tier = optional_str(body, "service_tier")
    if tier is not None and tier not in _SERVICE_TIERS:
        raise unsupported_value("service_tier", "one service tier is offered: 'auto' or 'default'.")


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
        if role in ("tool", "function"):
            raise unsupported_value(f"{where}.role", f"messages with role '{role}' are not supported. {_NO_TOOLS}")
        if role not in _ROLES:
            raise invalid_value(f"{where}.role", f"'{shown(role)}' is not one of 'system', 'developer', 'user', 'assistant'.")
        for key in ("tool_calls", "function_call"):
            if message.get(key):
                raise unsupported_parameter(f"{where}.{key}", _NO_TOOLS)
        content = message.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = text_blocks(content, f"{where}.content")
        elif content is None:
            raise missing(f"{where}.content")
        else:
            raise invalid_type(f"{where}.content", "a string or an array of content parts", content)
        messages.append(ChatMessage(role, text))
    return messages


def _parse_stop(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return bounded_stops([value], "stop", listed=False)
    if not isinstance(value, list):
        raise invalid_type("stop", "a string or an array of strings", value)
    if len(value) > MAX_OPENAI_STOPS:
        raise invalid_value("stop", f"at most {MAX_OPENAI_STOPS} stop sequences are allowed, got {len(value)}.")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise invalid_type(f"stop[{i}]", "a string", item)
    return bounded_stops(value, "stop")


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def chat_completion_response(
    *, completion_id: str, created: int, model: str, text: str, finish_reason: str, usage: Usage
) -> dict[str, Any]:
    """The `chat.completion` object of a non-streaming answer."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": _finish(finish_reason),
            }
        ],
        "usage": _usage(usage),
    }


def openai_error_body(err: GatewayError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": err.openai_type, "param": err.param, "code": err.code}}


_DONE = b"data: [DONE]\n\n"


class ChatStreamTranslator:
    """Frames one answer as `chat.completion.chunk` events.

    The parts of a chunk that never change are serialised once, so a token costs one
    string encode. After `error` the stream ends without `[DONE]`: the official SDKs
    raise on the error frame and read no further, and a client that ignores the error
    key still sees an unfinished stream rather than a clean end.
    """

    __slots__ = ("_head", "_tail", "_text_open", "_text_close", "_include_usage", "_started")

    def __init__(self, *, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self._head = (
            f'data: {{"id":{json_compact(completion_id)},"object":"chat.completion.chunk",'
            f'"created":{int(created)},"model":{json_compact(model)},"choices":'
        )
        # OpenAI marks every chunk before the usage chunk with "usage": null when usage was asked for.
        self._tail = ',"usage":null}\n\n' if include_usage else "}\n\n"
        self._text_open = f'{self._head}[{{"index":0,"delta":{{"content":'.encode()
        self._text_close = f'}},"logprobs":null,"finish_reason":null}}]{self._tail}'.encode()
        self._include_usage = include_usage
        self._started = False

    def _choice(self, delta: str, finish_reason: str | None) -> bytes:
        finish = "null" if finish_reason is None else json_compact(finish_reason)
        return f'{self._head}[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]{self._tail}'.encode()

    def start(self) -> bytes:
        self._started = True
        return self._choice('{"role":"assistant","content":""}', None)

    def text(self, t: str) -> bytes:
        if not t:
            return b""
        frame = self._text_open + json_text(t) + self._text_close
        return frame if self._started else self.start() + frame

    def finish(self, *, finish_reason: str, usage: Usage, cost_micros: int | None = None) -> bytes:
        """`cost_micros`, when given, rides in the usage chunk beside the counts (the SDKs keep unknown fields)."""
        frames = b"" if self._started else self.start()
        frames += self._choice("{}", _finish(finish_reason))
        if self._include_usage:
            totals: dict[str, int] = _usage(usage)
            if cost_micros is not None:
                totals["cost_micros"] = cost_micros
            frames += f'{self._head}[],"usage":'.encode() + json_bytes(totals) + b"}\n\n"
        return frames + _DONE

    def error(self, err: GatewayError) -> bytes:
        return f"data: {json_compact(openai_error_body(err))}\n\n".encode()
