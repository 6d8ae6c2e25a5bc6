"""The router side: request body, defensive parsing of answers, and the stream reader's bookkeeping."""

from __future__ import annotations

import json

import pytest

from gateway.errors import UpstreamError
from gateway.translate.common import Usage
from gateway.translate.router import (
    RouterDelta,
    RouterResult,
    RouterStreamReader,
    build_router_body,
    parse_router_completion,
)
from gateway.translate.sse import SSEEvent

# --- build_router_body ---------------------------------------------------------------------


def test_router_body_leaves_out_every_absent_option() -> None:
    body = build_router_body(prompt="Hi", stream=False, max_tokens=256, timeout_s=120, request_id="req_abc")
    assert body == {"prompt": "Hi", "stream": False, "timeout": 120, "max_tokens": 256, "client_reference": "req_abc"}


def test_router_body_carries_every_option_given() -> None:
    body = build_router_body(
        prompt="Hi",
        stream=True,
        max_tokens=64,
        timeout_s=30,
        request_id="req_abc",
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        presence_penalty=-0.5,
        frequency_penalty=1.5,
        stop=["\n\n", "END"],
        prompt_type=1,
        prompt_template="{prompt}",
    )
    assert body == {
        "prompt": "Hi",
        "stream": True,
        "timeout": 30,
        "max_tokens": 64,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "presence_penalty": -0.5,
        "frequency_penalty": 1.5,
        "stop": ["\n\n", "END"],
        "client_reference": "req_abc",
        "prompt_type": 1,
        "prompt_template": "{prompt}",
    }


def test_router_body_keeps_zero_values_and_drops_empty_ones() -> None:
    body = build_router_body(
        prompt="Hi",
        stream=False,
        max_tokens=1,
        timeout_s=5,
        request_id="req_z",
        temperature=0.0,
        top_p=0.0,
        top_k=0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        stop=[],
        prompt_type=0,
        prompt_template="",
    )
    assert body == {
        "prompt": "Hi",
        "stream": False,
        "timeout": 5,
        "max_tokens": 1,
        "temperature": 0.0,
        "top_p": 0.0,
        "top_k": 0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "client_reference": "req_z",
        "prompt_type": 0,
    }


# --- parse_router_completion ---------------------------------------------------------------

USAGE = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}


def test_completion_text_finish_and_usage() -> None:
    body = {
        "id": "cmpl-1",
        "object": "text_completion",
        "task_id": 123,
        "model": "default",
        "choices": [{"index": 0, "text": "Hello", "finish_reason": "stop", "logprobs": None}],
        "usage": USAGE,
    }
    assert parse_router_completion(body) == RouterResult("Hello", "stop", Usage(12, 9, False), body)


def test_completion_text_falls_back_to_message_content() -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": "From message"}, "finish_reason": "length"}]}
    result = parse_router_completion(body)
    assert (result.text, result.finish_reason) == ("From message", "length")


def test_completion_text_falls_back_to_delta_content() -> None:
    assert parse_router_completion({"choices": [{"delta": {"content": "From delta"}}]}).text == "From delta"


def test_completion_text_beats_message_content() -> None:
    body = {"choices": [{"text": "text wins", "message": {"content": "not this"}}]}
    assert parse_router_completion(body).text == "text wins"


def test_completion_empty_text_falls_back_to_message_content() -> None:
    assert parse_router_completion({"choices": [{"text": "", "message": {"content": "m"}}]}).text == "m"


def test_first_choice_with_text_wins() -> None:
    body = {
        "choices": [
            {"index": 0, "text": "", "finish_reason": "stop"},
            {"index": 1, "text": None},
            "garbage",
            {"index": 3, "text": "miner three", "finish_reason": "length"},
            {"index": 4, "text": "miner four", "finish_reason": "stop"},
        ]
    }
    result = parse_router_completion(body)
    assert (result.text, result.finish_reason) == ("miner three", "length")


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "text",
        {},
        {"choices": []},
        {"choices": None},
        {"choices": [{"text": ""}]},
        {"choices": [{"text": 5}]},
        {"choices": [{"message": {"content": None}}]},
        {"error": "miner timeout"},
    ],
)
def test_completion_without_text_is_an_upstream_error(body: object) -> None:
    with pytest.raises(UpstreamError) as caught:
        parse_router_completion(body)
    assert caught.value.status == 502
    # The router's body never reaches the customer.
    assert caught.value.message == UpstreamError.default_message


