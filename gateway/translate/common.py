"""Types and helpers shared by every surface: the neutral request, usage, token estimates, stop strings, field checks."""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from json.encoder import encode_basestring_ascii as _encode_basestring_ascii
from typing import Any, Literal, TypeGuard

import orjson

from gateway.errors import InvalidRequest
from gateway.translate.bounds import (
    MAX_CONTENT_PARTS,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_CHARS,
    MAX_MODEL_CHARS,
    MAX_STOP_CHARS,
    MAX_STOPS_TOTAL_CHARS,
)
from gateway.translate.tokens import estimate_tokens as estimate_tokens  # re-exported: callers count tokens from here

# Compact, ASCII-only JSON: escaped non-ASCII can never be split or mis-decoded on the way
# out (a lone surrogate from upstream stays valid), and the C encoder is fastest this way.
json_compact = json.JSONEncoder(ensure_ascii=True, check_circular=False, separators=(",", ":")).encode


def json_text(text: str) -> bytes:
    """One string as a JSON string, the bytes of `json_compact(text).encode()`: a streamed token's cost."""
    return _encode_basestring_ascii(text).encode()


def json_bytes(value: object) -> bytes:
    """`json_compact(value).encode()`, by orjson (~15x faster on an answer object) where that gives the same JSON.

    orjson writes non-ASCII as UTF-8 and DEL unescaped, and refuses lone surrogates and integers past 64 bits:
    those values take json_compact, so the bytes stay escaped ASCII, as always. It writes a float below 1e-4 in
    another form (0.00001 or 1.5e-6 for Python's 1e-05 and 1.5e-06): output holding "0.0000", "e-" or "e+" takes
    json_compact too (checked on 200,000 random floats; text holding them only costs the slower path). One
    difference remains, only in what a router itself sent and the envelope relays: NaN or Infinity (not JSON,
    which json.loads accepts) is written as null instead of the invalid literal.
    """
    try:
        out = orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError: a lone surrogate, a big integer, a type orjson does not write
        return json_compact(value).encode()
    if out.isascii() and b"\x7f" not in out and b"0.0000" not in out and b"e-" not in out and b"e+" not in out:
        return out
    return json_compact(value).encode()


# Digits to "0", everything else to "x": a run of 19 zeros is a number orjson might not read as json.loads does.
_DIGIT_RUNS = bytes(0x30 if 0x30 <= i <= 0x39 else 0x78 for i in range(256))
_LONG_NUMBER = b"0" * 19


