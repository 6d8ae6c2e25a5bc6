"""The Responses surface's translation: request validation, the response object and the typed event stream.

The recorded router streams of test_translate_streams.py go through the Responses translator against golden files
(`fixtures/<name>.responses.sse`); every event and object is validated against the `openai` SDK's own pydantic
types (required fields and their types, not just parsed leniently), and the SDK's clients read them.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.errors import InvalidRequest
from gateway.relay import StreamRelay
from gateway.surfaces import OPENAI_RESPONSES, AnswerContext
from gateway.translate.common import ChatMessage, Usage
from gateway.translate.responses import (
    ResponsesRequest,
    ResponsesStreamTranslator,
    parse_responses_request,
    response_object,
    responses_answer,
)
from tests.translate.test_translate_streams import FIXTURES, STREAMS, UPDATE_GOLDEN, split_reads

REQUEST_ID = "req_0123456789abcdef01234567"
RESPONSE_ID = "resp_0123456789abcdef01234567"
ITEM_ID = "msg_0123456789abcdef01234567"
CREATED = 1700000000
COMPLETED = 1700000003
MODEL = "my-alias"
PROMPT_TOKENS_ESTIMATE = 11

EVENTS = TypeAdapter(ResponseStreamEvent)


def request(**body: Any) -> ResponsesRequest:
    return parse_responses_request({"model": MODEL, "input": "Say hello", **body})


# --- requests ---------------------------------------------------------------------------------------------------------


def test_a_string_input_is_one_user_turn_and_defaults_are_openais() -> None:
    req = request()
    assert req.surface == "openai_responses"
    assert req.messages == req.turns == [ChatMessage("user", "Say hello")]
    assert (req.store, req.previous_response_id, req.instructions, req.system, req.stream) == (True, None, None, None, False)
    assert (req.max_tokens, req.temperature, req.top_p, req.metadata, req.user) == (None, None, None, None, None)
    assert req.include_usage is True and req.stop == [] and req.parallel_tool_calls is True and req.depth == 1


def test_message_items_with_every_role_and_text_part() -> None:
    req = request(
        input=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "input_text", "text": "Dev rule."}]},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
            },
            # An earlier answer passed back as the SDKs do: the output message item, id, status and annotations included.
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Hi.", "annotations": []}],
            },
            {"role": "user", "content": "Again"},
        ],
        instructions="You are terse.",
        max_output_tokens=32,
        temperature=0.5,
        top_p=0.9,
        stream=True,
        metadata={"team": "a"},
        user="u-1",
        store=False,
        previous_response_id="resp_0123456789abcdef01234567",
        # What SDKs and agent frameworks send on every call, harmless here.
        tools=[],
        tool_choice="none",
        include=[],
        reasoning={"effort": None},
        text={"format": {"type": "text"}},
        truncation="disabled",
        background=False,
        parallel_tool_calls=False,
        top_logprobs=0,
        service_tier="auto",
        prompt_cache_key="k",
    )
    assert [(m.role, m.content) for m in req.turns] == [
        ("system", "Be brief."),
        ("developer", "Dev rule."),
        ("user", "a\nb"),
        ("assistant", "Hi."),
        ("user", "Again"),
    ]
    assert req.messages == req.turns
    assert (req.instructions, req.system) == ("You are terse.", "You are terse.")
    assert (req.max_tokens, req.temperature, req.top_p, req.stream, req.store) == (32, 0.5, 0.9, True, False)
    assert (req.metadata, req.user, req.previous_response_id, req.parallel_tool_calls) == (
        {"team": "a"},
        "u-1",
        RESPONSE_ID,
        False,
    )


def test_a_continuation_puts_the_history_first_and_counts_the_chain() -> None:
    req = request(input=[{"role": "user", "content": "and then?"}], instructions="x" * 5)
    req.continue_from([ChatMessage("user", "first"), ChatMessage("assistant", "answer")], depth=3)
    assert [(m.role, m.content) for m in req.messages] == [("user", "first"), ("assistant", "answer"), ("user", "and then?")]
    assert req.depth == 4
    assert req.conversation_chars() == len("first") + len("answer") + len("and then?") + 5


REFUSED: list[tuple[dict[str, Any], str, str, str]] = [
    # body fields -> param, code, a piece of the message
    ({"input": None}, "input", "missing_required_parameter", "Missing required parameter: 'input'."),
    ({"input": 3}, "input", "invalid_type", "expected a string or an array of input items, but got an integer"),
    ({"input": []}, "input", "invalid_value", "must contain at least one item"),
    ({"input": [{"role": "user", "content": "hi"}] * 2049}, "input", "invalid_value", "at most 2048 items"),
    ({"input": ["hi"]}, "input[0]", "invalid_type", "expected an object"),
    (
        {"input": [{"type": "function_call_output", "call_id": "c", "output": "4"}]},
        "input[0].type",
        "unsupported_value",
        "'function_call_output'",
    ),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type", "unsupported_value", "only messages are"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type", "unsupported_value", "'item_reference'"),
    ({"input": [{"type": {}}]}, "input[0].type", "invalid_type", "a string"),
    ({"input": [{"content": "hi"}]}, "input[0].role", "missing_required_parameter", "'input[0].role'"),
    ({"input": [{"role": "tool", "content": "hi"}]}, "input[0].role", "invalid_value", "'tool' is not one of"),
    ({"input": [{"role": "user"}]}, "input[0].content", "missing_required_parameter", "'input[0].content'"),
    ({"input": [{"role": "user", "content": 5}]}, "input[0].content", "invalid_type", "a string or an array of content parts"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA=="}]}]},
        "input[0].content[0].type",
        "unsupported_value",
        "'input_image' is not supported; only text is",
    ),
    (
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
        "input[0].content[0].type",
        "unsupported_value",
        "'input_file'",
    ),
    ({"input": [{"role": "user", "content": [{"type": {}}]}]}, "input[0].content[0].type", "invalid_type", "a string"),
    ({"input": [{"role": "user", "content": [{"text": "x"}]}]}, "input[0].content[0].type", "missing_required_parameter", "type"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
        "input[0].content[0].text",
        "missing_required_parameter",
        "text",
    ),
    (
        {"input": [{"role": "user", "content": [{"type": "input_text", "text": "x"}] * 257}]},
        "input[0].content",
        "invalid_value",
        "at most 256",
    ),
    (
        {"tools": [{"type": "function", "name": "f", "parameters": {}}]},
        "tools",
        "unsupported_parameter",
        "Tool calling is not offered",
    ),
    ({"tools": [{"type": "web_search"}]}, "tools", "unsupported_parameter", "'tools'"),
    ({"tool_choice": "auto"}, "tool_choice", "unsupported_value", "only 'none' is accepted"),
    ({"include": ["reasoning.encrypted_content"]}, "include", "unsupported_value", "no additional output"),
    ({"include": "x"}, "include", "invalid_type", "an array"),
    ({"reasoning": {"effort": "high"}}, "reasoning", "unsupported_parameter", "reasoning options"),
    ({"reasoning": "high"}, "reasoning", "invalid_type", "an object"),
    (
        {"text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}},
        "text.format",
        "unsupported_value",
        "only {'type': 'text'}",
    ),
    ({"text": {"format": "text"}}, "text.format", "invalid_type", "an object"),
    ({"text": {"verbosity": "low"}}, "text.verbosity", "unsupported_parameter", "verbosity"),
    ({"conversation": "conv_1"}, "conversation", "unsupported_parameter", "previous_response_id"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt", "unsupported_parameter", "prompt templates"),
    ({"background": True}, "background", "unsupported_value", "background responses"),
    ({"truncation": "auto"}, "truncation", "unsupported_value", "only 'disabled'"),
    ({"truncation": "sometimes"}, "truncation", "invalid_value", "not one of"),
    ({"top_logprobs": 3}, "top_logprobs", "unsupported_value", "log probabilities"),
    ({"max_output_tokens": 0}, "max_output_tokens", "invalid_value", "at least 1"),
    ({"max_output_tokens": "9"}, "max_output_tokens", "invalid_type", "an integer"),
    ({"temperature": 3}, "temperature", "invalid_value", "between 0 and 2"),
    ({"top_p": 1.5}, "top_p", "invalid_value", "between 0 and 1"),
    ({"stream": "yes"}, "stream", "invalid_type", "a boolean"),
    ({"store": "no"}, "store", "invalid_type", "a boolean"),
    ({"instructions": ["x"]}, "instructions", "invalid_type", "a string"),
    ({"user": "u" * 257}, "user", "invalid_value", "at most 256 characters"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_value", "at most 16 entries"),
    ({"metadata": {"k": {"nested": 1}}}, "metadata.k", "invalid_type", "a string, a number"),
    ({"previous_response_id": 7}, "previous_response_id", "invalid_type", "a string"),
    ({"previous_response_id": ""}, "previous_response_id", "invalid_value", "must not be empty"),
    ({"previous_response_id": "resp_" + "a" * 60}, "previous_response_id", "invalid_value", "at most 64 characters"),
    ({"model": None}, "model", "missing_required_parameter", "'model'"),
    ({"model": "m" * 257}, "model", "invalid_value", "at most 256 characters"),
]


@pytest.mark.parametrize(("fields", "param", "code", "message"), REFUSED, ids=[f"{r[1]}-{i}" for i, r in enumerate(REFUSED)])
def test_refusals_name_the_field(fields: dict[str, Any], param: str, code: str, message: str) -> None:
    body = {"model": MODEL, "input": "hi", **fields}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(InvalidRequest) as caught:
        parse_responses_request(body)
    err = caught.value
    assert (err.param, err.code, err.status) == (param, code, 400)
    assert message in err.message


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_responses_request(["hi"])
    assert caught.value.message == "The request body must be a JSON object, but got an array."


# --- the response object ----------------------------------------------------------------------------------------------


def answer(text: str, finish_reason: str, **body: Any) -> dict[str, Any]:
    return responses_answer(
        request_id=REQUEST_ID,
        created_at=CREATED,
        model=MODEL,
        request=request(**body),
        text=text,
        finish_reason=finish_reason,
        usage=Usage(7, 3, True),
        completed_at=COMPLETED,
    )


def test_a_completed_answer_is_the_response_object_exactly() -> None:
    assert answer(
        "Hi there!", "stop", instructions="Be nice.", max_output_tokens=40, temperature=0.2, metadata={"a": "b"}, user="u"
    ) == {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": CREATED,
        "status": "completed",
        "background": False,
        "completed_at": COMPLETED,
        "error": None,
        "incomplete_details": None,
        "instructions": "Be nice.",
        "max_output_tokens": 40,
        "model": MODEL,
        "output": [
            {
                "id": ITEM_ID,
                "type": "message",
                "status": "completed",
                "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": "Hi there!"}],
                "role": "assistant",
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 0.2,
        "text": {"format": {"type": "text"}},
        "tool_choice": "none",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": {
            "input_tokens": 7,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 3,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 10,
        },
        "user": "u",
        "metadata": {"a": "b"},
    }


def test_an_answer_cut_by_the_token_cap_is_incomplete() -> None:
    obj = answer("Cut", "length")
    assert obj["status"] == "incomplete"
    assert obj["incomplete_details"] == {"reason": "max_output_tokens"}
    assert obj["completed_at"] is None
    assert obj["output"][0]["status"] == "incomplete"


@pytest.mark.parametrize("finish_reason", ["stop", "length"])
def test_the_sdk_types_validate_our_response_object(finish_reason: str) -> None:
    parsed = Response.model_validate(answer("Hi!", finish_reason, instructions="x", metadata={"a": "b"}))
    assert parsed.output_text == "Hi!"
    assert parsed.usage is not None and (parsed.usage.input_tokens, parsed.usage.output_tokens, parsed.usage.total_tokens) == (
        7,
        3,
        10,
    )
    assert parsed.status == ("completed" if finish_reason == "stop" else "incomplete")


# --- the event stream: recorded router streams against golden files ---------------------------------------------------


def run_pipeline(raw_reads: Iterator[bytes]) -> tuple[bytes, ResponsesStreamTranslator, bool]:
    """The production relay (gateway/relay.py) with this surface's own stream writer, fed one network read at a time."""
    ctx = AnswerContext(
        request_id=REQUEST_ID,
        model=MODEL,
        pool_name="pool-a",
        created=CREATED,
        prompt_tokens_estimate=PROMPT_TOKENS_ESTIMATE,
        include_usage=True,
        request=request(max_output_tokens=64),
    )
    writer = OPENAI_RESPONSES.stream_writer(ctx)
    translator: ResponsesStreamTranslator = writer._t  # type: ignore[attr-defined]
    translator._clock = lambda: COMPLETED  # the golden files pin completed_at
    relay = StreamRelay(writer, stops=[], ctx=ctx)
    out = bytearray(relay.start())
    for read in raw_reads:
        out += relay.feed(read)
        if relay.ended:
            break
    else:
        out += relay.close()
    out += relay.finish()
    return bytes(out), translator, relay.failure is not None