@pytest.mark.parametrize(
    ("reason", "expected"),
    [(None, "stop"), ("stop", "stop"), ("length", "length"), ("eos", "stop"), ("max_tokens", "length")],
)
def test_completion_finish_reason(reason: object, expected: str) -> None:
    assert parse_router_completion({"choices": [{"text": "x", "finish_reason": reason}]}).finish_reason == expected


def test_completion_missing_finish_reason_is_stop() -> None:
    assert parse_router_completion({"choices": [{"text": "x"}]}).finish_reason == "stop"


@pytest.mark.parametrize(
    "usage",
    [
        None,
        {},
        {"prompt_tokens": 3},
        {"completion_tokens": 3},
        {"prompt_tokens": "3", "completion_tokens": 4},
        {"prompt_tokens": 3.0, "completion_tokens": 4},
        {"prompt_tokens": True, "completion_tokens": 4},
        {"prompt_tokens": -1, "completion_tokens": 4},
        "12",
    ],
)
def test_missing_or_partial_usage_is_none_so_the_caller_estimates(usage: object) -> None:
    assert parse_router_completion({"choices": [{"text": "x"}], "usage": usage}).usage is None


def test_usage_without_total_is_accepted() -> None:
    body = {"choices": [{"text": "x"}], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    assert parse_router_completion(body).usage == Usage(3, 4, False)


# --- RouterStreamReader --------------------------------------------------------------------


def chunk(text: str | None = "", finish: str | None = None, task: object = 123, usage: dict | None = None) -> SSEEvent:
    body: dict = {"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "finish_reason": finish}]}
    if task is not None:
        body["task_id"] = task
    if text is not None:
        body["choices"][0]["text"] = text
    if usage is not None:
        body["usage"] = usage
    return SSEEvent(None, json.dumps(body))


def test_text_chunk_becomes_a_delta_carrying_the_raw_chunk() -> None:
    reader = RouterStreamReader()
    event = chunk("Hel")
    delta = reader.feed(event)
    assert delta == RouterDelta("Hel", None, None, False, json.loads(event.data))
    assert reader.chunks == 1


def test_done_gives_a_done_delta_and_nothing_after() -> None:
    reader = RouterStreamReader()
    delta = reader.feed(SSEEvent(None, "[DONE]"))
    assert (delta.done, delta.text, delta.raw) == (True, "", None)
    assert reader.saw_done is True and reader.truncated is False
    assert reader.feed(chunk("late")) is None


def test_done_with_surrounding_whitespace_is_recognised() -> None:
    assert RouterStreamReader().feed(SSEEvent(None, " [DONE]\n")).done is True


def test_non_json_data_is_counted_and_skipped() -> None:
    reader = RouterStreamReader()
    assert reader.feed(SSEEvent(None, "<html>502</html>")) is None
    assert reader.feed(SSEEvent(None, "[1, 2]")) is None
    assert reader.protocol_errors == 2
    assert reader.feed(chunk("ok")).text == "ok"


def test_locks_onto_the_first_task_and_drops_other_miners() -> None:
    reader = RouterStreamReader()
    assert reader.feed(chunk("a", task=123)).text == "a"
    assert reader.feed(chunk("X", task=456)) is None
    assert reader.feed(chunk("b", task="123")).text == "b"  # the same task, whatever JSON type it came as
    assert reader.feed(chunk("Y", task=456, finish="stop")) is None
    assert reader.dropped_chunks == 2
    assert reader.saw_finish is False


def test_locks_onto_id_when_there_is_no_task_id() -> None:
    reader = RouterStreamReader()
    first = {"id": "miner-a", "choices": [{"text": "a"}]}
    other = {"id": "miner-b", "choices": [{"text": "X"}]}
    assert reader.feed(SSEEvent(None, json.dumps(first))).text == "a"
    assert reader.feed(SSEEvent(None, json.dumps(other))) is None


def test_chunk_without_the_locked_key_is_kept() -> None:
    reader = RouterStreamReader()
    reader.feed(chunk("a", task=123))
    usage_only = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1}}
    delta = reader.feed(SSEEvent(None, json.dumps(usage_only)))
    assert delta.usage == Usage(4, 1, False)
    assert reader.usage == Usage(4, 1, False)


