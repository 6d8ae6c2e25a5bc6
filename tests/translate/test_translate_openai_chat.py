"""OpenAI chat surface: request validation, the answer object, stream frames and error bodies."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from gateway.errors import InvalidRequest, QuotaExceeded, UpstreamUnavailable
from gateway.translate.common import ChatMessage, CompletionRequest, Usage
from gateway.translate.openai_chat import (
    ChatStreamTranslator,
    chat_completion_response,
    openai_error_body,
    parse_chat_request,
)


def body(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": "oss-20b", "messages": [{"role": "user", "content": "Hi"}]}
    for key, value in changes.items():
        if value is ...:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def test_minimal_request() -> None:
    assert parse_chat_request(body()) == CompletionRequest(
        surface="openai_chat", model="oss-20b", messages=[ChatMessage("user", "Hi")]
    )


def test_full_request() -> None:
    request = parse_chat_request(
        {
            "model": "oss-20b",
            "messages": [
                {"role": "developer", "content": "Rules."},
                {"role": "system", "content": [{"type": "text", "text": "Part one"}, {"type": "text", "text": "two"}]},
                {"role": "user", "content": "Hi", "name": "ann"},
                {"role": "assistant", "content": "Hello", "refusal": None},
            ],
            "max_completion_tokens": 100,
            "max_tokens": 50,
            "temperature": 2,
            "top_p": 0.5,
            "presence_penalty": -2,
            "frequency_penalty": 1.25,
            "stop": ["\n\n", "", "END"],
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "user-1",
            "seed": 7,
            "metadata": {"k": "v"},
            "n": 1,
            "response_format": {"type": "text"},
            "tool_choice": "none",
            "tools": [],
            "logprobs": False,
            "some_future_field": {"ignored": True},
        }
    )
    assert request == CompletionRequest(
        surface="openai_chat",
        model="oss-20b",
        messages=[
            ChatMessage("developer", "Rules."),
            ChatMessage("system", "Part one\ntwo"),
            ChatMessage("user", "Hi"),
            ChatMessage("assistant", "Hello"),
        ],
        max_tokens=100,
        temperature=2.0,
        top_p=0.5,
        presence_penalty=-2.0,
        frequency_penalty=1.25,
        stop=["\n\n", "END"],
        stream=True,
        include_usage=True,
        metadata={"k": "v"},
        user="user-1",
    )
    assert isinstance(request.temperature, float)


def test_max_tokens_alone_is_used() -> None:
    assert parse_chat_request(body(max_tokens=10)).max_tokens == 10


def test_stop_as_a_string() -> None:
    assert parse_chat_request(body(stop="###")).stop == ["###"]


def test_include_usage_only_counts_when_streaming() -> None:
    assert parse_chat_request(body(stream_options={"include_usage": True})).include_usage is False
    assert parse_chat_request(body(stream=True, stream_options={"include_usage": False})).include_usage is False
    assert parse_chat_request(body(stream=True)).include_usage is False


@pytest.mark.parametrize(
    ("request_body", "param", "code"),
    [
        (["not", "an", "object"], None, "invalid_type"),
        ("text", None, "invalid_type"),
        (body(model=...), "model", "missing_required_parameter"),
        (body(model=5), "model", "invalid_type"),
        (body(model=""), "model", "invalid_value"),
        (body(messages=...), "messages", "missing_required_parameter"),
        (body(messages="Hi"), "messages", "invalid_type"),
        (body(messages=[]), "messages", "invalid_value"),
        (body(messages=["Hi"]), "messages[0]", "invalid_type"),
        (body(messages=[{"content": "Hi"}]), "messages[0].role", "missing_required_parameter"),
        (body(messages=[{"role": 1, "content": "Hi"}]), "messages[0].role", "invalid_type"),
        (body(messages=[{"role": "robot", "content": "Hi"}]), "messages[0].role", "invalid_value"),
        (
            body(messages=[{"role": "user", "content": "a"}, {"role": "tool", "content": "r", "tool_call_id": "t"}]),
            "messages[1].role",
            "unsupported_value",
        ),
        (body(messages=[{"role": "function", "content": "r", "name": "f"}]), "messages[0].role", "unsupported_value"),
        (
            body(messages=[{"role": "assistant", "content": None, "tool_calls": [{"id": "t"}]}]),
            "messages[0].tool_calls",
            "unsupported_parameter",
        ),
        (body(messages=[{"role": "user"}]), "messages[0].content", "missing_required_parameter"),
        (body(messages=[{"role": "user", "content": 5}]), "messages[0].content", "invalid_type"),
        (body(messages=[{"role": "user", "content": ["x"]}]), "messages[0].content[0]", "invalid_type"),
        (
            body(messages=[{"role": "user", "content": [{"text": "x"}]}]),
            "messages[0].content[0].type",
            "missing_required_parameter",
        ),
        (
            body(
                messages=[
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}]},
                ]
            ),
            "messages[1].content[1].type",
            "unsupported_value",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
            "messages[0].content[0].type",
            "unsupported_value",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "file", "file": {}}]}]),
            "messages[0].content[0].type",
            "unsupported_value",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "text", "text": None}]}]),
            "messages[0].content[0].text",
            "missing_required_parameter",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "text", "text": 3}]}]),
            "messages[0].content[0].text",
            "invalid_type",
        ),
        (body(tools=[{"type": "function", "function": {"name": "f"}}]), "tools", "unsupported_parameter"),
        (body(functions=[{"name": "f"}]), "functions", "unsupported_parameter"),
        (body(tool_choice="auto"), "tool_choice", "unsupported_value"),
        (body(tool_choice={"type": "function", "function": {"name": "f"}}), "tool_choice", "unsupported_value"),
        (body(function_call="auto"), "function_call", "unsupported_parameter"),
        (body(n=2), "n", "unsupported_value"),
        (body(n="1"), "n", "invalid_type"),
        (body(n=True), "n", "invalid_type"),
        (body(response_format={"type": "json_object"}), "response_format", "unsupported_value"),
        (body(response_format={"type": "json_schema", "json_schema": {}}), "response_format", "unsupported_value"),
        (body(response_format="text"), "response_format", "invalid_type"),
        (body(logprobs=True), "logprobs", "unsupported_value"),
        (body(logprobs="yes"), "logprobs", "invalid_type"),
        (body(max_tokens=0), "max_tokens", "invalid_value"),
        (body(max_tokens=-5), "max_tokens", "invalid_value"),
        (body(max_tokens="10"), "max_tokens", "invalid_type"),
        (body(max_tokens=10.0), "max_tokens", "invalid_type"),
        (body(max_tokens=True), "max_tokens", "invalid_type"),
        (body(max_completion_tokens=0), "max_completion_tokens", "invalid_value"),
        (body(max_completion_tokens=False), "max_completion_tokens", "invalid_type"),
        (body(temperature=2.5), "temperature", "invalid_value"),
        (body(temperature=-0.1), "temperature", "invalid_value"),
        (body(temperature="0.5"), "temperature", "invalid_type"),
        (body(temperature=True), "temperature", "invalid_type"),
        (body(temperature=float("nan")), "temperature", "invalid_value"),
        (body(top_p=1.5), "top_p", "invalid_value"),
        (body(presence_penalty=3), "presence_penalty", "invalid_value"),
        (body(frequency_penalty=-2.01), "frequency_penalty", "invalid_value"),
        (body(stop=5), "stop", "invalid_type"),
        (body(stop=["a", "b", "c", "d", "e"]), "stop", "invalid_value"),
        (body(stop=["a", 1]), "stop[1]", "invalid_type"),
        (body(stream="true"), "stream", "invalid_type"),
        (body(stream_options="x"), "stream_options", "invalid_type"),
        (body(stream=True, stream_options={"include_usage": "yes"}), "stream_options.include_usage", "invalid_type"),
        (body(user=5), "user", "invalid_type"),
        (body(seed="7"), "seed", "invalid_type"),
        (body(metadata=[]), "metadata", "invalid_type"),
    ],
)
def test_invalid_request_is_a_400_naming_the_field(request_body: object, param: str | None, code: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(request_body)
    err = caught.value
    assert (err.status, err.openai_type, err.param, err.code) == (400, "invalid_request_error", param, code)
    if param is not None:
        assert param in err.message


# --- the fields OpenAI defines beyond the router's: used, ignored or refused (README, compatibility) ---------------


def test_accepted_and_ignored_fields_change_nothing() -> None:
    ignored = {
        "seed": 7,
        "metadata": {"k": "v"},
        "parallel_tool_calls": True,
        "prediction": {"type": "content", "content": "Hello"},
        "prompt_cache_key": "k",
        "prompt_cache_retention": "24h",
        "service_tier": "auto",
        "store": False,
        "stream_options": {"include_obfuscation": False},
        "logit_bias": {},
        "modalities": ["text"],
        "some_future_field": 1,
        **{key: None for key in ("audio", "reasoning_effort", "verbosity", "web_search_options", "top_logprobs", "moderation")},
    }
    plain = parse_chat_request(body())
    assert parse_chat_request(body(**ignored)) == dataclasses.replace(plain, metadata={"k": "v"})
    assert parse_chat_request(body(service_tier="default")) == plain


def test_user_or_else_safety_identifier_names_the_end_user() -> None:
    assert parse_chat_request(body(user="u-1")).user == "u-1"
    assert parse_chat_request(body(safety_identifier="s-1")).user == "s-1"
    assert parse_chat_request(body(user="u-1", safety_identifier="s-1")).user == "u-1"
    assert parse_chat_request(body(user="", safety_identifier="s-1")).user == "s-1"
    assert parse_chat_request(body(user="")).user is None


@pytest.mark.parametrize(
    ("changes", "param", "code"),
    [
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio", "unsupported_parameter"),
        ({"modalities": ["text", "audio"]}, "modalities", "unsupported_value"),
        ({"modalities": "text"}, "modalities", "invalid_type"),
        ({"reasoning_effort": "high"}, "reasoning_effort", "unsupported_parameter"),
        ({"verbosity": "low"}, "verbosity", "unsupported_parameter"),
        ({"web_search_options": {}}, "web_search_options", "unsupported_parameter"),
        ({"top_logprobs": 2}, "top_logprobs", "unsupported_parameter"),
        ({"moderation": {"model": "m"}}, "moderation", "unsupported_parameter"),
        ({"logit_bias": {"50256": -100}}, "logit_bias", "unsupported_parameter"),
        ({"logit_bias": [1]}, "logit_bias", "invalid_type"),
        ({"store": True}, "store", "unsupported_value"),
        ({"store": "yes"}, "store", "invalid_type"),
        ({"service_tier": "flex"}, "service_tier", "unsupported_value"),
        ({"service_tier": "priority"}, "service_tier", "unsupported_value"),
        ({"service_tier": 1}, "service_tier", "invalid_type"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls", "invalid_type"),
        ({"prediction": "Hello"}, "prediction", "invalid_type"),
        ({"prompt_cache_key": 5}, "prompt_cache_key", "invalid_type"),
        ({"safety_identifier": 5}, "safety_identifier", "invalid_type"),
        ({"safety_identifier": "s" * 257}, "safety_identifier", "invalid_value"),
    ],
)
def test_fields_that_cannot_be_honoured_are_refused_by_name(changes: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(body(**changes))
    assert (caught.value.status, caught.value.param, caught.value.code) == (400, param, code)
    assert f"'{param}'" in caught.value.message


def test_tool_refusal_says_why() -> None:
    with pytest.raises(InvalidRequest, match="Tool calling is not offered on hosted routes"):
        parse_chat_request(body(tools=[{"type": "function"}]))


# --- answer and errors ---------------------------------------------------------------------


@pytest.mark.parametrize(("finish", "wire"), [("stop", "stop"), ("length", "length"), ("stop_sequence", "stop")])
def test_chat_completion_response_shape(finish: str, wire: str) -> None:
    response = chat_completion_response(
        completion_id="chatcmpl-1",
        created=1700000000,
        model="oss-20b",
        text="Hello",
        finish_reason=finish,
        usage=Usage(12, 3, True),
    )
    assert response == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "oss-20b",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello", "refusal": None},
                "logprobs": None,
                "finish_reason": wire,
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


def test_openai_error_body() -> None:
    assert openai_error_body(InvalidRequest("bad temperature", param="temperature", code="invalid_value")) == {
        "error": {"message": "bad temperature", "type": "invalid_request_error", "param": "temperature", "code": "invalid_value"}
    }
    assert openai_error_body(QuotaExceeded()) == {
        "error": {"message": "quota exceeded", "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}
    }


# --- stream frames -------------------------------------------------------------------------


def frames(raw: bytes) -> list[Any]:
    assert raw.endswith(b"\n\n")
    out: list[Any] = []
    for frame in raw.decode().split("\n\n")[:-1]:
        assert frame.startswith("data: ") and "\n" not in frame
        payload = frame[len("data: ") :]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "oss-20b"}


def translator(include_usage: bool) -> ChatStreamTranslator:
    return ChatStreamTranslator(completion_id="chatcmpl-1", created=1700000000, model="oss-20b", include_usage=include_usage)


def choice(delta: dict, finish: str | None = None) -> list[dict]:
    return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]


def test_stream_with_usage() -> None:
    t = translator(True)
    raw = (
        t.start()
        + t.text("Hel")
        + t.text("")
        + t.text('lo "é"\n')
        + t.finish(finish_reason="stop_sequence", usage=Usage(5, 2, True))
    )
    assert frames(raw) == [
        {**HEAD, "choices": choice({"role": "assistant", "content": ""}), "usage": None},
        {**HEAD, "choices": choice({"content": "Hel"}), "usage": None},
        {**HEAD, "choices": choice({"content": 'lo "é"\n'}), "usage": None},
        {**HEAD, "choices": choice({}, "stop"), "usage": None},
        {**HEAD, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}},
        "[DONE]",
    ]


def test_stream_without_usage_has_no_usage_field_or_chunk() -> None:
    t = translator(False)
    raw = t.start() + t.text("x") + t.finish(finish_reason="length", usage=Usage(5, 2, False))
    assert frames(raw) == [
        {**HEAD, "choices": choice({"role": "assistant", "content": ""})},
        {**HEAD, "choices": choice({"content": "x"})},
        {**HEAD, "choices": choice({}, "length")},
        "[DONE]",
    ]


def test_stream_exact_bytes_of_a_text_chunk() -> None:
    t = translator(False)
    t.start()
    assert t.text("Hi") == (
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"oss-20b",'
        b'"choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}\n\n'
    )


def test_empty_text_is_no_frame() -> None:
    t = translator(True)
    t.start()
    assert t.text("") == b""


def test_text_before_start_sends_the_role_chunk_first() -> None:
    assert frames(translator(False).text("x"))[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_stream_error_frame_and_no_done() -> None:
    t = translator(True)
    t.start()
    assert t.error(UpstreamUnavailable()) == (
        b'data: {"error":{"message":"no upstream model server is available; try again shortly",'
        b'"type":"api_error","param":null,"code":"upstream_unavailable"}}\n\n'
    )