def loads_exact(data: bytes | bytearray | str) -> Any:
    """`json.loads(data.decode("utf-8", "replace"))` (or of the text), by orjson (~3x faster) wherever it reads the
    same value.

    orjson refuses what json.loads accepts beyond the JSON standard (NaN and Infinity, lone surrogate escapes,
    nesting past 1024 levels) and what the decoding would repair (invalid UTF-8, a byte-order mark): json.loads then
    parses it or raises exactly as before. The one thing orjson reads differently, an integer past 64 bits (as a
    float), is kept from it by a check in C for any run of 19 or more digits (json.loads then reads it).
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if _LONG_NUMBER not in raw.translate(_DIGIT_RUNS):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data if isinstance(data, str) else data.decode("utf-8", "replace"))


Surface = Literal["openai_chat", "anthropic_messages", "envelope", "openai_responses"]

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


class _StopAutomaton:
    """Aho-Corasick over a request's stop strings: each character of the answer is one transition, whatever the
    number or the length of the stops.

    A state is a trie node: the longest tail of the text read so far that begins some stop. Its depth is how
    much text must be held back (it may still become a stop); `out` is the length of the longest stop ending
    there (the one that began earliest); `first` finds the next character that can begin a stop, so text
    that cannot is skipped in C.
    """

    __slots__ = ("goto", "fail", "depth", "out", "first")

    def __init__(self, stops: tuple[str, ...]) -> None:
        goto: list[dict[str, int]] = [{}]
        depth = [0]
        out = [0]
        for stop in stops:
            node = 0
            for char in stop:
                nxt = goto[node].get(char)
                if nxt is None:
                    nxt = len(goto)
                    goto[node][char] = nxt
                    goto.append({})
                    depth.append(depth[node] + 1)
                    out.append(0)
                node = nxt
            out[node] = len(stop)
        fail = [0] * len(goto)
        queue = deque(goto[0].values())
        while queue:  # breadth first: a node's fallback is shallower, so settled before it
            node = queue.popleft()
            for char, child in goto[node].items():
                queue.append(child)
                back = fail[node]
                while back and char not in goto[back]:
                    back = fail[back]
                target = goto[back].get(char, 0)
                fail[child] = target if target != child else 0
                if not out[child]:
                    out[child] = out[fail[child]]
        self.goto = goto
        self.fail = fail
        self.depth = depth
        self.out = out
        self.first = re.compile("[" + "".join(re.escape(char) for char in goto[0]) + "]").search


@lru_cache(maxsize=64)
def _automaton(stops: tuple[str, ...]) -> _StopAutomaton:
    # Clients send the same few stops again and again; at most MAX_STOPS_TOTAL_CHARS states each.
    return _StopAutomaton(stops)


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    """A whole answer cut before its earliest stop string, and the stop that matched (None when none did).

    The earliest stop wins and, of two starting at the same place, the shorter, as in a stream: this is the
    streamed matcher fed the whole answer at once, so both ways agree by construction.
    """
    matcher = StopMatcher(stops)
    kept, stop = matcher.feed(text)
    if stop is None:
        kept += matcher.flush()
        stop = matcher.matched
    return kept, stop


class StopMatcher:
    """Cuts a stream of text at the first stop string, however the stop is split across chunks.

    `feed` returns the text safe to send now and the stop that matched, if one did (the
    caller then ends the stream; later feeds return nothing). Text that could still be
    the beginning of a stop is held back until it can no longer be, or until `flush`.
    The work per chunk is one automaton step per character that may be part of a stop.
    """

    __slots__ = ("_auto", "_state", "_held", "_pending", "_pending_len", "matched")

    def __init__(self, stops: list[str] | None) -> None:
        kept = tuple(dict.fromkeys(s for s in stops or () if s))
        self._auto = _automaton(kept) if kept else None
        self._state = 0
        self._held = ""
        # A stop found in the held text that a longer stop, begun earlier, may still beat: its start in `_held`.
        self._pending = -1
        self._pending_len = 0
        # The stop that ended the stream; also set by `flush` in the rare case where a
        # shorter stop sat inside held text that turned out not to start a longer one.
        self.matched: str | None = None

    @property
    def active(self) -> bool:
        """False when there is no stop to look for: `feed` would return its text as it is."""
        return self._auto is not None

    def feed(self, text: str) -> tuple[str, str | None]:
        auto = self._auto
        if auto is None:
            return text, None
        if self.matched is not None:
            return "", None
        held = self._held
        buf = held + text if held else text
        i, n = len(held), len(buf)
        state, pending, pending_len = self._state, self._pending, self._pending_len
        goto, fail, depth, out = auto.goto, auto.fail, auto.depth, auto.out
        while i < n:
            if not state:
                found = auto.first(buf, i)
                if found is None:
                    break
                i = found.start()
            char = buf[i]
            i += 1
            while True:
                nxt = goto[state].get(char)
                if nxt is not None:
                    state = nxt
                    break
                if not state:
                    break
                state = fail[state]
            length = out[state]
            if length and (pending < 0 or i - length < pending):
                pending, pending_len = i - length, length
            # No stop found later can begin before the tail the state stands for: at an equal start it would
            # be the longer one, and the shorter wins.
            if pending >= 0 and pending <= i - depth[state]:
                self.matched = buf[pending : pending + pending_len]
                self._held, self._state, self._pending = "", 0, -1
                return buf[:pending], self.matched
        hold_from = n - depth[state]
        self._state = state
        self._held = buf[hold_from:]
        self._pending = pending - hold_from if pending >= 0 else -1
        self._pending_len = pending_len
        return buf[:hold_from], None

    def flush(self) -> str:
        """Held-back text at the end of the stream (cut if it turns out to hold a whole stop)."""
        held, pending = self._held, self._pending
        self._held, self._state, self._pending = "", 0, -1
        if not held or self.matched is not None:
            return ""
        if pending < 0:
            return held
        self.matched = held[pending : pending + self._pending_len]
        return held[:pending]


# Field checks shared by the request parsers. bool is a subclass of int in Python but
# never a number on the wire, hence the explicit exclusions.


def is_int(value: object) -> TypeGuard[int]:
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


_SHOWN_CHARS = 40


def shown(value: object) -> str:
    """A client's value quoted in an error message, cut short: a refusal never echoes a megabyte back."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"


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
        raise invalid_value(key, f"must be between {low:g} and {high:g}, got {shown(value)}.")
    return float(value)