def test_finish_reason_is_recorded() -> None:
    reader = RouterStreamReader()
    reader.feed(chunk("a"))
    assert reader.finish_reason is None and reader.truncated is True
    delta = reader.feed(chunk("", finish="length"))
    assert delta.finish_reason == "length"
    assert (reader.finish_reason, reader.saw_finish, reader.truncated) == ("length", True, False)


def test_usage_from_any_chunk_last_wins() -> None:
    reader = RouterStreamReader()
    reader.feed(chunk("a", usage={"prompt_tokens": 5, "completion_tokens": 1}))
    reader.feed(chunk("b", usage={"prompt_tokens": "bad"}))
    assert reader.usage == Usage(5, 1, False)
    reader.feed(chunk("", finish="stop", usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}))
    assert reader.usage == Usage(5, 2, False)


def test_delta_content_shape_is_read() -> None:
    body = {"task_id": 1, "choices": [{"delta": {"content": "chat"}, "finish_reason": None}]}
    assert RouterStreamReader().feed(SSEEvent(None, json.dumps(body))).text == "chat"


def test_chunk_without_text_is_still_a_delta_for_relaying() -> None:
    body = {"task_id": 1, "choices": [{"index": 0}]}
    delta = RouterStreamReader().feed(SSEEvent(None, json.dumps(body)))
    assert delta == RouterDelta("", None, None, False, body)


def test_in_band_error_is_kept_for_the_caller() -> None:
    reader = RouterStreamReader()
    reader.feed(SSEEvent(None, json.dumps({"task_id": 1, "error": {"message": "miner timeout"}})))
    assert reader.upstream_error == {"message": "miner timeout"}


def test_raw_event_data_reads_as_its_text_would() -> None:
    # The relay hands the reader each event's bytes (SSEParser.feed_data): orjson's fast read, the standard
    # library's wherever orjson would differ.
    reader = RouterStreamReader()
    big = 2**70
    delta = reader.feed_data(b'{"task_id":%d,"choices":[{"text":"caf\xc3\xa9 \xff"}],"n":NaN}' % big)
    assert delta is not None and delta.text == "café \ufffd" and delta.raw is not None
    assert delta.raw["task_id"] == big and delta.raw["n"] != delta.raw["n"]  # NaN, as json.loads reads it
    assert reader.feed_data(b'{"task_id":%d,"choices":[{"text":"x"}]}' % (big + 1)) is None  # another miner
    assert reader.feed_data(b'{"task_id":"%d","choices":[{"text":"b"}]}' % big).text == "b"  # the same, as a string
    assert reader.feed_data(b"<html>") is None and reader.protocol_errors == 1
    assert reader.feed_data(b" [DONE]\xc2\xa0").done is True  # blanks around the marker, as str.strip() sees them


def test_lock_on_a_non_integer_task_compares_as_text() -> None:
    reader = RouterStreamReader()
    assert reader.feed_data(b'{"task_id":0.0,"choices":[{"text":"a"}]}').text == "a"
    assert reader.feed_data(b'{"task_id":-0.0,"choices":[{"text":"X"}]}') is None  # equal numbers, not the same task
    assert reader.feed_data(b'{"task_id":true,"choices":[{"text":"X"}]}') is None
    assert reader.feed_data(b'{"task_id":"0.0","choices":[{"text":"b"}]}').text == "b"
