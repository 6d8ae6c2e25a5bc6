"""Recorded router streams through the production stream relay (gateway/relay.py), against checked-in golden streams and
the official SDKs."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest

from gateway.errors import (
    AuthenticationFailed,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
    UpstreamError,
    UpstreamUnavailable,
)
from gateway.relay import StreamRelay
from gateway.surfaces import ANTHROPIC_MESSAGES, ENVELOPE, OPENAI_CHAT, AnswerContext
from gateway.translate.anthropic_messages import MessagesStreamTranslator, anthropic_error_body, messages_response
from gateway.translate.common import Usage
from gateway.translate.openai_chat import chat_completion_response, openai_error_body
from gateway.translate.router import RouterStreamReader

FIXTURES = Path(__file__).parent / "fixtures"
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"

COMPLETION_ID = "chatcmpl-test0001"
MESSAGE_ID = "msg_test0001"
REQUEST_ID = "req_test0001"
CREATED = 1700000000
MODEL = "my-alias"
POOL = "pool-a"
PROMPT_TOKENS_ESTIMATE = 11
ENDED_EARLY = "the upstream model server ended the stream early"  # what the relay says of a stream cut before its end

SURFACES = ("openai", "anthropic", "envelope")
SURFACE_OF = {"openai": OPENAI_CHAT, "anthropic": ANTHROPIC_MESSAGES, "envelope": ENVELOPE}
CONTEXT = AnswerContext(
    request_id=REQUEST_ID,
    model=MODEL,
    pool_name=POOL,
    created=CREATED,
    prompt_tokens_estimate=PROMPT_TOKENS_ESTIMATE,
    include_usage=True,
)

# fixture name -> the customer's stop strings (the envelope has none)
STREAMS: dict[str, list[str]] = {
    "normal": [],
    "keepalive": [],
    "crlf": [],
    "interleaved": [],
    "usage_at_end": [],
    "no_usage": [],
    "truncated": [],
    "non_json": [],
    "multibyte": [],
    "length": [],
    "odd_framing": [],
    "stop_split": ["\nEND"],
}


@dataclass
class Outcome:
    body: bytes
    text: str = ""
    finish_reason: str | None = None
    stop_sequence: str | None = None
    usage: Usage | None = None
    truncated: bool = False
    reader: RouterStreamReader = field(default_factory=RouterStreamReader)


def split_reads(raw: bytes, size: int | None, rng: random.Random | None = None) -> Iterator[bytes]:
    if size is None and rng is None:
        yield raw
        return
    i = 0
    while i < len(raw):
        step = rng.randint(1, 40) if rng else size
        yield raw[i : i + step]
        i += step


def run_pipeline(raw_reads: Iterator[bytes], surface: str, stops: list[str]) -> Outcome:
    """The production relay (gateway/relay.py) with the surface's own stream writer, fed as the pipeline feeds it:
    one network read at a time, the end of file, then the finish (or the error frame)."""
    relay = StreamRelay(SURFACE_OF[surface].stream_writer(CONTEXT), stops=stops if surface != "envelope" else [], ctx=CONTEXT)
    out = bytearray(relay.start())
    for read in raw_reads:
        out += relay.feed(read)
        if relay.ended:
            break
    else:
        out += relay.close()
    out += relay.finish()
    truncated = relay.failure is not None
    return Outcome(
        body=bytes(out),
        text=relay.text,
        finish_reason=None if truncated else relay.finish_reason,
        stop_sequence=relay.stop_sequence,
        usage=None if truncated else relay.usage(),
        truncated=truncated,
        reader=relay.reader,
    )


def run_fixture(name: str, surface: str, size: int | None = None, rng: random.Random | None = None) -> Outcome:
    raw = (FIXTURES / f"{name}.sse").read_bytes()
    return run_pipeline(split_reads(raw, size, rng), surface, STREAMS[name])


def check_golden(name: str, surface: str, body: bytes) -> None:
    golden = FIXTURES / f"{name}.{surface}.sse"
    if UPDATE_GOLDEN:
        golden.write_bytes(body)
    assert body == golden.read_bytes()


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("name", sorted(STREAMS))
def test_recorded_stream_matches_golden_for_any_read_size(name: str, surface: str) -> None:
    whole = run_fixture(name, surface).body
    check_golden(name, surface, whole)
    for size in (1, 2, 3, 5, 7, 64):
        assert run_fixture(name, surface, size).body == whole, f"read size {size}"
    rng = random.Random(f"{name}-{surface}")
    for _ in range(5):
        assert run_fixture(name, surface, rng=rng).body == whole


# What each recorded stream must come to; the golden files pin the exact bytes, these the meaning.
@pytest.mark.parametrize(
    ("name", "text", "finish", "usage"),
    [
        ("normal", "Hello, world!", "stop", Usage(12, 4, False)),
        ("keepalive", "Hi there", "stop", Usage(7, 2, False)),
        ("crlf", "Windows line endings", "stop", Usage(9, 3, False)),
        ("interleaved", "The cat sat.", "stop", Usage(20, 3, False)),
        ("usage_at_end", "Usage comes last", "stop", Usage(15, 3, False)),
        ("no_usage", "No usage is reported here.", "stop", Usage(11, 7, True)),
        ("non_json", "Before after.", "stop", Usage(5, 2, False)),
        ("multibyte", "Héllo wörld, 世界 🎉🚀 — ok", "stop", Usage(11, 19, True)),
        ("length", "Cut by the token cap", "length", Usage(8, 3, False)),
        ("odd_framing", "Chat shaped", "stop", Usage(6, 2, False)),
        # The stop ends the stream before the router's usage chunk arrives.
        ("stop_split", "Line one\nENOUGH said.", "stop_sequence", Usage(11, 7, True)),
    ],
)
def test_recorded_stream_delivers_one_miners_text_and_usage(name: str, text: str, finish: str, usage: Usage) -> None:
    outcome = run_fixture(name, "openai", 1)
    assert (outcome.text, outcome.finish_reason, outcome.usage, outcome.truncated) == (text, finish, usage, False)


def test_truncated_stream_ends_with_an_error_after_the_delivered_text() -> None:
    outcome = run_fixture("truncated", "openai", 3)
    assert outcome.truncated is True
    assert outcome.text == "This answer is cut "
    assert outcome.reader.saw_finish is False and outcome.reader.saw_done is False
    # The half-received last event is flushed at close and is not JSON.
    assert outcome.reader.protocol_errors == 1


def test_non_json_line_is_counted_and_skipped() -> None:
    outcome = run_fixture("non_json", "openai", 2)
    assert outcome.reader.protocol_errors == 1
    assert outcome.text == "Before after."


def test_interleaved_miners_keep_the_first_task() -> None:
    outcome = run_fixture("interleaved", "envelope", 5)
    assert outcome.reader.dropped_chunks == 5
    relayed = [json.loads(line[6:]) for line in outcome.body.decode().split("\n\n") if line.startswith("data: {")]
    assert {chunk["task_id"] for chunk in relayed} == {123}
    assert len(relayed) == 4


# --- the official SDKs read our frames --------------------------------------------------------


def _transport(body: bytes, status: int, content_type: str, path: str) -> httpx2.MockTransport:
    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == path  # the route the SDK calls is the one the gateway serves
        return httpx2.Response(status, content=body, headers={"content-type": content_type, "x-request-id": REQUEST_ID})

    return httpx2.MockTransport(handler)


def openai_client(body: bytes, status: int = 200, content_type: str = "text/event-stream") -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://gateway.test/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=_transport(body, status, content_type, "/v1/chat/completions")),
    )


def anthropic_client(body: bytes, status: int = 200, content_type: str = "text/event-stream") -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="sk-test",
        base_url="http://gateway.test",
        max_retries=0,
        http_client=httpx2.Client(transport=_transport(body, status, content_type, "/v1/messages")),
    )


CHAT_ARGS = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello"}]}
MESSAGES_ARGS = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Say hello"}]}


@pytest.mark.parametrize("name", ["normal", "multibyte", "stop_split", "no_usage", "length"])
def test_openai_sdk_reads_our_chunks(name: str) -> None:
    outcome = run_fixture(name, "openai", 7)
    client = openai_client(outcome.body)
    chunks = list(client.chat.completions.create(**CHAT_ARGS, stream=True, stream_options={"include_usage": True}))
    assert {c.id for c in chunks} == {COMPLETION_ID}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {MODEL}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == outcome.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length" if outcome.finish_reason == "length" else "stop"]
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens, chunks[-1].usage.total_tokens) == (
        outcome.usage.prompt_tokens,
        outcome.usage.completion_tokens,
        outcome.usage.total_tokens,
    )


def test_openai_sdk_stream_helper_assembles_the_final_completion() -> None:
    outcome = run_fixture("keepalive", "openai", 4)
    client = openai_client(outcome.body)
    with client.chat.completions.stream(**CHAT_ARGS, stream_options={"include_usage": True}) as stream:
        final = stream.get_final_completion()
    assert final.id == COMPLETION_ID
    assert final.model == MODEL
    assert final.created == CREATED
    assert final.choices[0].message.content == "Hi there"
    assert final.choices[0].message.role == "assistant"
    assert final.choices[0].finish_reason == "stop"
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (7, 2, 9)


def test_openai_sdk_raises_on_our_mid_stream_error() -> None:
    outcome = run_fixture("truncated", "openai", 9)
    client = openai_client(outcome.body)
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(**CHAT_ARGS, stream=True):
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "This answer is cut "
    assert caught.value.message == ENDED_EARLY
    assert caught.value.body == {
        "message": ENDED_EARLY,
        "type": "api_error",
        "param": None,
        "code": "upstream_error",
    }


@pytest.mark.parametrize("name", ["normal", "multibyte", "stop_split", "length", "no_usage"])
def test_anthropic_sdk_accumulates_our_events(name: str) -> None:
    outcome = run_fixture(name, "anthropic", 7)
    client = anthropic_client(outcome.body)
    with client.messages.stream(**MESSAGES_ARGS) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == outcome.text
    assert final.id == MESSAGE_ID
    assert final.model == MODEL
    assert final.role == "assistant"
    assert [(block.type, block.text) for block in final.content] == [("text", outcome.text)]
    expected_reason = {"stop": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence"}
    assert final.stop_reason == expected_reason[outcome.finish_reason]
    assert final.stop_sequence == outcome.stop_sequence
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        outcome.usage.prompt_tokens,
        outcome.usage.completion_tokens,
    )


def test_anthropic_sdk_raw_events_come_in_the_documented_order() -> None:
    outcome = run_fixture("normal", "anthropic", 3)
    client = anthropic_client(outcome.body)
    kinds = [event.type for event in client.messages.create(**MESSAGES_ARGS, stream=True)]
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_anthropic_sdk_raises_on_our_mid_stream_error() -> None:
    outcome = run_fixture("truncated", "anthropic", 9)
    client = anthropic_client(outcome.body)
    with pytest.raises(anthropic.APIStatusError) as caught:
        with client.messages.stream(**MESSAGES_ARGS) as stream:
            for _ in stream:
                pass
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": ENDED_EARLY},
    }


def test_anthropic_sdk_maps_our_overloaded_stream_error() -> None:
    translator = MessagesStreamTranslator(message_id=MESSAGE_ID, model=MODEL, input_tokens=3)
    body = translator.start() + translator.text("partial") + translator.error(UpstreamUnavailable())
    client = anthropic_client(body)
    with pytest.raises(anthropic.APIStatusError) as caught:
        with client.messages.stream(**MESSAGES_ARGS) as stream:
            stream.until_done()
    assert caught.value.body["error"]["type"] == "overloaded_error"


# --- non-streaming answers and error bodies through the SDKs ---------------------------------


def test_openai_sdk_parses_our_chat_completion() -> None:
    answer = chat_completion_response(
        completion_id=COMPLETION_ID,
        created=CREATED,
        model=MODEL,
        text="Hi!",
        finish_reason="stop_sequence",
        usage=Usage(4, 1, True),
    )
    client = openai_client(json.dumps(answer).encode(), content_type="application/json")
    completion = client.chat.completions.create(**CHAT_ARGS)
    assert completion.id == COMPLETION_ID
    assert completion.object == "chat.completion"
    assert completion.created == CREATED
    assert completion.model == MODEL
    assert completion.choices[0].message.content == "Hi!"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.refusal is None
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (4, 1, 5)
    assert "estimated" not in completion.usage.model_dump()


@pytest.mark.parametrize(
    ("err", "sdk_error"),
    [
        (InvalidRequest("bad temperature", param="temperature", code="invalid_value"), openai.BadRequestError),
        (AuthenticationFailed(), openai.AuthenticationError),
        (ModelNotFound(), openai.NotFoundError),
        (RateLimited(), openai.RateLimitError),
        (UpstreamUnavailable(), openai.InternalServerError),
    ],
)
def test_openai_sdk_reads_our_error_bodies(err: GatewayError, sdk_error: type[openai.APIStatusError]) -> None:
    client = openai_client(json.dumps(openai_error_body(err)).encode(), status=err.status, content_type="application/json")
    with pytest.raises(sdk_error) as caught:
        client.chat.completions.create(**CHAT_ARGS)
    assert caught.value.status_code == err.status
    assert (caught.value.type, caught.value.code, caught.value.param) == (err.openai_type, err.code, err.param)
    assert err.message in caught.value.message


def test_anthropic_sdk_parses_our_message() -> None:
    answer = messages_response(
        message_id=MESSAGE_ID,
        model=MODEL,
        text="Hi!",
        finish_reason="stop_sequence",
        stop_sequence="###",
        usage=Usage(4, 1, True),
    )
    client = anthropic_client(json.dumps(answer).encode(), content_type="application/json")
    message = client.messages.create(**MESSAGES_ARGS)
    assert message.id == MESSAGE_ID
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == MODEL
    assert [(block.type, block.text) for block in message.content] == [("text", "Hi!")]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "###")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 1)


@pytest.mark.parametrize(
    ("err", "sdk_error"),
    [
        (InvalidRequest("max_tokens: Field required"), anthropic.BadRequestError),
        (AuthenticationFailed(), anthropic.AuthenticationError),
        (PermissionDenied(), anthropic.PermissionDeniedError),
        (ModelNotFound(), anthropic.NotFoundError),
        (RateLimited(), anthropic.RateLimitError),
        (UpstreamError(), anthropic.InternalServerError),
        (UpstreamUnavailable(), anthropic.OverloadedError),
    ],
)
def test_anthropic_sdk_reads_our_error_bodies(err: GatewayError, sdk_error: type[anthropic.APIStatusError]) -> None:
    client = anthropic_client(
        json.dumps(anthropic_error_body(err, REQUEST_ID)).encode(),
        status=err.status_for_anthropic,
        content_type="application/json",
    )
    with pytest.raises(sdk_error) as caught:
        client.messages.create(**MESSAGES_ARGS)
    assert caught.value.status_code == err.status_for_anthropic
    assert caught.value.body["error"] == {"type": err.anthropic_type, "message": err.message}
    assert caught.value.body["request_id"] == REQUEST_ID
