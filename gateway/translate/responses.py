"""The OpenAI Responses surface (`/v1/responses`), text only: request validation, the response object, the event stream."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import GatewayError, RateLimited
from gateway.translate.bounds import MAX_CONTENT_PARTS, MAX_MESSAGES, MAX_USER_CHARS
from gateway.translate.common import (
    ChatMessage,
    CompletionRequest,
    Usage,
    bounded_str,
    invalid_type,
    invalid_value,
    is_int,
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
    unsupported_parameter,
    unsupported_value,
)

_ROLES = frozenset({"user", "assistant", "system", "developer"})
_TEXT_PARTS = frozenset({"input_text", "output_text"})
_NO_TOOLS = "Tool calling is not offered on hosted routes."

# The ids a response and its one message item get: ours, derived from the request id (`req_<24 hex>`).
RESPONSE_ID = re.compile(r"resp_[0-9a-f]{24}")
MAX_RESPONSE_ID_CHARS = 64  # `previous_response_id` and the path of GET/DELETE: longer is no id of ours


def response_id_for(request_id: str) -> str:
    return f"resp_{request_id.removeprefix('req_')}"


def message_id_for(request_id: str) -> str:
    return f"msg_{request_id.removeprefix('req_')}"


@dataclass(slots=True)
class ResponsesRequest(CompletionRequest):
    """A `/v1/responses` body: the neutral request plus what this surface stores and echoes.

    `messages` is what the router is sent: `history` (a previous response's conversation, filled in once it
    was read) followed by `turns` (this request's own input). `instructions` is the system text of this
    request only; a previous response's instructions are not carried over (OpenAI's rule).
    """

    instructions: str | None = None
    turns: list[ChatMessage] = field(default_factory=list)
    history: list[ChatMessage] = field(default_factory=list)
    store: bool = True
    previous_response_id: str | None = None
    parallel_tool_calls: bool = True
    depth: int = 1  # responses in this conversation, this one included

    def continue_from(self, history: list[ChatMessage], depth: int) -> None:
        self.history = history
        self.messages = [*history, *self.turns]
        self.depth = depth + 1

    def conversation_chars(self) -> int:
        """What a stored response of this request holds before its answer: every turn's text and the instructions."""
        return sum(len(m.content) for m in self.messages or ()) + len(self.instructions or "")


def parse_responses_request(body: object) -> ResponsesRequest:
    """Validates a `/v1/responses` body; every refusal is an InvalidRequest naming the field in `param`."""
    body = require_object(body)
    model = required_model(body)
    _refuse_unsupported(body)
    turns = _parse_input(body.get("input"))
    instructions = optional_str(body, "instructions") or None
    store = optional_bool(body, "store")
    parallel_tool_calls = optional_bool(body, "parallel_tool_calls")
    return ResponsesRequest(
        surface="openai_responses",
        model=model,
        messages=list(turns),
        system=instructions,
        max_tokens=optional_positive_int(body, "max_output_tokens"),
        temperature=optional_number(body, "temperature", 0, 2),
        top_p=optional_number(body, "top_p", 0, 1),
        stream=bool(optional_bool(body, "stream")),
        include_usage=True,  # a response always reports its usage
        metadata=optional_metadata(body),
        user=bounded_str(body, "user", MAX_USER_CHARS),
        instructions=instructions,
        turns=turns,
        store=True if store is None else store,  # OpenAI's default: stored unless told otherwise
        previous_response_id=_parse_previous_response_id(body.get("previous_response_id")),
        parallel_tool_calls=True if parallel_tool_calls is None else parallel_tool_calls,
    )