def run_fixture(
    name: str, size: int | None = None, rng: random.Random | None = None
) -> tuple[bytes, ResponsesStreamTranslator, bool]:
    return run_pipeline(split_reads((FIXTURES / f"{name}.sse").read_bytes(), size, rng))


def events_of(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event line, data) of each frame; asserts the framing: an `event:` line, then one `data:` line of the same type."""
    frames = body.decode().split("\n\n")
    assert frames[-1] == ""
    parsed = []
    for frame in frames[:-1]:
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        data = json.loads(data_line[6:])
        assert data["type"] == event_line[7:]
        parsed.append((event_line[7:], data))
    return parsed


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_recorded_stream_matches_golden_for_any_read_size(name: str) -> None:
    whole = run_fixture(name)[0]
    golden = FIXTURES / f"{name}.responses.sse"
    if UPDATE_GOLDEN:
        golden.write_bytes(whole)
    assert whole == golden.read_bytes()
    for size in (1, 2, 3, 5, 7, 64):
        assert run_fixture(name, size)[0] == whole, f"read size {size}"
    rng = random.Random(f"{name}-responses")
    for _ in range(5):
        assert run_fixture(name, rng=rng)[0] == whole


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_every_event_is_valid_to_the_sdk_types_and_numbered_in_order(name: str) -> None:
    body, translator, truncated = run_fixture(name, 5)
    events = events_of(body)
    for _, data in events:
        EVENTS.validate_python(data)  # strict: required fields present, with the SDK's types
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    kinds = [kind for kind, _ in events]
    deltas = [data["delta"] for kind, data in events if kind == "response.output_text.delta"]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert kinds[4 : 4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    ids = {data["response"]["id"] for kind, data in events if "response" in data}
    assert ids == {RESPONSE_ID}
    assert {data["item_id"] for _, data in events if "item_id" in data} == {ITEM_ID}
    if truncated:
        assert kinds[4 + len(deltas) :] == ["response.failed"]
        failed = events[-1][1]["response"]
        assert failed["status"] == "failed"
        assert failed["error"] == {"code": "server_error", "message": "the upstream model server ended the stream early"}
        assert failed["output"][0]["content"][0]["text"] == "".join(deltas)
        return
    text = "".join(deltas)
    final_kind = "response.incomplete" if name == "length" else "response.completed"
    assert kinds[4 + len(deltas) :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        final_kind,
    ]
    done = dict(events[4 + len(deltas) :][0][1])
    assert done["text"] == text
    final = events[-1][1]["response"]
    assert final == translator.final and json.loads(translator.final_json or "") == final
    assert translator.final_text == text
    assert final["output"][0]["content"][0]["text"] == text
    # The stream's last object and the non-stream answer are one shape.
    expected = response_object(
        response_id=RESPONSE_ID,
        created_at=CREATED,
        model=MODEL,
        request=request(max_output_tokens=64),
        status=final["status"],
        output=final["output"],
        usage=Usage(final["usage"]["input_tokens"], final["usage"]["output_tokens"]),
        completed_at=final["completed_at"],
    )
    assert final == expected
    created = events[0][1]["response"]
    assert (created["status"], created["output"], created["usage"], created["completed_at"]) == ("in_progress", [], None, None)


# What each recorded stream comes to on this surface (the golden files pin the bytes).
@pytest.mark.parametrize(
    ("name", "text", "status", "usage"),
    [
        ("normal", "Hello, world!", "completed", (12, 4)),
        ("keepalive", "Hi there", "completed", (7, 2)),
        ("interleaved", "The cat sat.", "completed", (20, 3)),
        ("no_usage", "No usage is reported here.", "completed", (11, 7)),
        ("multibyte", "Héllo wörld, 世界 🎉🚀 — ok", "completed", (11, 19)),
        ("length", "Cut by the token cap", "incomplete", (8, 3)),
    ],
)
def test_recorded_stream_delivers_one_miners_text_status_and_usage(
    name: str, text: str, status: str, usage: tuple[int, int]
) -> None:
    _, translator, truncated = run_fixture(name, 1)
    assert truncated is False and translator.final is not None
    assert (translator.final_text, translator.final["status"]) == (text, status)
    assert (translator.final["usage"]["input_tokens"], translator.final["usage"]["output_tokens"]) == usage


# --- the official SDK reads our frames --------------------------------------------------------------------------------


def sdk(body: bytes, content_type: str = "text/event-stream", status: int = 200) -> openai.OpenAI:
    def handler(req: httpx2.Request) -> httpx2.Response:
        assert req.url.path == "/v1/responses"  # the route the SDK calls is the one the gateway serves
        return httpx2.Response(status, content=body, headers={"content-type": content_type, "x-request-id": REQUEST_ID})

    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://gateway.test/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )


@pytest.mark.parametrize("name", ["normal", "multibyte", "no_usage", "keepalive", "stop_split"])
def test_sdk_stream_helper_assembles_the_final_response(name: str) -> None:
    body, translator, _ = run_fixture(name, 7)
    with sdk(body).responses.stream(model=MODEL, input="Say hello") as stream:
        streamed = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert streamed == final.output_text == translator.final_text
    assert (final.id, final.model, final.status, final.created_at) == (RESPONSE_ID, MODEL, "completed", CREATED)
    assert final.output[0].id == ITEM_ID
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        translator.final["usage"]["input_tokens"],
        translator.final["usage"]["output_tokens"],  # type: ignore[index]
    )


def test_sdk_raw_stream_ends_incomplete_when_the_cap_cut_the_answer() -> None:
    body, _, _ = run_fixture("length", 3)
    events = list(sdk(body).responses.create(model=MODEL, input="Say hello", stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details is not None
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-1].response.output_text == "Cut by the token cap"


def test_sdk_sees_a_failed_response_after_the_delivered_text() -> None:
    body, _, truncated = run_fixture("truncated", 9)
    assert truncated
    events = list(sdk(body).responses.create(model=MODEL, input="Say hello", stream=True))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "This answer is cut "
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed"
    assert (
        events[-1].response.error is not None
        and events[-1].response.error.message == "the upstream model server ended the stream early"
    )
    with sdk(body).responses.stream(model=MODEL, input="Say hello") as stream:
        with pytest.raises(RuntimeError, match="response.completed"):
            stream.get_final_response()


def test_sdk_parses_our_non_stream_answer() -> None:
    obj = answer("Hi!", "stop", instructions="Be nice.")
    parsed = sdk(json.dumps(obj).encode(), "application/json").responses.create(model=MODEL, input="Say hello")
    assert (parsed.id, parsed.object, parsed.status, parsed.output_text, parsed.instructions) == (
        RESPONSE_ID,
        "response",
        "completed",
        "Hi!",
        "Be nice.",
    )
    assert parsed.usage is not None and parsed.usage.total_tokens == 10


@pytest.mark.bench
def test_per_token_cost_of_the_responses_stream() -> None:
    translator = ResponsesStreamTranslator(request_id=REQUEST_ID, created_at=CREATED, model=MODEL, request=request())
    translator.start()
    tokens = [f" tok{i % 50}" for i in range(50_000)]
    started = time.perf_counter()
    sent = sum(len(translator.text(t)) for t in tokens)
    per_token_us = (time.perf_counter() - started) / len(tokens) * 1e6
    print(f"\nresponses: {per_token_us:.2f} µs per token (translator only), {sent} bytes out")
    assert per_token_us < 50
