"""Types and helpers shared by every surface: the neutral request, usage, token estimates, stop strings, field checks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.errors import InvalidRequest
from gateway.translate.tokens import estimate_tokens as estimate_tokens  # re-exported: callers count tokens from here

# Compact, ASCII-only JSON: escaped non-ASCII can never be split or mis-decoded on the way
# out (a lone surrogate from upstream stays valid), and the C encoder is fastest this way.
json_compact = json.JSONEncoder(ensure_ascii=True, check_circular=False, separators=(",", ":")).encode

Surface = Literal["openai_chat", "anthropic_messages", "envelope"]

# "stop_sequence" is a stop string the gateway itself matched and cut; surfaces map it
# to their own wording ("stop" for OpenAI, "stop_sequence" for Anthropic).
FinishReason = Literal["stop", "length", "stop_sequence"]


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(slots=True)
class CompletionRequest:
    """A customer request with its surface's wire details removed."""

    surface: Surface
    model: str | None
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    metadata: dict[str, Any] | None = None
    user: str | None = None


def _earliest_stop(text: str, stops: list[str]) -> tuple[int, str | None]:
    # At equal positions the shorter stop wins: it is the one a stream completes first,
    # so streamed and non-streamed answers agree.
    best, best_stop = -1, None
    for stop in stops:
        i = text.find(stop)
        if i != -1 and (best == -1 or i < best or (i == best and len(stop) < len(best_stop))):
            best, best_stop = i, stop
    return best, best_stop


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    """A whole answer cut before its earliest stop string, and the stop that matched (None when none did)."""
    i, stop = _earliest_stop(text, [s for s in stops if s])
    if stop is None:
        return text, None
    return text[:i], stop


class StopMatcher:
    """Cuts a stream of text at the first stop string, however the stop is split across chunks.

    `feed` returns the text safe to send now and the stop that matched, if one did (the
    caller then ends the stream; later feeds return nothing). Text that could still be
    the beginning of a stop is held back until it can no longer be, or until `flush`.
    """

    __slots__ = ("_stops", "_held", "matched")

    def __init__(self, stops: list[str] | None) -> None:
        self._stops = [s for s in stops or () if s]
        self._held = ""
        # The stop that ended the stream; also set by `flush` in the rare case where a
        # shorter stop sat inside held text that turned out not to start a longer one.
        self.matched: str | None = None

    def feed(self, text: str) -> tuple[str, str | None]:
        if not self._stops:
            return text, None
        if self.matched is not None:
            return "", None
        buf = self._held + text if self._held else text
        found, stop = _earliest_stop(buf, self._stops)
        # Earliest start of a tail that is a proper prefix of some stop: nothing from
        # there on may leave until the next chunk settles it.
        n = len(buf)
        hold_from = found if stop is not None else n
        for s in self._stops:
            # Candidates start with the stop's first character; usually there is none,
            # which keeps this to one find per stop on the per-token path.
            first = s[0]
            start = buf.find(first, max(0, n - len(s) + 1), hold_from)
            while start != -1:
                if s.startswith(buf[start:]):
                    hold_from = start
                    break
                start = buf.find(first, start + 1, hold_from)
        if stop is not None and hold_from >= found:
            self.matched = stop
            self._held = ""
            return buf[:found], stop
        self._held = buf[hold_from:]
        return buf[:hold_from], None

    def flush(self) -> str:
        """Held-back text at the end of the stream (cut if it turns out to hold a whole stop)."""
        held, self._held = self._held, ""
        if not held or self.matched is not None:
            return ""
        found, stop = _earliest_stop(held, self._stops)
        if stop is None:
            return held
        self.matched = stop
        return held[:found]


# Field checks shared by the request parsers. bool is a subclass of int in Python but
# never a number on the wire, hence the explicit exclusions.


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def type_name(value: object) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def invalid_type(param: str, expected: str, value: object) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {type_name(value)} instead.",
        param=param,
        code="invalid_type",
    )


def invalid_value(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': {message}", param=param, code="invalid_value")


def missing(param: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def unsupported_parameter(param: str, reason: str) -> InvalidRequest:
    return InvalidRequest(f"Unsupported parameter: '{param}'. {reason}", param=param, code="unsupported_parameter")


def unsupported_value(param: str, reason: str) -> InvalidRequest:
    return InvalidRequest(f"Unsupported value for '{param}': {reason}", param=param, code="unsupported_value")


def require_object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, but got {type_name(body)}.", code="invalid_type")
    return body


def optional_number(body: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not is_number(value):
        raise invalid_type(key, "a number", value)
    # NaN fails both comparisons, so it is refused here too.
    if not low <= value <= high:
        raise invalid_value(key, f"must be between {low:g} and {high:g}, got {value!r}.")
    return float(value)


def optional_positive_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not is_int(value):
        raise invalid_type(key, "an integer", value)
    if value < 1:
        raise invalid_value(key, f"must be at least 1, got {value}.")
    return value


def optional_bool(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise invalid_type(key, "a boolean", value)


def optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    raise invalid_type(key, "a string", value)


def optional_object(body: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise invalid_type(key, "an object", value)


def required_model(body: dict[str, Any]) -> str:
    value = body.get("model")
    if value is None:
        raise missing("model")
    if not isinstance(value, str):
        raise invalid_type("model", "a string", value)
    if not value:
        raise invalid_value("model", "must not be empty.")
    return value


def text_blocks(value: list[Any], param: str) -> str:
    """Joins a list of `{"type":"text","text":…}` parts, refusing any other kind of part."""
    texts: list[str] = []
    for j, part in enumerate(value):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise invalid_type(where, "an object", part)
        kind = part.get("type")
        if kind != "text":
            if not isinstance(kind, str):
                raise missing(f"{where}.type") if kind is None else invalid_type(f"{where}.type", "a string", kind)
            raise unsupported_value(f"{where}.type", f"content of type '{kind}' is not supported; only text is.")
        text = part.get("text")
        if not isinstance(text, str):
            raise missing(f"{where}.text") if text is None else invalid_type(f"{where}.text", "a string", text)
        texts.append(text)
    # Separate parts are separate paragraphs to a reader; gluing them would merge words.
    return "\n".join(texts)
