"""The official anthropic SDK (and raw SSE over httpx) against a live daphne gateway and the router simulator."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import anthropic
import httpx
import pytest

from gateway.translate.common import estimate_tokens
from simulator import simulated_tokens
from tests.conftest import ALIAS, IssuedKey, LiveGateway, issue_key, wait_for, wait_until_gateway_caught_up
from usage.models import UsageEvent

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def key(gateway: LiveGateway) -> IssuedKey:
    # The pro plan: these tests send many requests and must never meet the free plan's limits.
    return issue_key(slug="anthropic-sdk-org", plan="pro")


def client(gateway: LiveGateway, key: IssuedKey | str, **kwargs: Any) -> anthropic.Anthropic:
    raw = key if isinstance(key, str) else key.raw
    return anthropic.Anthropic(base_url=gateway.url, api_key=raw, max_retries=0, timeout=20, **kwargs)


def chatml(messages: list[tuple[str, str]], system: str | None = None) -> str:
    """The prompt docs/router.md's chatml format makes of a conversation, written out independently of the gateway."""
    out = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    out += "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages)
    return out + "<|im_start|>assistant\n"


CHATML_HI = chatml([("user", "hi")])


def answer(prompt: str, max_tokens: int) -> tuple[list[str], str]:
    """The simulator's tokens for a prompt and its finish reason ("stop" or "length")."""
    return simulated_tokens(prompt, max_tokens)


def router_prompt_tokens(prompt: str) -> int:
    return math.ceil(len(prompt) / 4)  # what the simulator reports as prompt_tokens


STOP_REASON = {"stop": "end_turn", "length": "max_tokens"}


def request_id_of_message(message_id: str) -> str:
    assert message_id.startswith("msg_")
    return f"req_{message_id.removeprefix('msg_')}"


def usage_row(rid: str) -> UsageEvent:
    return wait_for(lambda: UsageEvent.objects.filter(request_id=rid).first())


def prompt_with(min_natural: int, *, max_tokens: int = 128) -> tuple[str, str, list[str]]:
    """A user text whose ChatML prompt gets at least `min_natural` tokens back (the simulator's length varies by prompt)."""
    for i in range(500):
        text = f"tell me a story {i}"
        prompt = chatml([("user", text)])
        tokens, reason = answer(prompt, max_tokens)
        if len(tokens) >= min_natural and reason == "stop":
            return text, prompt, tokens
    raise AssertionError("no prompt found")