def _refuse_unsupported(body: dict[str, Any]) -> None:
    # Each refusal names the field; the harmless forms (an empty list, `none`, `false`, null) are accepted,
    # because SDKs and agent frameworks send them on every call.
    if body.get("tools") not in (None, []):
        raise unsupported_parameter("tools", _NO_TOOLS)
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and tool_choice != "none":
        raise unsupported_value("tool_choice", f"only 'none' is accepted. {_NO_TOOLS}")
    include = body.get("include")
    if include is not None:
        if not isinstance(include, list):
            raise invalid_type("include", "an array", include)
        if include:
            raise unsupported_value("include", "no additional output data (logprobs, reasoning, tool results) is available.")
    reasoning = optional_object(body, "reasoning")
    if reasoning is not None and any(value is not None for value in reasoning.values()):
        raise unsupported_parameter("reasoning", "reasoning options are not offered on hosted routes.")
    text = optional_object(body, "text")
    if text is not None:
        fmt = text.get("format")
        if fmt is not None:
            if not isinstance(fmt, dict):
                raise invalid_type("text.format", "an object", fmt)
            if fmt.get("type") != "text":
                raise unsupported_value("text.format", "only {'type': 'text'} is supported.")
        if text.get("verbosity") is not None:
            raise unsupported_parameter("text.verbosity", "verbosity is not offered on hosted routes.")
    if body.get("conversation") is not None:
        raise unsupported_parameter("conversation", "conversations are not offered; continue with 'previous_response_id'.")
    if body.get("prompt") is not None:
        raise unsupported_parameter("prompt", "prompt templates are not offered; send 'input' and 'instructions'.")
    if optional_bool(body, "background"):
        raise unsupported_value("background", "background responses are not offered; use 'stream' for long answers.")
    truncation = body.get("truncation")
    if truncation is not None and truncation != "disabled":
        if truncation == "auto":
            raise unsupported_value("truncation", "only 'disabled' is supported: the conversation is never cut.")
        raise invalid_value("truncation", f"'{shown(truncation)}' is not one of 'auto', 'disabled'.")
    top_logprobs = body.get("top_logprobs")
    if top_logprobs is not None:
        if not is_int(top_logprobs):
            raise invalid_type("top_logprobs", "an integer", top_logprobs)
        if top_logprobs != 0:
            raise unsupported_value("top_logprobs", "log probabilities are not available.")


def _parse_input(raw: object) -> list[ChatMessage]:
    if raw is None:
        raise missing("input")
    if isinstance(raw, str):
        return [ChatMessage("user", raw)]
    if not isinstance(raw, list):
        raise invalid_type("input", "a string or an array of input items", raw)
    if not raw:
        raise invalid_value("input", "must contain at least one item.")
    if len(raw) > MAX_MESSAGES:
        raise invalid_value("input", f"at most {MAX_MESSAGES} items are allowed, got {len(raw)}.")
    turns: list[ChatMessage] = []
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid_type(where, "an object", item)
        kind = item.get("type")
        if kind is not None and kind != "message":
            if not isinstance(kind, str):
                raise invalid_type(f"{where}.type", "a string", kind)
            raise unsupported_value(f"{where}.type", f"input items of type '{shown(kind)}' are not supported; only messages are.")
        role = item.get("role")
        if role is None:
            raise missing(f"{where}.role")
        if not isinstance(role, str):
            raise invalid_type(f"{where}.role", "a string", role)
        if role not in _ROLES:
            raise invalid_value(f"{where}.role", f"'{shown(role)}' is not one of 'user', 'assistant', 'system', 'developer'.")
        content = item.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = _text_parts(content, f"{where}.content")
        elif content is None:
            raise missing(f"{where}.content")
        else:
            raise invalid_type(f"{where}.content", "a string or an array of content parts", content)
        turns.append(ChatMessage(role, text))
    return turns