def optional_positive_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not is_int(value):
        raise invalid_type(key, "an integer", value)
    if value < 1:
        raise invalid_value(key, f"must be at least 1, got {shown(value)}.")
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
    return bounded_model(value)


def bounded_model(model: str) -> str:
    if len(model) > MAX_MODEL_CHARS:
        raise invalid_value("model", f"must be at most {MAX_MODEL_CHARS} characters long, got {len(model)}.")
    return model


def bounded_str(body: dict[str, Any], key: str, limit: int, *, param: str | None = None) -> str | None:
    """An optional string field of at most `limit` characters."""
    value = body.get(key)
    if value is None:
        return None
    param = param or key
    if not isinstance(value, str):
        raise invalid_type(param, "a string", value)
    if len(value) > limit:
        raise invalid_value(param, f"must be at most {limit} characters long, got {len(value)}.")
    return value


def optional_metadata(body: dict[str, Any], key: str = "metadata") -> dict[str, Any] | None:
    """`metadata`: at most MAX_METADATA_KEYS entries with short keys, each a string, number, boolean or null."""
    value = optional_object(body, key)
    if value is None:
        return None
    if len(value) > MAX_METADATA_KEYS:
        raise invalid_value(key, f"at most {MAX_METADATA_KEYS} entries are allowed, got {len(value)}.")
    for name, item in value.items():
        if len(name) > MAX_METADATA_KEY_CHARS:
            raise invalid_value(key, f"keys must be at most {MAX_METADATA_KEY_CHARS} characters long, got {len(name)}.")
        if isinstance(item, (list, dict)):
            raise invalid_type(f"{key}.{name}", "a string, a number, a boolean or null", item)
        if isinstance(item, str) and len(item) > MAX_METADATA_VALUE_CHARS:
            raise invalid_value(f"{key}.{name}", f"must be at most {MAX_METADATA_VALUE_CHARS} characters long, got {len(item)}.")
    return value


def bounded_stops(stops: list[str], param: str, *, listed: bool = True) -> list[str]:
    """Stop strings that passed their type checks, within MAX_STOP_CHARS each and MAX_STOPS_TOTAL_CHARS together;
    the caller has bounded their number. `listed`: the field is an array (a too-long stop is named by index)."""
    total = 0
    for i, stop in enumerate(stops):
        if len(stop) > MAX_STOP_CHARS:
            raise invalid_value(
                f"{param}[{i}]" if listed else param,
                f"a stop sequence may be at most {MAX_STOP_CHARS} characters long, got {len(stop)}.",
            )
        total += len(stop)
    if total > MAX_STOPS_TOTAL_CHARS:
        raise invalid_value(param, f"the stop sequences may be at most {MAX_STOPS_TOTAL_CHARS} characters together, got {total}.")
    # An empty stop would match everywhere and end every answer before it began.
    return [s for s in stops if s]


def text_blocks(value: list[Any], param: str) -> str:
    """Joins a list of `{"type":"text","text":…}` parts, refusing any other kind of part."""
    if len(value) > MAX_CONTENT_PARTS:
        raise invalid_value(param, f"at most {MAX_CONTENT_PARTS} content parts are allowed, got {len(value)}.")
    texts: list[str] = []
    for j, part in enumerate(value):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise invalid_type(where, "an object", part)
        kind = part.get("type")
        if kind != "text":
            if not isinstance(kind, str):
                raise missing(f"{where}.type") if kind is None else invalid_type(f"{where}.type", "a string", kind)
            raise unsupported_value(f"{where}.type", f"content of type '{shown(kind)}' is not supported; only text is.")
        text = part.get("text")
        if not isinstance(text, str):
            raise missing(f"{where}.text") if text is None else invalid_type(f"{where}.text", "a string", text)
        texts.append(text)
    # Separate parts are separate paragraphs to a reader; gluing them would merge words.
    return "\n".join(texts)
