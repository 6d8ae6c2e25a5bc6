"""Anthropic messages surface: request validation, the message object, named-event frames and error bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.errors import InvalidRequest, RateLimited, UpstreamUnavailable
from gateway.translate.anthropic_messages import (
    MessagesStreamTranslator,
    anthropic_error_body,
    messages_response,
    parse_messages_request,
)
from gateway.translate.common import ChatMessage, CompletionRequest, Usage


def body(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": "gemma4", "max_tokens": 256, "messages": [{"role": "user", "content": "Hi"}]}
    for key, value in changes.items():
        if value is ...:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def test_minimal_request() -> None:
    assert parse_messages_request(body()) == CompletionRequest(
        surface="anthropic_messages",
        model="gemma4",
        messages=[ChatMessage("user", "Hi")],
        max_tokens=256,
        include_usage=True,
    )


def test_full_request() -> None:
    request = parse_messages_request(
        {
            "model": "gemma4",
            "max_tokens": 100,
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind.", "cache_control": {}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"},
            ],
            "temperature": 1,
            "top_p": 0.9,
            "top_k": 40,
            "stop_sequences": ["\n\nHuman:", ""],
            "stream": True,
            "metadata": {"user_id": "u-1"},
            "thinking": {"type": "disabled"},
            "tool_choice": {"type": "none"},
            "tools": [],
            "anthropic_beta_thing": 1,
        }
    )
    assert request == CompletionRequest(
        surface="anthropic_messages",
        model="gemma4",
        messages=[ChatMessage("user", "Hi\nthere"), ChatMessage("assistant", "Hello"), ChatMessage("user", "Bye")],
        system="Be brief.\nBe kind.",
        max_tokens=100,
        temperature=1.0,
        top_p=0.9,
        top_k=40,
        stop=["\n\nHuman:"],
        stream=True,
        include_usage=True,
        metadata={"user_id": "u-1"},
        user="u-1",
    )


def test_system_as_a_string_and_empty_system() -> None:
    assert parse_messages_request(body(system="Sys")).system == "Sys"
    assert parse_messages_request(body(system="")).system is None
    assert parse_messages_request(body(system=[])).system is None


@pytest.mark.parametrize(
    ("request_body", "param"),
    [
        ("not an object", None),
        (body(model=...), "model"),
        (body(model=["x"]), "model"),
        (body(max_tokens=...), "max_tokens"),
        (body(max_tokens=0), "max_tokens"),
        (body(max_tokens="5"), "max_tokens"),
        (body(max_tokens=True), "max_tokens"),
        (body(messages=...), "messages"),
        (body(messages={}), "messages"),
        (body(messages=[]), "messages"),
        (body(messages=[{"role": "system", "content": "s"}]), "messages[0].role"),
        (body(messages=[{"role": "tool", "content": "s"}]), "messages[0].role"),
        (body(messages=[{"content": "s"}]), "messages[0].role"),
        (body(messages=[{"role": "user"}]), "messages[0].content"),
        (body(messages=[{"role": "user", "content": 1}]), "messages[0].content"),
        (
            body(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image", "source": {}}]}]),
            "messages[0].content[1].type",
        ),
        (body(messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}]), "messages[0].content[0].type"),
        (
            body(
                messages=[
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
                ]
            ),
            "messages[1].content[0].type",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]),
            "messages[0].content[0].type",
        ),
        (body(messages=[{"role": "user", "content": [{"type": "thinking", "thinking": "x"}]}]), "messages[0].content[0].type"),
        (body(system=[{"type": "image", "source": {}}]), "system[0].type"),
        (body(system=5), "system"),
        (body(tools=[{"name": "f", "input_schema": {}}]), "tools"),
        (body(tool_choice={"type": "auto"}), "tool_choice"),
        (body(tool_choice={"type": "tool", "name": "f"}), "tool_choice"),
        (body(thinking={"type": "enabled", "budget_tokens": 1024}), "thinking"),
        (body(thinking=True), "thinking"),
        (body(temperature=1.5), "temperature"),
        (body(temperature="1"), "temperature"),
        (body(top_p=-0.1), "top_p"),
        (body(top_k=-1), "top_k"),
        (body(top_k=1.5), "top_k"),
        (body(stop_sequences="END"), "stop_sequences"),
        (body(stop_sequences=["END", 3]), "stop_sequences[1]"),
        (body(stream="yes"), "stream"),
        (body(metadata="x"), "metadata"),
    ],
)
def test_invalid_request_is_a_400_invalid_request_error(request_body: object, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_messages_request(request_body)
    err = caught.value
    assert (err.status_for_anthropic, err.anthropic_type, err.param) == (400, "invalid_request_error", param)
    if param is not None:
        assert param in err.message


# --- the fields Anthropic defines beyond the router's: used, ignored or refused (README, compatibility) -------------


def test_accepted_and_ignored_fields_change_nothing() -> None:
    ignored = {
        "cache_control": {"type": "ephemeral"},
        "service_tier": "standard_only",
        "speed": "standard",
        "diagnostics": {"previous_message_id": "msg_1"},
        "thinking": {"type": "disabled"},
        "tools": [],
        "tool_choice": {"type": "none"},
        "mcp_servers": [],
        "output_config": {"effort": None, "format": None},
        "container": None,
        "inference_geo": None,
        "some_future_field": 1,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}],
    }
    assert parse_messages_request(body(**ignored)) == parse_messages_request(body())
    assert parse_messages_request(body(service_tier="auto")) == parse_messages_request(body())


def test_metadata_user_id_names_the_end_user() -> None:
    request = parse_messages_request(body(metadata={"user_id": "u-1", "team": "x"}))
    assert (request.user, request.metadata) == ("u-1", {"user_id": "u-1", "team": "x"})
    assert parse_messages_request(body(metadata={"team": "x"})).user is None


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"mcp_servers": [{"type": "url", "url": "https://mcp.test", "name": "m"}]}, "mcp_servers"),
        ({"container": "container_1"}, "container"),
        ({"context_management": {"edits": []}}, "context_management"),
        ({"inference_geo": "us"}, "inference_geo"),
        ({"output_config": {"format": {"type": "json_schema", "schema": {}}}}, "output_config.format"),
        ({"output_config": {"effort": "high"}}, "output_config.effort"),
        ({"output_config": "high"}, "output_config"),
        ({"service_tier": "priority"}, "service_tier"),
        ({"service_tier": 1}, "service_tier"),
        ({"speed": "fast"}, "speed"),
        ({"thinking": {"type": "adaptive"}}, "thinking"),
    ],
)
def test_fields_that_cannot_be_honoured_are_refused_by_name(changes: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_messages_request(body(**changes))
    assert (caught.value.status, caught.value.anthropic_type, caught.value.param) == (400, "invalid_request_error", param)
    assert f"'{param}'" in caught.value.message


@pytest.mark.parametrize(
    ("finish", "stop_sequence", "wire_reason", "wire_sequence"),
    [
        ("stop", None, "end_turn", None),
        ("length", None, "max_tokens", None),
        ("stop_sequence", "END", "stop_sequence", "END"),
        ("stop", "ignored", "end_turn", None),
    ],
)
def test_messages_response_shape(finish: str, stop_sequence: str | None, wire_reason: str, wire_sequence: str | None) -> None:
    response = messages_response(
        message_id="msg_1",
        model="gemma4",
        text="Hello",
        finish_reason=finish,
        stop_sequence=stop_sequence,
        usage=Usage(12, 3, True),
    )
    assert response == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "gemma4",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": wire_reason,
        "stop_sequence": wire_sequence,
        "usage": {"input_tokens": 12, "output_tokens": 3, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
    }


def test_anthropic_error_body() -> None:
    assert anthropic_error_body(UpstreamUnavailable(), "req_1") == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "no upstream model server is available; try again shortly"},
        "request_id": "req_1",
    }
    assert anthropic_error_body(RateLimited(), "req_2")["error"]["type"] == "rate_limit_error"


def events(raw: bytes) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for frame in raw.decode().split("\n\n")[:-1]:
        event_line, data_line = frame.split("\n")
        name = event_line.removeprefix("event: ")
        payload = json.loads(data_line.removeprefix("data: "))
        assert payload["type"] == name
        out.append((name, payload))
    return out


def test_stream_events_in_order() -> None:
    t = MessagesStreamTranslator(message_id="msg_1", model="gemma4", input_tokens=9)
    raw = (
        t.start()
        + t.text("Hel")
        + t.text("")
        + t.text("lo ✓")
        + t.finish(finish_reason="stop_sequence", stop_sequence="END", usage=Usage(10, 2, True))
    )
    assert events(raw) == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "gemma4",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 9,
                        "output_tokens": 0,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                    },
                },
            },
        ),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo ✓"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"},
                "usage": {"input_tokens": 10, "output_tokens": 2},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_stream_exact_bytes_of_a_text_delta() -> None:
    t = MessagesStreamTranslator(message_id="msg_1", model="gemma4", input_tokens=9)
    t.start()
    assert t.text('a"b') == (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"a\\"b"}}\n\n'
    )


def test_finish_without_start_still_opens_the_message() -> None:
    t = MessagesStreamTranslator(message_id="msg_1", model="gemma4", input_tokens=9)
    names = [name for name, _ in events(t.finish(finish_reason="length", stop_sequence=None, usage=Usage(9, 0, True)))]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_stream_error_event() -> None:
    t = MessagesStreamTranslator(message_id="msg_1", model="gemma4", input_tokens=9)
    assert t.error(UpstreamUnavailable("all sessions down")) == (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"all sessions down"}}\n\n'
    )