def _text_parts(parts: list[Any], param: str) -> str:
    """Joins `input_text` / `output_text` parts (an assistant turn passed back holds the latter), refusing any other."""
    if len(parts) > MAX_CONTENT_PARTS:
        raise invalid_value(param, f"at most {MAX_CONTENT_PARTS} content parts are allowed, got {len(parts)}.")
    texts: list[str] = []
    for j, part in enumerate(parts):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise invalid_type(where, "an object", part)
        kind = part.get("type")
        if not isinstance(kind, str) or kind not in _TEXT_PARTS:
            if not isinstance(kind, str):
                raise missing(f"{where}.type") if kind is None else invalid_type(f"{where}.type", "a string", kind)
            raise unsupported_value(f"{where}.type", f"content of type '{shown(kind)}' is not supported; only text is.")
        text = part.get("text")
        if not isinstance(text, str):
            raise missing(f"{where}.text") if text is None else invalid_type(f"{where}.text", "a string", text)
        texts.append(text)
    # As on chat: separate parts are separate paragraphs to a reader.
    return "\n".join(texts)


def _parse_previous_response_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid_type("previous_response_id", "a string", value)
    if not value:
        raise invalid_value("previous_response_id", "must not be empty.")
    if len(value) > MAX_RESPONSE_ID_CHARS:
        raise invalid_value("previous_response_id", f"must be at most {MAX_RESPONSE_ID_CHARS} characters long, got {len(value)}.")
    return value


# --- the response object ----------------------------------------------------------------------------------------------


