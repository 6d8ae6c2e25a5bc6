"""The bounds on what one request may hold: JSON nesting, and every client-sized field each surface's parser loops over."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.translate.anthropic_messages import parse_messages_request
from gateway.translate.bounds import (
    MAX_ANTHROPIC_STOPS,
    MAX_CONTENT_PARTS,
    MAX_JSON_DEPTH,
    MAX_MESSAGES,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_CHARS,
    MAX_MODEL_CHARS,
    MAX_OPENAI_STOPS,
    MAX_STOP_CHARS,
    MAX_STOPS_TOTAL_CHARS,
    MAX_USER_CHARS,
    JSONTooDeep,
    loads_bounded,
)
from gateway.translate.envelope import parse_envelope_request
from gateway.translate.openai_chat import parse_chat_request
from gateway.translate.router import RouterStreamReader
from gateway.translate.sse import SSEEvent


def nested(depth: int, inner: str = "") -> str:
    return "[" * depth + inner + "]" * depth


# --- JSON nesting ------------------------------------------------------------------------------------------------------


def test_the_limit_is_64_levels_counting_the_outermost() -> None:
    assert MAX_JSON_DEPTH == 64
    assert loads_bounded(nested(64).encode()) == json.loads(nested(64))
    with pytest.raises(JSONTooDeep) as refused:
        loads_bounded(nested(65).encode())
    assert refused.value.limit == 64 and isinstance(refused.value, ValueError)


@pytest.mark.parametrize("depth", [65, 200, 999, 1000, 5000, 100_000])
def test_deeper_documents_are_refused_however_deep(depth: int) -> None:
    # Past ~1,000 levels the decoder raises RecursionError, which is not a ValueError: it is refused the same way.
    for text in (nested(depth), '{"a":' * depth + "1" + "}" * depth):
        with pytest.raises(JSONTooDeep):
            loads_bounded(text.encode())
        with pytest.raises(JSONTooDeep):
            loads_bounded(text)


def test_objects_and_arrays_both_count_and_the_deepest_branch_decides() -> None:
    shallow_wide = json.dumps({"a": [[{"b": [1]}]] * 50, "c": [[]] * 200})
    assert loads_bounded(shallow_wide) == json.loads(shallow_wide)
    deep_branch = json.dumps({"model": "m", "x": [1, 2, {"y": json.loads(nested(62))}]})  # 1 + 1 + 1 + 62 = 65
    with pytest.raises(JSONTooDeep):
        loads_bounded(deep_branch)
    assert loads_bounded(deep_branch, max_depth=65) == json.loads(deep_branch)


def test_brackets_inside_strings_are_text_not_nesting() -> None:
    text = json.dumps({"content": "[" * 5000 + "{" * 5000, "code": 'x = [[[[{"a": "\\"[["}]]]]'})
    assert loads_bounded(text.encode()) == json.loads(text)


def test_other_encodings_json_accepts_are_measured_too() -> None:
    for encoding in ("utf-16", "utf-32"):
        with pytest.raises(JSONTooDeep):
            loads_bounded(nested(100).encode(encoding))
        assert loads_bounded(nested(64).encode(encoding)) == json.loads(nested(64))


def test_invalid_json_is_still_a_value_error_and_not_a_nesting_refusal() -> None:
    for raw in (b"[" * 100, b'{"a": ', b"\xff\xfe\x00"):
        with pytest.raises(ValueError) as refused:
            loads_bounded(raw)
        assert not isinstance(refused.value, JSONTooDeep)


def test_a_router_chunk_nested_a_thousand_levels_is_a_protocol_error_not_a_crash() -> None:
    reader = RouterStreamReader()
    assert reader.feed(SSEEvent(None, nested(100_000))) is None
    assert reader.protocol_errors == 1
    delta = reader.feed(SSEEvent(None, '{"id": "a", "choices": [{"text": "ok"}]}'))
    assert delta is not None and delta.text == "ok"


# --- the fields each parser loops over ---------------------------------------------------------------------------------

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


def refusal(parse: Callable[[object], object], body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as refused:
        parse(body)
    return refused.value


@pytest.mark.parametrize(
    ("parse", "base", "extra", "param"),
    [
        (parse_chat_request, CHAT, {"stop": ["a"] * 5}, "stop"),
        (parse_chat_request, CHAT, {"stop": "x" * 257}, "stop"),
        (parse_chat_request, CHAT, {"stop": ["a", "x" * 257]}, "stop[1]"),
        (parse_messages_request, MESSAGES, {"stop_sequences": ["a"] * 33}, "stop_sequences"),
        (parse_messages_request, MESSAGES, {"stop_sequences": [""] * 100_000}, "stop_sequences"),
        (parse_messages_request, MESSAGES, {"stop_sequences": ["a", "b", "x" * 257]}, "stop_sequences[2]"),
        (parse_messages_request, MESSAGES, {"stop_sequences": [f"{i:02d}" + "x" * 63 for i in range(32)]}, "stop_sequences"),
    ],
)
def test_stop_strings_are_bounded_in_number_length_and_total(
    parse: Callable[[object], object], base: dict[str, Any], extra: dict[str, Any], param: str
) -> None:
    err = refusal(parse, {**base, **extra})
    assert err.param == param and err.code == "invalid_value" and f"'{param}'" in err.message


def test_stop_strings_at_the_limits_are_kept() -> None:
    assert MAX_OPENAI_STOPS == 4 and MAX_ANTHROPIC_STOPS == 32 and MAX_STOP_CHARS == 256 and MAX_STOPS_TOTAL_CHARS == 2048
    four = ["a" * 256, "b" * 256, "c" * 256, "d" * 256]
    assert parse_chat_request({**CHAT, "stop": four}).stop == four
    assert parse_chat_request({**CHAT, "stop": "s" * 256}).stop == ["s" * 256]
    thirty_two = [f"{i:02d}" + "x" * 62 for i in range(32)]  # 2,048 characters
    assert parse_messages_request({**MESSAGES, "stop_sequences": thirty_two}).stop == thirty_two
    assert parse_messages_request({**MESSAGES, "stop_sequences": ["", "a", ""]}).stop == ["a"]


def _messages(n: int) -> list[dict[str, str]]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(n)]


def _parts(n: int) -> list[dict[str, str]]:
    return [{"type": "text", "text": "p"} for _ in range(n)]


SIZE_CASES = [
    (parse_chat_request, CHAT, {"messages": _messages(2049)}, "messages"),
    (parse_messages_request, MESSAGES, {"messages": _messages(2049)}, "messages"),
    (parse_chat_request, CHAT, {"messages": [{"role": "user", "content": _parts(257)}]}, "messages[0].content"),
    (parse_messages_request, MESSAGES, {"messages": [{"role": "user", "content": _parts(257)}]}, "messages[0].content"),
    (parse_messages_request, MESSAGES, {"system": _parts(257)}, "system"),
    (parse_chat_request, CHAT, {"model": "m" * 257}, "model"),
    (parse_messages_request, MESSAGES, {"model": "m" * 257}, "model"),
    (parse_envelope_request, {"prompt": "hi"}, {"model": "m" * 257}, "model"),
    (parse_chat_request, CHAT, {"user": "u" * 257}, "user"),
    (parse_chat_request, CHAT, {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    (parse_chat_request, CHAT, {"metadata": {"k" * 65: "v"}}, "metadata"),
    (parse_chat_request, CHAT, {"metadata": {"k": "v" * 513}}, "metadata.k"),
    (parse_chat_request, CHAT, {"metadata": {"k": ["nested"]}}, "metadata.k"),
    (parse_messages_request, MESSAGES, {"metadata": {"user_id": "u" * 257}}, "metadata.user_id"),
    (parse_messages_request, MESSAGES, {"metadata": {"user_id": "u", "extra": {"deep": 1}}}, "metadata.extra"),
]


@pytest.mark.parametrize(("parse", "base", "extra", "param"), SIZE_CASES)
def test_sizes_the_client_chooses_are_refused_naming_the_field(
    parse: Callable[[object], object], base: dict[str, Any], extra: dict[str, Any], param: str
) -> None:
    err = refusal(parse, {**base, **extra})
    assert err.param == param and f"'{param}'" in err.message, err.message


def test_sizes_at_the_limits_are_accepted() -> None:
    assert (MAX_MESSAGES, MAX_CONTENT_PARTS, MAX_MODEL_CHARS, MAX_USER_CHARS) == (2048, 256, 256, 256)
    assert (MAX_METADATA_KEYS, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS) == (16, 64, 512)
    metadata = {**{f"k{i}": "v" * 512 for i in range(14)}, "k" * 64: 1, "flag": None}
    chat = parse_chat_request({**CHAT, "messages": _messages(2047) + [{"role": "user", "content": _parts(256)}],
                               "model": "m" * 256, "user": "u" * 256, "metadata": metadata})  # fmt: skip
    assert len(chat.messages or []) == 2048 and chat.user == "u" * 256 and chat.metadata == metadata
    anthropic = parse_messages_request({**MESSAGES, "system": _parts(256), "metadata": {"user_id": "u" * 256}})
    assert anthropic.user == "u" * 256 and anthropic.system == "\n".join(["p"] * 256)
    assert parse_envelope_request({"prompt": "hi", "model": "m" * 256}).model == "m" * 256


@pytest.mark.parametrize(
    ("parse", "base", "extra", "param"),
    [
        (parse_chat_request, CHAT, {"messages": [{"role": "r" * 100_000, "content": "hi"}]}, "messages[0].role"),
        (parse_messages_request, MESSAGES, {"messages": [{"role": "r" * 100_000, "content": "hi"}]}, "messages[0].role"),
        (
            parse_chat_request,
            CHAT,
            {"messages": [{"role": "user", "content": [{"type": "t" * 100_000}]}]},
            "messages[0].content[0].type",
        ),
        (parse_chat_request, CHAT, {"temperature": 10**4000}, "temperature"),
        (parse_chat_request, CHAT, {"max_tokens": -(10**4000)}, "max_tokens"),
        (parse_messages_request, MESSAGES, {"top_k": -(10**4000)}, "top_k"),
    ],
)
def test_a_refusal_quotes_at_most_a_short_piece_of_what_it_refused(
    parse: Callable[[object], object], base: dict[str, Any], extra: dict[str, Any], param: str
) -> None:
    err = refusal(parse, {**base, **extra})
    assert err.param == param and len(err.message) < 200, err.message
    assert "characters)" in err.message  # it says how long the value was instead


def test_short_values_are_still_quoted_whole() -> None:
    assert (
        "'robot' is not one of" in refusal(parse_chat_request, {**CHAT, "messages": [{"role": "robot", "content": "x"}]}).message
    )
    assert "got 9." in refusal(parse_chat_request, {**CHAT, "temperature": 9}).message
