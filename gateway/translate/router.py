"""The upstream side: the body sent to a Cortensor router, and defensive reading of its answer and its stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import UpstreamError
from gateway.translate.common import FinishReason, Usage, is_int, loads_exact
from gateway.translate.sse import SSEEvent


def build_router_body(
    *,
    prompt: str,
    stream: bool,
    max_tokens: int,
    timeout_s: int,
    request_id: str,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    stop: list[str] | None = None,
    prompt_type: int | None = None,
    prompt_template: str | None = None,
) -> dict[str, Any]:
    """The JSON body of `POST /api/v3/completions/{session}`; absent options are left out, not sent as null."""
    body: dict[str, Any] = {
        "prompt": prompt,
        "stream": stream,
        "timeout": timeout_s,
        "max_tokens": max_tokens,
    }
    if temperature is not None:
        body["temperature"] = temperature
    if top_p is not None:
        body["top_p"] = top_p
    if top_k is not None:
        body["top_k"] = top_k
    if presence_penalty is not None:
        body["presence_penalty"] = presence_penalty
    if frequency_penalty is not None:
        body["frequency_penalty"] = frequency_penalty
    if stop:
        body["stop"] = list(stop)
    body["client_reference"] = request_id
    if prompt_type is not None:
        body["prompt_type"] = prompt_type
    if prompt_template:
        body["prompt_template"] = prompt_template
    return body


def normalize_finish_reason(value: object) -> FinishReason:
    """Only running out of tokens is worth telling apart; every other end (eos, stop, unknown, missing) is a stop."""
    return "length" if value == "length" or value == "max_tokens" else "stop"


def parse_usage(value: object) -> Usage | None:
    """Router-reported counts, or None when either count is missing or not a whole number (the caller estimates)."""
    if not isinstance(value, dict):
        return None
    prompt = value.get("prompt_tokens")
    completion = value.get("completion_tokens")
    if is_int(prompt) and is_int(completion) and prompt >= 0 and completion >= 0:
        return Usage(prompt, completion, False)
    return None


def _is_done(data: bytes | str) -> bool:
    """The end marker, blanks around it allowed (any that str.strip removes, as when the data was text)."""
    if isinstance(data, str):
        return data.strip() == "[DONE]"
    return data == b"[DONE]" or (b"[DONE]" in data and data.decode("utf-8", "replace").strip() == "[DONE]")


_ANSWER_ORDER = (None, "message", "delta")
_STREAM_ORDER = (None, "delta", "message")


def _choice_text(choice: dict[str, Any], order: tuple[str | None, ...]) -> str:
    """The first non-empty text of a choice: `.text`, else the chat shapes' `.content`, in `order`."""
    for key in order:
        if key is None:
            text = choice.get("text")
        else:
            inner = choice.get(key)
            text = inner.get("content") if isinstance(inner, dict) else None
        if isinstance(text, str) and text:
            return text
    return ""


@dataclass(slots=True)
class RouterResult:
    text: str
    finish_reason: FinishReason
    usage: Usage | None
    raw: dict[str, Any]


def parse_router_completion(body: object) -> RouterResult:
    """The answer of a non-streaming call; an answer without any text is an upstream failure, not an empty reply."""
    if not isinstance(body, dict):
        raise UpstreamError()
    choices = body.get("choices")
    if isinstance(choices, list):
        # A redundant session answers once per miner: the first choice with text wins.
        for choice in choices:
            if isinstance(choice, dict) and (text := _choice_text(choice, _ANSWER_ORDER)):
                return RouterResult(
                    text=text,
                    finish_reason=normalize_finish_reason(choice.get("finish_reason")),
                    usage=parse_usage(body.get("usage")),
                    raw=body,
                )
    raise UpstreamError()


@dataclass(slots=True)
class RouterDelta:
    text: str
    finish_reason: FinishReason | None
    usage: Usage | None
    done: bool
    raw: dict[str, Any] | None