def usage_object(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    """The one output item of an answer: an assistant message holding one `output_text` part."""
    return {"id": item_id, "type": "message", "status": status, "content": [_part(text)], "role": "assistant"}


def _item_status(finish_reason: str) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def response_object(
    *,
    response_id: str,
    created_at: int,
    model: str,
    request: ResponsesRequest,
    status: str,
    output: list[dict[str, Any]],
    usage: Usage | None,
    completed_at: int | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `response` object, in OpenAI's field order, with every field the SDK's `Response` type requires."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "completed_at": completed_at,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_tokens,
        "model": model,
        "output": output,
        "parallel_tool_calls": request.parallel_tool_calls,
        "previous_response_id": request.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "store": request.store,
        "temperature": request.temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": "none",
        "tools": [],
        "top_p": request.top_p,
        "truncation": "disabled",
        "usage": usage_object(usage) if usage is not None else None,
        "user": request.user,
        "metadata": request.metadata or {},
    }


def responses_answer(
    *,
    request_id: str,
    created_at: int,
    model: str,
    request: ResponsesRequest,
    text: str,
    finish_reason: str,
    usage: Usage,
    completed_at: int,
) -> dict[str, Any]:
    """The `response` object of a non-streaming answer: `completed`, or `incomplete` when the token cap cut it."""
    status = _item_status(finish_reason)
    return response_object(
        response_id=response_id_for(request_id),
        created_at=created_at,
        model=model,
        request=request,
        status=status,
        output=[message_item(message_id_for(request_id), text, status)],
        usage=usage,
        completed_at=completed_at if status == "completed" else None,
    )


def _response_error(err: GatewayError) -> dict[str, Any]:
    # The SDK's ResponseError.code is a fixed list: ours map onto its two that can happen here.
    return {"code": "rate_limit_exceeded" if isinstance(err, RateLimited) else "server_error", "message": err.message}


# --- the event stream -------------------------------------------------------------------------------------------------


def _event(kind: str, sequence_number: int, rest: str) -> bytes:
    """One named event; `rest` is the compact JSON of the event's other fields (an object with at least one)."""
    return f'event: {kind}\ndata: {{"type":"{kind}","sequence_number":{sequence_number},{rest[1:]}\n\n'.encode()


_DELTA_HEAD = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":'
_DELTA_TAIL = b',"logprobs":[]}\n\n'


class ResponsesStreamTranslator:
    """Frames one answer as the Responses API's typed events, each with its `event:` line and `sequence_number`.

    `start` opens the response, its message item and its text part; each text delta is then one frame made of
    pre-serialised pieces, the sequence number and the encoded text (the per-token cost of the chat stream);
    `finish` closes the part, the item and the response (`response.completed`, or `response.incomplete` when
    the token cap cut the answer), and `error` ends it as `response.failed`. The finished response object is
    kept in `final` (its JSON in `final_json`, its text in `final_text`) for storing. No `[DONE]` in this format.
    """

    __slots__ = (
        "_request_id",
        "_created_at",
        "_model",
        "_request",
        "_clock",
        "_item_id",
        "_seq",
        "_pieces",
        "_delta_mid",
        "_started",
        "final",
        "final_json",
        "final_text",
    )

    def __init__(
        self,
        *,
        request_id: str,
        created_at: int,
        model: str,
        request: ResponsesRequest,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._request_id = request_id
        self._created_at = created_at
        self._model = model
        self._request = request
        self._clock = clock
        self._item_id = message_id_for(request_id)
        self._seq = 0
        self._pieces: list[str] = []
        self._delta_mid = f',"item_id":{json_compact(self._item_id)},"output_index":0,"content_index":0,"delta":'.encode()
        self._started = False
        self.final: dict[str, Any] | None = None
        self.final_json: str | None = None
        self.final_text = ""

    def _next(self) -> int:
        seq = self._seq
        self._seq = seq + 1
        return seq

    def _response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: Usage | None,
        *,
        error: dict[str, Any] | None = None,
        completed_at: int | None = None,
    ) -> dict[str, Any]:
        return response_object(
            response_id=response_id_for(self._request_id),
            created_at=self._created_at,
            model=self._model,
            request=self._request,
            status=status,
            output=output,
            usage=usage,
            completed_at=completed_at,
            error=error,
        )

    def _lifecycle(self, kind: str, response_json: str) -> bytes:
        return _event(kind, self._next(), f'{{"response":{response_json}}}')

    def _at(self, rest: dict[str, Any]) -> str:
        return json_compact({"item_id": self._item_id, "output_index": 0, "content_index": 0, **rest})

    def start(self) -> bytes:
        self._started = True
        opening = json_compact(self._response("in_progress", [], None))
        item = {"id": self._item_id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"}
        return b"".join(
            (
                self._lifecycle("response.created", opening),
                self._lifecycle("response.in_progress", opening),
                _event("response.output_item.added", self._next(), json_compact({"output_index": 0, "item": item})),
                _event("response.content_part.added", self._next(), self._at({"part": _part("")})),
            )
        )

    def text(self, t: str) -> bytes:
        if not t:
            return b""
        self._pieces.append(t)
        frame = b"".join((_DELTA_HEAD, str(self._next()).encode(), self._delta_mid, json_text(t), _DELTA_TAIL))
        return frame if self._started else self.start() + frame

    def finish(self, *, finish_reason: str, usage: Usage) -> bytes:
        opening = b"" if self._started else self.start()
        text = self.final_text = "".join(self._pieces)
        status = _item_status(finish_reason)
        item = message_item(self._item_id, text, status)
        completed_at = int(self._clock()) if status == "completed" else None
        self.final = self._response(status, [item], usage, completed_at=completed_at)
        self.final_json = json_compact(self.final)
        return b"".join(
            (
                opening,
                _event("response.output_text.done", self._next(), self._at({"text": text, "logprobs": []})),
                _event("response.content_part.done", self._next(), self._at({"part": _part(text)})),
                _event("response.output_item.done", self._next(), json_compact({"output_index": 0, "item": item})),
                self._lifecycle("response.completed" if status == "completed" else "response.incomplete", self.final_json),
            )
        )

    def error(self, err: GatewayError) -> bytes:
        """A failure after the stream began: `response.failed`, holding the text delivered so far; the stream ends."""
        opening = b"" if self._started else self.start()
        item = message_item(self._item_id, "".join(self._pieces), "incomplete")
        failed = json_compact(self._response("failed", [item], None, error=_response_error(err)))
        return opening + self._lifecycle("response.failed", failed)
