"""Cortensor envelope surface: request validation, the envelope, error envelopes and the relayed stream."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import InvalidRequest, ModelNotFound, UpstreamError
from gateway.translate.common import CompletionRequest
from gateway.translate.envelope import (
    EnvelopeStreamTranslator,
    envelope_error_body,
    envelope_response,
    parse_envelope_request,
)
from gateway.translate.sse import SSEEvent, SSEParser


def test_minimal_request_has_no_model() -> None:
    assert parse_envelope_request({"prompt": "Hi"}) == CompletionRequest(surface="envelope", model=None, prompt="Hi")


def test_full_request() -> None:
    request = parse_envelope_request(
        {"model": "oss-20b", "prompt": "Hi", "max_tokens": 5, "temperature": 0, "top_p": 1, "stream": True, "extra": 1}
    )
    assert request == CompletionRequest(
        surface="envelope", model="oss-20b", prompt="Hi", max_tokens=5, temperature=0.0, top_p=1.0, stream=True
    )


def test_empty_model_means_the_default() -> None:
    assert parse_envelope_request({"model": "", "prompt": "Hi"}).model is None


@pytest.mark.parametrize(
    ("request_body", "param", "code"),
    [
        (None, None, "invalid_type"),
        ({}, "prompt", "missing_required_parameter"),
        ({"prompt": ["a"]}, "prompt", "invalid_type"),
        ({"prompt": ""}, "prompt", "invalid_value"),
        ({"prompt": "Hi", "model": 3}, "model", "invalid_type"),
        ({"prompt": "Hi", "max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"prompt": "Hi", "max_tokens": "9"}, "max_tokens", "invalid_type"),
        ({"prompt": "Hi", "temperature": 3}, "temperature", "invalid_value"),
        ({"prompt": "Hi", "top_p": "x"}, "top_p", "invalid_type"),
        ({"prompt": "Hi", "stream": 1}, "stream", "invalid_type"),
    ],
)
def test_invalid_request(request_body: object, param: str | None, code: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_envelope_request(request_body)
    err = caught.value
    assert (err.status, err.envelope_code, err.param, err.code) == (400, "invalid_request", param, code)


def test_envelope_response() -> None:
    data: dict[str, Any] = {"id": "cmpl-1", "choices": [{"text": "Hi"}], "model": "default"}
    assert envelope_response(request_id="req_1", model="oss-20b", pool_name="pool-a", data=data) == {
        "request_id": "req_1",
        "status": "ok",
        "model": "oss-20b",
        "router_pool": "pool-a",
        "data": data,
        "error": None,
    }


def test_envelope_error_body() -> None:
    err = ModelNotFound("model 'x' not found", details={"model": "x"})
    assert envelope_error_body(err, request_id="req_1", model="x", pool_name=None) == {
        "request_id": "req_1",
        "status": "failed",
        "model": "x",
        "router_pool": None,
        "data": None,
        "error": {"code": "model_not_found", "message": "model 'x' not found", "details": {"model": "x"}},
    }


def test_stream_relays_chunks_one_to_one_and_ends_with_done() -> None:
    t = EnvelopeStreamTranslator(model="oss-20b", pool_name="pool-a")
    raw = '{"id":"c","task_id":1,"choices":[{"text":"Hé"}]}'
    assert t.start() == b""
    assert (
        t.chunk({"id": "c", "task_id": 1, "choices": [{"text": "Hé"}]})
        == b'data: {"id":"c","task_id":1,"choices":[{"text":"H\\u00e9"}]}\n\n'
    )
    assert t.chunk(raw) == f"data: {raw}\n\n".encode()
    assert t.finish() == b"data: [DONE]\n\n"


def test_relayed_multiline_data_round_trips() -> None:
    data = '{"a":\n1}'
    parser = SSEParser()
    assert parser.feed(EnvelopeStreamTranslator().chunk(data)) == [SSEEvent(None, data)]


def test_stream_error_is_an_envelope_frame() -> None:
    t = EnvelopeStreamTranslator(model="oss-20b", pool_name="pool-a")
    assert t.error(UpstreamError(), "req_1") == (
        b'data: {"request_id":"req_1","status":"failed","model":"oss-20b","router_pool":"pool-a","data":null,'
        b'"error":{"code":"upstream_error","message":"the upstream model server failed to answer","details":null}}\n\n'
    )