class RouterStreamReader:
    """Reads a router's stream one event at a time, keeping one miner's answer and the facts the caller needs at the end.

    `feed` returns a delta for every accepted chunk (also those without text, so the
    envelope can relay them one to one), a done delta for `[DONE]`, and None
    for what is skipped: other miners' chunks, non-JSON data (counted in
    `protocol_errors` for the caller to log), anything after `[DONE]`.
    A stream that closed with neither `saw_finish` nor `saw_done` was truncated.
    """

    __slots__ = (
        "finish_reason",
        "usage",
        "chunks",
        "protocol_errors",
        "dropped_chunks",
        "upstream_error",
        "saw_finish",
        "saw_done",
        "_lock_key",
        "_lock_value",
        "_lock_raw",
        "_lock_type",
    )

    def __init__(self) -> None:
        self.finish_reason: FinishReason | None = None
        self.usage: Usage | None = None
        self.chunks = 0
        self.protocol_errors = 0
        self.dropped_chunks = 0
        # The `error` member of a chunk that carried one (a router reporting a failure in-band).
        self.upstream_error: object = None
        self.saw_finish = False
        self.saw_done = False
        self._lock_key: str | None = None
        self._lock_value: str | None = None
        self._lock_raw: object = None
        self._lock_type: type | None = None

    @property
    def truncated(self) -> bool:
        return not (self.saw_finish or self.saw_done)

    def feed(self, event: SSEEvent) -> RouterDelta | None:
        return self.feed_data(event.data)

    def feed_data(self, data: bytes | str) -> RouterDelta | None:
        """One event's data: raw bytes from the relay (SSEParser.feed_data), or text. Run once per token: the
        common chunk (the locked miner's, `.text` set) takes the first branch of each test."""
        if self.saw_done:
            return None
        if len(data) < 16 and _is_done(data):
            self.saw_done = True
            return RouterDelta("", None, None, True, None)
        try:
            chunk = loads_exact(data)
        except (ValueError, RecursionError):  # RecursionError: nested a thousand levels deep
            self.protocol_errors += 1
            return None
        if type(chunk) is not dict:  # what a JSON parser returns is a plain dict or not a dict at all
            self.protocol_errors += 1
            return None

        key = self._lock_key
        if key is None:
            self._lock(chunk)
        else:
            # A redundant session interleaves several miners on one connection: keep the first. A chunk without
            # the key (a bare usage chunk, say) cannot be told apart; keep it.
            value = chunk.get(key)
            fast = value is None or (type(value) is self._lock_type and value == self._lock_raw)
            if not fast and str(value) != self._lock_value:
                self.dropped_chunks += 1
                return None
        self.chunks += 1

        error = chunk.get("error")
        if error:
            self.upstream_error = error

        text = ""
        finish: FinishReason | None = None
        choices = chunk.get("choices")
        if type(choices) is list and choices:
            choice = choices[0]
            if type(choice) is dict:
                first = choice.get("text")
                text = first if type(first) is str and first else _choice_text(choice, _STREAM_ORDER)
                reason = choice.get("finish_reason")
                if reason is not None:
                    finish = normalize_finish_reason(reason)
                    self.finish_reason = finish
                    self.saw_finish = True
        usage = None
        reported = chunk.get("usage")
        if reported is not None:
            usage = parse_usage(reported)
            if usage is not None:
                self.usage = usage
        return RouterDelta(text, finish, usage, False, chunk)

    def _lock(self, chunk: dict[str, Any]) -> None:
        for candidate in ("task_id", "id"):
            value = chunk.get(candidate)
            if value is not None:
                self._lock_key = candidate
                self._lock_value = str(value)
                # Equal values of these types have equal str(); any other type is compared by str() alone.
                if type(value) is int or type(value) is str:
                    self._lock_raw, self._lock_type = value, type(value)
                break