# --- messages.create ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens", [64, 5], ids=["end_turn", "max_tokens"])
def test_create_returns_the_router_answer(max_tokens: int, gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    raw = client(gateway, key).messages.with_raw_response.create(model=ALIAS, max_tokens=max_tokens, messages=HI)
    message = raw.parse()
    tokens, reason = answer(CHATML_HI, max_tokens)
    assert reason == ("stop" if max_tokens == 64 else "length")

    assert isinstance(message, anthropic.types.Message)
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == ALIAS
    assert len(message.content) == 1
    assert message.content[0].type == "text"
    assert message.content[0].text == "".join(tokens)
    assert message.stop_reason == STOP_REASON[reason]
    assert message.stop_sequence is None
    assert message.usage.input_tokens == router_prompt_tokens(CHATML_HI)
    assert message.usage.output_tokens == len(tokens)

    rid = request_id_of_message(message.id)
    assert raw.headers["request-id"] == rid
    assert raw.headers["x-request-id"] == rid
    assert raw.headers["content-type"] == "application/json"

    sent = sim.stats()["last_request"]
    assert sent["prompt"] == CHATML_HI
    assert sent["max_tokens"] == max_tokens
    assert sent["stream"] is False
    assert sent["client_reference"] == rid
    for absent in ("top_k", "temperature", "top_p", "stop", "metadata"):
        assert absent not in sent

    row = usage_row(rid)
    assert (row.status, row.http_status, row.route, row.alias, row.streamed, row.estimated) == (
        "ok",
        200,
        "messages",
        ALIAS,
        False,
        False,
    )
    assert (row.prompt_tokens, row.completion_tokens) == (router_prompt_tokens(CHATML_HI), len(tokens))
    assert (row.organization_id, row.api_key_id) == (key.organization_id, key.key_id)


def test_create_raw_json_has_exactly_the_message_fields(gateway: LiveGateway, key: IssuedKey) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/messages",
        headers={"x-api-key": key.raw, "anthropic-version": "2023-06-01"},
        json={"model": ALIAS, "max_tokens": 64, "messages": HI},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    tokens, _ = answer(CHATML_HI, 64)
    rid = response.headers["request-id"]
    assert body == {
        "id": f"msg_{rid.removeprefix('req_')}",
        "type": "message",
        "role": "assistant",
        "model": ALIAS,
        "content": [{"type": "text", "text": "".join(tokens)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": router_prompt_tokens(CHATML_HI),
            "output_tokens": len(tokens),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


# --- messages.stream ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens", [64, 5], ids=["end_turn", "max_tokens"])
def test_stream_text_and_final_message(max_tokens: int, gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    tokens, reason = answer(CHATML_HI, max_tokens)
    with client(gateway, key).messages.stream(model=ALIAS, max_tokens=max_tokens, messages=HI) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
        headers = stream.response.headers
    assert "".join(pieces) == "".join(tokens)
    assert pieces == tokens  # one text delta per router token
    assert final.model == ALIAS
    assert final.role == "assistant"
    assert [(b.type, b.text) for b in final.content] == [("text", "".join(tokens))]
    assert final.stop_reason == STOP_REASON[reason]
    assert final.stop_sequence is None
    assert final.usage.input_tokens == router_prompt_tokens(CHATML_HI)
    assert final.usage.output_tokens == len(tokens)

    rid = request_id_of_message(final.id)
    assert headers["request-id"] == rid
    assert headers["x-request-id"] == rid
    assert headers["content-type"].startswith("text/event-stream")
    sent = sim.stats()["last_request"]
    assert (sent["prompt"], sent["max_tokens"], sent["stream"], sent["client_reference"]) == (CHATML_HI, max_tokens, True, rid)
    assert sent["accept"] == "text/event-stream"

    row = usage_row(rid)
    assert (row.status, row.http_status, row.route, row.streamed, row.estimated) == ("ok", 200, "messages", True, False)
    assert (row.prompt_tokens, row.completion_tokens) == (router_prompt_tokens(CHATML_HI), len(tokens))


def test_create_with_stream_true_yields_the_raw_events(gateway: LiveGateway, key: IssuedKey) -> None:
    tokens, _ = answer(CHATML_HI, 64)
    events = list(client(gateway, key).messages.create(model=ALIAS, max_tokens=64, messages=HI, stream=True))
    types = [e.type for e in events]
    assert types == ["message_start", "content_block_start"] + ["content_block_delta"] * len(tokens) + [
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "".join(tokens)
    assert events[-2].usage.output_tokens == len(tokens)
    assert events[-2].delta.stop_reason == "end_turn"


# --- the raw SSE wire ------------------------------------------------------------------------------------------------------


def read_sse(response: httpx.Response) -> list[tuple[str | None, str]]:
    """(event name, data) per SSE event, checking each event is exactly one `event:` line and one `data:` line."""
    events: list[tuple[str | None, str]] = []
    text = response.read().decode()
    assert text.endswith("\n\n")
    for block in text[:-2].split("\n\n"):
        lines = block.split("\n")
        assert len(lines) == 2, block
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        events.append((lines[0][len("event: ") :], lines[1][len("data: ") :]))
    return events


def test_raw_sse_event_sequence(gateway: LiveGateway, key: IssuedKey) -> None:
    tokens, _ = answer(CHATML_HI, 64)
    with httpx.stream(
        "POST", f"{gateway.url}/v1/messages", timeout=20,
        headers={"x-api-key": key.raw, "anthropic-version": "2023-06-01"},
        json={"model": ALIAS, "max_tokens": 64, "messages": HI, "stream": True},
    ) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        rid = response.headers["request-id"]
        assert response.headers["x-request-id"] == rid
        events = read_sse(response)

    names = [name for name, _ in events]
    assert names == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * len(tokens) + [
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    datas = [json.loads(data) for _, data in events]
    assert all(d["type"] == name for name, d in zip(names, datas, strict=True))
    assert all("[DONE]" not in data for _, data in events)

    assert datas[0] == {
        "type": "message_start",
        "message": {
            "id": f"msg_{rid.removeprefix('req_')}",
            "type": "message",
            "role": "assistant",
            "model": ALIAS,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": estimate_tokens(CHATML_HI),  # the gateway's estimate: the router has not answered yet
                "output_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        },
    }
    assert datas[1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert datas[2] == {"type": "ping"}
    deltas = datas[3 : 3 + len(tokens)]
    assert deltas == [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}} for t in tokens]
    assert datas[-3] == {"type": "content_block_stop", "index": 0}
    assert datas[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        # Cumulative: the whole answer's output tokens, and the router's input count (the SDK takes it when present).
        "usage": {"input_tokens": router_prompt_tokens(CHATML_HI), "output_tokens": len(tokens)},
    }
    assert datas[-1] == {"type": "message_stop"}


# --- system, multi-turn, parameters ----------------------------------------------------------------------------------------


def test_system_as_a_string(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    message = client(gateway, key).messages.create(model=ALIAS, max_tokens=64, system="You are terse.", messages=HI)
    prompt = chatml([("user", "hi")], system="You are terse.")
    assert sim.stats()["last_request"]["prompt"] == prompt
    tokens, reason = answer(prompt, 64)
    assert message.content[0].text == "".join(tokens)
    assert message.stop_reason == STOP_REASON[reason]
    assert message.usage.input_tokens == router_prompt_tokens(prompt)


def test_system_as_text_blocks_and_a_multi_turn_conversation(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "question"}]},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "and again"},
    ]
    system = [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Answer in English."}]
    prompt = chatml(
        [("user", "first\nquestion"), ("assistant", "an answer"), ("user", "and again")],
        system="You are terse.\nAnswer in English.",
    )
    tokens, _ = answer(prompt, 64)
    c = client(gateway, key)
    message = c.messages.create(model=ALIAS, max_tokens=64, system=system, messages=messages)
    assert sim.stats()["last_request"]["prompt"] == prompt
    assert message.content[0].text == "".join(tokens)
    with c.messages.stream(model=ALIAS, max_tokens=64, system=system, messages=messages) as stream:
        assert stream.get_final_text() == "".join(tokens)
    assert sim.stats()["last_request"]["prompt"] == prompt


def test_top_k_temperature_top_p_metadata_are_accepted(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    c = client(gateway, key)
    # This SDK generation dropped the sampling knobs from its typed signature; extra_body is its documented way to send them.
    message = c.messages.create(
        model=ALIAS,
        max_tokens=64,
        messages=HI,
        metadata={"user_id": "customer-42"},
        extra_body={"top_k": 7, "temperature": 0.25, "top_p": 0.9},
    )
    assert message.content[0].text == "".join(answer(CHATML_HI, 64)[0])
    sent = sim.stats()["last_request"]
    assert (sent["top_k"], sent["temperature"], sent["top_p"]) == (7, 0.25, 0.9)
    assert "metadata" not in sent and "user_id" not in sent
    with c.messages.stream(
        model=ALIAS, max_tokens=64, messages=HI, metadata={"user_id": "u"}, extra_body={"top_k": 3, "temperature": 1.0}
    ) as stream:
        assert stream.get_final_text() == "".join(answer(CHATML_HI, 64)[0])
    sent = sim.stats()["last_request"]
    assert (sent["top_k"], sent["temperature"], sent["stream"]) == (3, 1.0, True)


# --- stop sequences ----------------------------------------------------------------------------------------------------------


def two_word_stop(tokens: list[str]) -> tuple[str, str]:
    """A stop made of two consecutive router tokens (so it spans two router chunks), and the text before it."""
    text = "".join(tokens)
    for k in range(1, len(tokens) - 1):
        stop = tokens[k] + tokens[k + 1]
        before = "".join(tokens[:k])
        if text.find(stop) == len(before):
            return stop, before
    raise AssertionError(f"no usable two-word stop in {tokens}")


@pytest.mark.parametrize("split_writes", [False, True], ids=["one_read", "split_writes"])
def test_stop_sequence_spanning_two_router_chunks(split_writes: bool, gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    sim.configure(global_={"split_writes": split_writes})
    tokens, _ = answer(CHATML_HI, 64)
    stop, before = two_word_stop(tokens)
    assert stop.strip().count(" ") == 1
    stops = ["never-in-the-answer", stop]
    c = client(gateway, key)

    message = c.messages.create(model=ALIAS, max_tokens=64, messages=HI, stop_sequences=stops)
    assert message.content[0].text == before
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == stop
    assert message.usage.input_tokens == router_prompt_tokens(CHATML_HI)
    assert message.usage.output_tokens == len(tokens)  # the router's count wins
    assert sim.stats()["last_request"]["stop"] == stops

    with c.messages.stream(model=ALIAS, max_tokens=64, messages=HI, stop_sequences=stops) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == before
    assert final.content[0].text == before
    assert final.stop_reason == "stop_sequence"
    assert final.stop_sequence == stop
    assert final.usage.input_tokens == estimate_tokens(CHATML_HI)  # the stop ended the stream before the router's usage
    row = usage_row(request_id_of_message(final.id))
    assert row.status == "ok"
    assert row.completion_tokens == final.usage.output_tokens  # what the customer is told is what is recorded
    assert sim.stats()["last_request"]["stop"] == stops


def test_stop_sequence_inside_one_token_and_one_that_never_matches(gateway: LiveGateway, key: IssuedKey) -> None:
    tokens, reason = answer(CHATML_HI, 64)
    c = client(gateway, key)
    message = c.messages.create(model=ALIAS, max_tokens=64, messages=HI, stop_sequences=["zzz"])
    assert (message.content[0].text, message.stop_reason, message.stop_sequence) == ("".join(tokens), STOP_REASON[reason], None)
    with c.messages.stream(model=ALIAS, max_tokens=64, messages=HI, stop_sequences=["zzz"]) as stream:
        final = stream.get_final_message()
    assert (final.content[0].text, final.stop_reason, final.stop_sequence) == ("".join(tokens), STOP_REASON[reason], None)
    assert final.usage.output_tokens == len(tokens)


# --- count_tokens ----------------------------------------------------------------------------------------------------------


def test_count_tokens(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    c = client(gateway, key)
    counted = c.messages.count_tokens(model=ALIAS, messages=HI)
    assert counted.input_tokens == estimate_tokens(CHATML_HI)
    messages = [{"role": "user", "content": "What is the capital of France? " * 5}, {"role": "assistant", "content": "Paris."}]
    prompt = chatml([(m["role"], m["content"]) for m in messages], system="Be brief.")
    raw = c.messages.with_raw_response.count_tokens(model=ALIAS, messages=messages, system="Be brief.")
    assert json.loads(raw.text()) == {"input_tokens": estimate_tokens(prompt)}
    assert raw.parse().input_tokens == estimate_tokens(prompt)
    assert raw.headers["request-id"].startswith("req_")
    assert sim.stats()["requests_total"] == 0  # counting never calls the router
    with pytest.raises(anthropic.NotFoundError):
        c.messages.count_tokens(model="no-such-model", messages=HI)
    with pytest.raises(anthropic.AuthenticationError):
        client(gateway, "ctr_bad").messages.count_tokens(model=ALIAS, messages=HI)


# --- authentication and headers ----------------------------------------------------------------------------------------------


class HeaderLog:
    def __init__(self) -> None:
        self.sent: list[dict[str, str]] = []

    def __call__(self, request: Any) -> None:
        self.sent.append({k.lower(): v for k, v in request.headers.items()})


def logging_http_client(log: HeaderLog) -> Any:
    return anthropic.DefaultHttpxClient(event_hooks={"request": [log]})


def test_x_api_key_and_bearer_and_the_sdk_default(gateway: LiveGateway, key: IssuedKey) -> None:
    expected = "".join(answer(CHATML_HI, 64)[0])
    log = HeaderLog()

    # x-api-key only, no Authorization header at all.
    only_x = anthropic.Anthropic(
        base_url=gateway.url, api_key="unused", max_retries=0, timeout=20, http_client=logging_http_client(log),
        default_headers={"X-Api-Key": key.raw, "Authorization": anthropic.Omit()},
    )  # fmt: skip
    assert only_x.messages.create(model=ALIAS, max_tokens=64, messages=HI).content[0].text == expected
    assert log.sent[-1]["x-api-key"] == key.raw and "authorization" not in log.sent[-1]
    with only_x.messages.stream(model=ALIAS, max_tokens=64, messages=HI) as stream:
        assert stream.get_final_text() == expected
    assert only_x.messages.count_tokens(model=ALIAS, messages=HI).input_tokens == estimate_tokens(CHATML_HI)

    # Bearer only (auth_token=).
    bearer = anthropic.Anthropic(
        base_url=gateway.url, auth_token=key.raw, max_retries=0, timeout=20, http_client=logging_http_client(log)
    )
    assert bearer.messages.create(model=ALIAS, max_tokens=64, messages=HI).content[0].text == expected
    assert log.sent[-1]["authorization"] == f"Bearer {key.raw}" and "x-api-key" not in log.sent[-1]

    # Whatever the SDK sends for api_key= by default: x-api-key in the 0.x SDKs, Bearer in the installed 2.x; both are covered above.
    default = anthropic.Anthropic(
        base_url=gateway.url, api_key=key.raw, max_retries=0, timeout=20, http_client=logging_http_client(log)
    )
    assert default.messages.create(model=ALIAS, max_tokens=64, messages=HI).content[0].text == expected
    sent = log.sent[-1]
    assert sent.get("x-api-key") == key.raw or sent.get("authorization") == f"Bearer {key.raw}"
    assert sent["anthropic-version"]


@pytest.mark.parametrize("version", ["2023-06-01", "2023-01-01", None])
def test_anthropic_version_header_is_accepted_not_required(version: str | None, gateway: LiveGateway, key: IssuedKey) -> None:
    headers = {"x-api-key": key.raw}
    if version:
        headers["anthropic-version"] = version
    response = httpx.post(
        f"{gateway.url}/v1/messages", headers=headers, json={"model": ALIAS, "max_tokens": 64, "messages": HI}, timeout=20
    )
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == "".join(answer(CHATML_HI, 64)[0])
    c = client(gateway, key, default_headers={"anthropic-version": version or anthropic.Omit()})
    assert c.messages.create(model=ALIAS, max_tokens=64, messages=HI).content[0].text == "".join(answer(CHATML_HI, 64)[0])


# --- errors --------------------------------------------------------------------------------------------------------------------


def check_error(exc: anthropic.APIStatusError, status: int, error_type: str) -> dict[str, Any]:
    assert exc.status_code == status
    body = exc.body
    assert isinstance(body, dict)
    assert set(body) == {"type", "error", "request_id"}
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    rid = exc.response.headers["request-id"]
    assert rid.startswith("req_") and len(rid) == 28
    assert body["request_id"] == rid
    assert exc.response.headers["x-request-id"] == rid
    assert exc.request_id == rid
    assert exc.type == error_type
    return body


def test_bad_key_raises_authentication_error(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    bad = key.raw[:-2] + ("AA" if not key.raw.endswith("AA") else "BB")
    for c in (client(gateway, bad), client(gateway, "sk-ant-not-ours")):
        with pytest.raises(anthropic.AuthenticationError) as info:
            c.messages.create(model=ALIAS, max_tokens=64, messages=HI)
        body = check_error(info.value, 401, "authentication_error")
        assert body["error"]["message"] == "invalid or revoked API key"
        with pytest.raises(anthropic.AuthenticationError) as info:
            with c.messages.stream(model=ALIAS, max_tokens=64, messages=HI) as stream:
                stream.get_final_message()
        check_error(info.value, 401, "authentication_error")
    assert sim.stats()["requests_total"] == 0


def test_unknown_model_raises_not_found(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client(gateway, key).messages.create(model="no-such-model", max_tokens=64, messages=HI)
    body = check_error(info.value, 404, "not_found_error")
    assert body["error"]["message"] == "the model 'no-such-model' does not exist"
    assert sim.stats()["requests_total"] == 0


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
BAD_REQUESTS: dict[str, dict[str, Any]] = {
    "tools": {"tools": [{"name": "get_weather", "description": "w", "input_schema": {"type": "object", "properties": {}}}]},
    "tool_choice": {"tool_choice": {"type": "auto"}},
    "image_block": {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, IMAGE]}]},
    "thinking_enabled": {"thinking": {"type": "enabled", "budget_tokens": 1024}},
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_unsupported_features_raise_bad_request(case: str, gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    params: dict[str, Any] = {"model": ALIAS, "max_tokens": 2048, "messages": HI, **BAD_REQUESTS[case]}
    c = client(gateway, key)
    with pytest.raises(anthropic.BadRequestError) as info:
        c.messages.create(**params)
    check_error(info.value, 400, "invalid_request_error")
    with pytest.raises(anthropic.BadRequestError) as info:
        with c.messages.stream(**params) as stream:
            stream.get_final_message()
    check_error(info.value, 400, "invalid_request_error")
    assert sim.stats()["requests_total"] == 0


def test_missing_max_tokens_raises_bad_request(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    # The typed create() insists on max_tokens; the SDK's generic post() sends the body as it is.
    with pytest.raises(anthropic.BadRequestError) as info:
        client(gateway, key).post("/v1/messages", cast_to=anthropic.types.Message, body={"model": ALIAS, "messages": HI})
    body = check_error(info.value, 400, "invalid_request_error")
    assert body["error"]["message"] == "Missing required parameter: 'max_tokens'."
    assert sim.stats()["requests_total"] == 0


def test_suspended_organization_raises_permission_denied(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    from accounts.models import Organization

    c = client(gateway, key)
    c.messages.create(model=ALIAS, max_tokens=64, messages=HI)
    org = Organization.objects.get(pk=key.organization_id)
    org.status = Organization.Status.SUSPENDED
    org.save()
    wait_until_gateway_caught_up(gateway)
    before = sim.stats()["requests_total"]
    with pytest.raises(anthropic.PermissionDeniedError) as info:
        c.messages.create(model=ALIAS, max_tokens=64, messages=HI)
    body = check_error(info.value, 403, "permission_error")
    assert body["error"]["message"] == "this organization is suspended"
    with pytest.raises(anthropic.PermissionDeniedError):
        with c.messages.stream(model=ALIAS, max_tokens=64, messages=HI) as stream:
            stream.get_final_message()
    assert sim.stats()["requests_total"] == before


def test_every_session_down_is_529_overloaded(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    sim.configure(global_={"fail_status": 503})
    c = client(gateway, key)
    with pytest.raises(anthropic.APIStatusError) as info:
        c.messages.create(model=ALIAS, max_tokens=64, messages=HI)
    exc = info.value
    # Older SDKs raise InternalServerError for any 5xx, newer ones its subclass OverloadedError.
    assert isinstance(exc, anthropic.InternalServerError)
    if hasattr(anthropic, "OverloadedError"):
        assert isinstance(exc, anthropic.OverloadedError)
    body = check_error(exc, 529, "overloaded_error")
    assert body["error"]["message"] == "no upstream model server is available; try again shortly"
    row = usage_row(exc.request_id)
    assert (row.status, row.http_status, row.error_code) == ("error", 529, "upstream_unavailable")

    with pytest.raises(anthropic.InternalServerError) as info:
        with c.messages.stream(model=ALIAS, max_tokens=64, messages=HI) as stream:
            stream.get_final_message()
    check_error(info.value, 529, "overloaded_error")
    assert sim.stats()["requests"] == {"101": 2, "102": 2}  # both sessions tried, each time


def test_error_mid_stream_arrives_as_an_error_event(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    sim.configure(global_={"disconnect_after_tokens": 3})
    tokens, _ = answer(CHATML_HI, 64)
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        with client(gateway, key).messages.stream(model=ALIAS, max_tokens=64, messages=HI) as stream:
            rid = stream.response.headers["request-id"]
            for text in stream.text_stream:
                received.append(text)
    assert received == tokens[:3]
    exc = info.value
    # The router dropped the connection inside its chunked body: a transport failure, whichever HTTP client the gateway uses.
    assert exc.body == {"type": "error", "error": {"type": "api_error", "message": "the upstream model server failed mid-stream"}}
    assert exc.type == "api_error"
    assert exc.request_id == rid

    # The same over the wire: the events so far, then `event: error`, and nothing after it.
    with httpx.stream(
        "POST", f"{gateway.url}/v1/messages", timeout=20, headers={"x-api-key": key.raw},
        json={"model": ALIAS, "max_tokens": 64, "messages": HI, "stream": True},
    ) as response:  # fmt: skip
        assert response.status_code == 200
        raw_rid = response.headers["request-id"]
        events = read_sse(response)
    names = [name for name, _ in events]
    assert names == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * 3 + ["error"]
    assert json.loads(events[-1][1]) == exc.body

    for request_id in (rid, raw_rid):
        row = usage_row(request_id)
        assert (row.status, row.http_status, row.error_code, row.streamed) == ("error", 200, "upstream_error", True)
        assert row.completion_tokens == estimate_tokens("".join(tokens[:3]))
        assert row.prompt_tokens == estimate_tokens(CHATML_HI)  # no usage came from the router: the estimate


# --- a client that goes away ---------------------------------------------------------------------------------------------------


def test_client_disconnect_mid_stream_closes_the_upstream(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    sim.configure(global_={"token_delay_ms": 50})
    text, prompt, tokens = prompt_with(30)
    received: list[str] = []
    with httpx.stream(
        "POST", f"{gateway.url}/v1/messages", timeout=20, headers={"x-api-key": key.raw},
        json={"model": ALIAS, "max_tokens": 128, "messages": [{"role": "user", "content": text}], "stream": True},
    ) as response:  # fmt: skip
        assert response.status_code == 200
        rid = response.headers["request-id"]
        for line in response.iter_lines():
            if line.startswith("data: ") and '"text_delta"' in line:
                received.append(json.loads(line[len("data: ") :])["delta"]["text"])
                if len(received) == 3:
                    break
            stats = sim.stats()
            assert (stats["streams_open"], stats["streams_aborted_by_client"]) == (1, 0)  # running while we listen
        # Leaving iter_lines() early already drops the connection (httpx closes it); close() makes it explicit.
        response.close()
        closed_at = time.monotonic()
    wait_for(lambda: sim.stats()["streams_aborted_by_client"] == 1, timeout=1.0, interval=0.01)
    assert time.monotonic() - closed_at < 1.0
    stats = sim.stats()
    assert (stats["streams_open"], stats["streams_completed"]) == (0, 0)
    assert received == tokens[:3]

    row = usage_row(rid)
    assert (row.status, row.http_status, row.streamed, row.error_code) == ("cancelled", 200, True, "")
    assert row.completion_tokens == estimate_tokens("".join(received))
    assert row.prompt_tokens == estimate_tokens(prompt)

    # The server carries on serving.
    sim.configure(global_={"token_delay_ms": 0})
    message = client(gateway, key).messages.create(model=ALIAS, max_tokens=64, messages=HI)
    assert message.content[0].text == "".join(answer(CHATML_HI, 64)[0])


def test_client_disconnect_before_the_first_byte_is_recorded_as_cancelled(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    from usage.models import RequestLog

    sim.configure(global_={"first_byte_delay_ms": 3000})
    for stream in (True, False):
        before = sim.stats()["requests_aborted_by_client"]
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{gateway.url}/v1/messages",
                headers={"x-api-key": key.raw},
                json={"model": ALIAS, "max_tokens": 64, "messages": HI, "stream": stream},
                timeout=httpx.Timeout(20, read=0.5),
            )
        gave_up_at = time.monotonic()
        wait_for(lambda before=before: sim.stats()["requests_aborted_by_client"] == before + 1, timeout=1.0, interval=0.01)
        assert time.monotonic() - gave_up_at < 1.0
        rid = sim.stats()["last_request"]["client_reference"]
        # Nothing reached the client, but the request still leaves its usage event and its log line.
        row = usage_row(rid)
        assert (row.status, row.http_status, row.streamed, row.completion_tokens) == ("cancelled", 499, stream, 0)
        assert (row.organization_id, row.alias, row.route) == (key.organization_id, ALIAS, "messages")
        log_row = wait_for(lambda rid=rid: RequestLog.objects.filter(request_id=rid).first())
        assert (log_row.status, log_row.path, log_row.organization_id) == (499, "/v1/messages", key.organization_id)
    sim.configure(global_={"first_byte_delay_ms": 0})
    assert client(gateway, key).messages.create(model=ALIAS, max_tokens=64, messages=HI).content[0].text == "".join(
        answer(CHATML_HI, 64)[0]
    )


def test_a_client_hanging_up_right_after_message_stop_is_still_recorded(gateway: LiveGateway, key: IssuedKey) -> None:
    from usage.models import RequestLog

    tokens, _ = answer(CHATML_HI, 64)
    stop, before = two_word_stop(tokens)
    rids: dict[str, tuple[int, str]] = {}
    for i in range(12):
        # Half the streams are cut by a stop (the gateway then closes the router mid-body), half run to the end.
        body: dict[str, Any] = {"model": ALIAS, "max_tokens": 64, "messages": HI, "stream": True}
        if i % 2:
            body["stop_sequences"] = [stop]
        with httpx.stream(
            "POST", f"{gateway.url}/v1/messages", timeout=20, headers={"x-api-key": key.raw}, json=body
        ) as response:
            assert response.status_code == 200
            text = ""
            for line in response.iter_lines():
                if line.startswith("data: ") and '"text_delta"' in line:
                    text += json.loads(line[len("data: ") :])["delta"]["text"]
                if line == 'data: {"type":"message_stop"}':
                    break  # and hang up at once, as clients do once they have the whole answer
            rids[response.headers["request-id"]] = (i % 2, text)
    wait_for(lambda: UsageEvent.objects.filter(request_id__in=rids).count() == len(rids), timeout=5)
    wait_for(lambda: RequestLog.objects.filter(request_id__in=rids).count() == len(rids), timeout=5)
    for row in UsageEvent.objects.filter(request_id__in=rids):
        cut, text = rids[row.request_id]
        assert text == (before if cut else "".join(tokens))
        assert (row.status, row.http_status, row.streamed) == ("ok", 200, True)
        assert row.completion_tokens == (estimate_tokens(before) if cut else len(tokens))
    assert set(RequestLog.objects.filter(request_id__in=rids).values_list("status", flat=True)) == {200}
