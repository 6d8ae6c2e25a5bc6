"""Raw HTTP against a live gateway: happy paths and what the router receives, streams, cancellation, /v1/models, /health."""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

import httpx
import pytest

from gateway.translate.common import estimate_tokens
from simulator import simulated_tokens
from tests.support.live import (
    ALIAS,
    ROUTER_KEY,
    SESSION_102_KEY,
    IssuedKey,
    LiveGateway,
    issue_key,
    wait_for,
    wait_until_gateway_caught_up,
)
from usage.models import RequestLog, UsageEvent

CHAT = "/v1/chat/completions"
ENVELOPE = "/v1/completions"
MESSAGES = "/v1/messages"
REQUEST_ID = re.compile(r"^req_[0-9a-f]{24}$")
CHATML_HI = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
HI = [{"role": "user", "content": "hi"}]
GATEWAY_UPSTREAM_TIMEOUT_S = 20  # PORTAL_UPSTREAM_TIMEOUT_S of the live gateway (tests/support/live.py)


@pytest.fixture
def key(gateway: LiveGateway) -> IssuedKey:
    return issue_key(slug="routing-org", plan="pro")


def post(gateway: LiveGateway, route: str, key: IssuedKey, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key.raw}"}
    return httpx.post(f"{gateway.url}{route}", json=body, headers=headers, timeout=kwargs.pop("timeout", 20), **kwargs)


def request_id_of(response: httpx.Response) -> str:
    rid = response.headers.get("x-request-id", "")
    assert REQUEST_ID.match(rid), f"x-request-id {rid!r}"
    return rid


def answer(prompt: str, max_tokens: int) -> tuple[list[str], str, str]:
    """The simulator's tokens, their text and finish reason for a prompt."""
    tokens, reason = simulated_tokens(prompt, max_tokens)
    return tokens, "".join(tokens), reason


def estimate(text: str) -> int:
    return estimate_tokens(text)  # the gateway's own estimate, where the router reports no usage


def simulator_prompt_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)  # what the simulator reports as prompt_tokens


def sse(response: httpx.Response) -> list[tuple[str | None, str]]:
    """(event name, data) of every event of a finished SSE body; comments skipped."""
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    text = response.text
    assert text.endswith("\n\n"), text[-200:]
    events = []
    for block in text.split("\n\n")[:-1]:
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
            else:
                assert line.startswith(":"), line
        if data:
            events.append((name, "\n".join(data)))
    return events


def data_only(response: httpx.Response) -> list[Any]:
    """The decoded data payloads of a data-only stream; `[DONE]` kept as the string."""
    out = []
    for name, data in sse(response):
        assert name is None
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def chat_text(chunks: list[Any]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if isinstance(c, dict) and c.get("choices"))


def usage_event(rid: str) -> UsageEvent:
    return wait_for(lambda: UsageEvent.objects.filter(request_id=rid).first())


def last_request(sim: Any) -> dict[str, Any]:
    return dict(sim.stats()["last_request"])


# --- the Cortensor envelope -----------------------------------------------------------------------------------------------


def test_envelope_non_stream_wraps_the_router_object(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    response = post(gateway, ENVELOPE, key, {"model": ALIAS, "prompt": "hi", "max_tokens": 12})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    rid = request_id_of(response)
    body = response.json()
    tokens, text, reason = answer("hi", 12)
    assert reason == "length"
    data = body["data"]
    assert body == {"request_id": rid, "status": "ok", "model": ALIAS, "router_pool": ALIAS, "data": data, "error": None}
    # The router's completion object, as received.
    assert set(data) == {"id", "object", "created", "model", "task_id", "choices", "usage"}
    assert data["id"].startswith("cmpl-")
    assert (data["object"], data["model"]) == ("text_completion", "default")
    assert isinstance(data["created"], int) and isinstance(data["task_id"], int)
    assert data["choices"] == [{"index": 0, "text": text, "finish_reason": "length", "logprobs": None}]
    assert data["usage"] == {"prompt_tokens": 1, "completion_tokens": 12, "total_tokens": 13}
    # The envelope's prompt goes to the router as is, not rendered as chat.
    sent = last_request(sim)
    assert sent["prompt"] == "hi"
    assert (sent["stream"], sent["max_tokens"], sent["client_reference"]) == (False, 12, rid)
    event = usage_event(rid)
    assert (event.status, event.http_status, event.route, event.alias, event.pool) == ("ok", 200, "completions", ALIAS, ALIAS)
    assert (event.prompt_tokens, event.completion_tokens, event.total_tokens, event.estimated) == (1, 12, 13, False)
    assert (event.streamed, event.organization_id, event.api_key_id) == (False, key.organization_id, key.key_id)
    assert event.session_id in (101, 102)
    assert event.endpoint_url == sim.base_url
    assert len(tokens) == 12


def _router_chunks(tokens: list[str], reason: str, prompt: str) -> list[dict[str, Any]]:
    """What the simulator streams for these tokens, without the per-call id, task_id and created."""
    chunks: list[dict[str, Any]] = [
        {"object": "text_completion", "choices": [{"index": 0, "text": t, "finish_reason": None}], "model": "default"}
        for t in tokens
    ]
    chunks.append(
        {
            "object": "text_completion",
            "choices": [{"index": 0, "text": "", "finish_reason": reason}],
            "model": "default",
            "usage": {
                "prompt_tokens": simulator_prompt_tokens(prompt),
                "completion_tokens": len(tokens),
                "total_tokens": simulator_prompt_tokens(prompt) + len(tokens),
            },
        }
    )
    return chunks


def test_envelope_stream_relays_router_chunks_one_to_one(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    response = post(gateway, ENVELOPE, key, {"model": ALIAS, "prompt": "hi", "max_tokens": 7, "stream": True})
    assert response.status_code == 200, response.text
    rid = request_id_of(response)
    payloads = data_only(response)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    tokens, _, reason = answer("hi", 7)
    ids = {(c.pop("id"), c.pop("task_id"), c.pop("created")) for c in chunks}
    assert len(ids) == 1  # one router call, one miner
    assert chunks == _router_chunks(tokens, reason, "hi")
    sent = last_request(sim)
    assert (sent["prompt"], sent["stream"], sent["accept"], sent["client_reference"]) == ("hi", True, "text/event-stream", rid)
    event = usage_event(rid)
    assert (event.status, event.streamed, event.completion_tokens, event.estimated) == ("ok", True, 7, False)


def test_envelope_without_model_uses_the_default_model(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    for body in (
        {"prompt": "hi", "max_tokens": 5},
        {"model": None, "prompt": "hi", "max_tokens": 5},
        {"model": "", "prompt": "hi", "max_tokens": 5},
    ):
        response = post(gateway, ENVELOPE, key, body)
        assert response.status_code == 200, response.text
        out = response.json()
        assert (out["status"], out["model"], out["router_pool"]) == ("ok", ALIAS, ALIAS)
        assert out["data"]["choices"][0]["text"] == answer("hi", 5)[1]
        assert usage_event(request_id_of(response)).alias == ALIAS
    response = post(gateway, ENVELOPE, key, {"prompt": "hi", "max_tokens": 5, "stream": True})
    assert response.status_code == 200
    payloads = data_only(response)
    assert payloads[-1] == "[DONE]"
    assert "".join(c["choices"][0]["text"] for c in payloads[:-1]) == answer("hi", 5)[1]


# --- /v1/models ----------------------------------------------------------------------------------------------------------


def test_models_list_and_retrieve(gateway: LiveGateway, key: IssuedKey) -> None:
    from routerpools.models import ModelAlias

    created = int(ModelAlias.objects.get(alias=ALIAS).created_at.timestamp())
    # OpenAI's four fields, then the alias's name, its cap (what a request without max_tokens gets) and its
    # context window (not stated for an alias synced from the environment), and its price on the key's plan
    # (OpenRouter's `pricing`, USD per token: the list price every alias gets when it appears, $0.10/$0.40 per million).
    entry = {
        "id": ALIAS,
        "object": "model",
        "created": created,
        "owned_by": "cortensor",
        "display_name": ALIAS,
        "max_output_tokens": 4096,
        "context_length": None,
        "pricing": {"prompt": "0.0000001", "completion": "0.0000004"},
    }
    auth = {"authorization": f"Bearer {key.raw}"}

    response = httpx.get(f"{gateway.url}/v1/models", headers=auth, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    request_id_of(response)
    assert response.json() == {"object": "list", "data": [entry]}

    response = httpx.get(f"{gateway.url}/v1/models/{ALIAS}", headers=auth, timeout=10)
    assert response.status_code == 200
    request_id_of(response)
    assert response.json() == entry

    response = httpx.get(f"{gateway.url}/v1/models/no-such-model", headers=auth, timeout=10)
    assert response.status_code == 404
    request_id_of(response)
    assert response.json() == {
        "error": {
            "message": "the model 'no-such-model' does not exist",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }

    for path in ("/v1/models", f"/v1/models/{ALIAS}", "/v1/models/no-such-model"):
        for headers in ({}, {"authorization": "Bearer ctr_nope"}):
            response = httpx.get(f"{gateway.url}{path}", headers=headers, timeout=10)
            assert response.status_code == 401
            request_id_of(response)
            error = response.json()["error"]
            assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_api_key", None)


def test_models_list_follows_aliases_added_and_disabled(gateway: LiveGateway, key: IssuedKey) -> None:
    from routerpools.models import ModelAlias

    pool = ModelAlias.objects.get(alias=ALIAS).pool
    extra = ModelAlias.objects.create(alias="another-model", pool=pool)
    wait_until_gateway_caught_up(gateway)
    auth = {"authorization": f"Bearer {key.raw}"}
    listed = httpx.get(f"{gateway.url}/v1/models", headers=auth, timeout=10).json()
    assert [m["id"] for m in listed["data"]] == ["another-model", ALIAS]
    extra.enabled = False
    extra.save()
    wait_until_gateway_caught_up(gateway)
    listed = httpx.get(f"{gateway.url}/v1/models", headers=auth, timeout=10).json()
    assert [m["id"] for m in listed["data"]] == [ALIAS]
    assert httpx.get(f"{gateway.url}/v1/models/another-model", headers=auth, timeout=10).status_code == 404


# --- what the router receives ------------------------------------------------------------------------------------------------


def test_router_gets_the_chatml_prompt_our_request_id_and_the_capped_max_tokens(
    gateway: LiveGateway, key: IssuedKey, sim: Any
) -> None:
    from routerpools.models import ModelAlias

    alias = ModelAlias.objects.get(alias=ALIAS)
    alias.max_tokens_cap = 10
    alias.save()
    wait_until_gateway_caught_up(gateway)

    response = post(
        gateway,
        CHAT,
        key,
        {
            "model": ALIAS,
            "messages": HI,
            "max_tokens": 500,
            "temperature": 0.5,
            "top_p": 0.9,
            "presence_penalty": 0.25,
            "frequency_penalty": -0.5,
            "user": "u-1",
            "seed": 7,
        },
    )
    assert response.status_code == 200, response.text
    rid = request_id_of(response)
    sent = last_request(sim)
    session = sent.pop("session_id")
    assert session in ("101", "102")
    assert sent.pop("accept") != "text/event-stream"
    assert sent == {
        "prompt": CHATML_HI,
        "stream": False,
        "timeout": GATEWAY_UPSTREAM_TIMEOUT_S,
        "max_tokens": 10,
        "temperature": 0.5,
        "top_p": 0.9,
        "presence_penalty": 0.25,
        "frequency_penalty": -0.5,
        "client_reference": rid,
        "authorization": True,
    }
    tokens, text, reason = answer(CHATML_HI, 10)
    out = response.json()
    assert out["id"] == f"chatcmpl-{rid[4:]}"
    assert out["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": reason,
        }
    ]
    assert reason == "length"
    assert out["usage"] == {
        "prompt_tokens": simulator_prompt_tokens(CHATML_HI),
        "completion_tokens": 10,
        "total_tokens": simulator_prompt_tokens(CHATML_HI) + 10,
    }

    # max_completion_tokens is capped the same way; a request under the cap is sent as asked.
    post(gateway, CHAT, key, {"model": ALIAS, "messages": HI, "max_completion_tokens": 11})
    assert last_request(sim)["max_tokens"] == 10
    post(gateway, CHAT, key, {"model": ALIAS, "messages": HI, "max_tokens": 3})
    assert last_request(sim)["max_tokens"] == 3
    # The Anthropic surface: the same cap, its own fields.
    response = post(
        gateway, MESSAGES, key, {"model": ALIAS, "max_tokens": 500, "messages": HI, "top_k": 5, "stop_sequences": ["zzz"]}
    )
    assert response.status_code == 200, response.text
    sent = last_request(sim)
    assert (sent["prompt"], sent["max_tokens"], sent["top_k"], sent["stop"]) == (CHATML_HI, 10, 5, ["zzz"])
    assert sent["client_reference"] == request_id_of(response)
    assert response.json()["content"] == [{"type": "text", "text": text}]


def test_router_gets_every_message_rendered_as_chatml(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "hi"},
    ]
    response = post(gateway, CHAT, key, {"model": ALIAS, "messages": messages, "max_tokens": 4})
    assert response.status_code == 200, response.text
    prompt = (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\none\ntwo<|im_end|>\n"
        "<|im_start|>assistant\nok<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert last_request(sim)["prompt"] == prompt
    assert response.json()["choices"][0]["message"]["content"] == answer(prompt, 4)[1]

    response = post(
        gateway,
        MESSAGES,
        key,
        {"model": ALIAS, "max_tokens": 4, "system": [{"type": "text", "text": "be brief"}], "messages": HI},
    )
    assert response.status_code == 200, response.text
    prompt = "<|im_start|>system\nbe brief<|im_end|>\n" + CHATML_HI
    assert last_request(sim)["prompt"] == prompt
    assert response.json()["content"] == [{"type": "text", "text": answer(prompt, 4)[1]}]


def test_each_session_gets_its_own_auth_key(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    # The simulator answers 401 unless session 102 gets its own key and 101 the alias key.
    rids: list[str] = []

    def both_sessions_answered() -> bool:
        response = post(gateway, CHAT, key, {"model": ALIAS, "messages": HI, "max_tokens": 2})
        assert response.status_code == 200, response.text
        rids.append(request_id_of(response))
        requests = sim.stats()["requests"]
        return requests.get("101", 0) >= 1 and requests.get("102", 0) >= 1

    wait_for(both_sessions_answered, timeout=10, interval=0.02)
    stats = sim.stats()
    assert stats["statuses"] == {"200": len(rids)}
    assert stats["requests_total"] == len(rids)
    wait_for(lambda: UsageEvent.objects.filter(request_id__in=rids).count() == len(rids))
    assert set(UsageEvent.objects.filter(request_id__in=rids).values_list("session_id", flat=True)) == {101, 102}

    # And the keys really are checked: with 102's key rotated on the router, 102 fails while 101 still answers.
    sim.configure(sessions={"102": {"auth_key": "rotated"}})
    seen: set[int] = set()

    def both_outcomes_seen() -> bool:
        response = post(gateway, CHAT, key, {"model": ALIAS, "messages": HI, "max_tokens": 2})
        seen.add(response.status_code)
        return seen >= {200, 502}

    wait_for(both_outcomes_seen, timeout=10, interval=0.02)
    assert seen == {200, 502}
    assert ROUTER_KEY != SESSION_102_KEY


# --- redundant sessions, missing usage, truncation -----------------------------------------------------------------------------


def test_interleaved_miners_keep_the_first_miner_only(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    sim.configure(global_={"interleave_miners": True})
    _, text, reason = answer(CHATML_HI, 64)
    _, other, _ = answer(CHATML_HI + "\x00second-miner", 64)
    assert text != other

    response = post(gateway, CHAT, key, {"model": ALIAS, "messages": HI, "max_tokens": 64})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == text
    assert response.json()["choices"][0]["finish_reason"] == reason

    response = post(
        gateway,
        CHAT,
        key,
        {"model": ALIAS, "messages": HI, "max_tokens": 64, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert response.status_code == 200, response.text
    chunks = data_only(response)
    assert chunks[-1] == "[DONE]"
    assert chat_text(chunks) == text
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1] if c["choices"] and c["choices"][0]["finish_reason"]] == [
        reason
    ]
    assert chunks[-2]["usage"]["completion_tokens"] == len(answer(CHATML_HI, 64)[0])

    response = post(gateway, MESSAGES, key, {"model": ALIAS, "messages": HI, "max_tokens": 64, "stream": True})
    deltas = [json.loads(d) for name, d in sse(response) if name == "content_block_delta"]
    assert "".join(d["delta"]["text"] for d in deltas) == text

    # The envelope relays only the locked miner's chunks, and returns the router's object with both choices.
    response = post(gateway, ENVELOPE, key, {"model": ALIAS, "prompt": "hi", "max_tokens": 64, "stream": True})
    payloads = data_only(response)
    assert payloads[-1] == "[DONE]"
    assert len({c["task_id"] for c in payloads[:-1]}) == 1
    assert "".join(c["choices"][0]["text"] for c in payloads[:-1]) == answer("hi", 64)[1]
    response = post(gateway, ENVELOPE, key, {"model": ALIAS, "prompt": "hi", "max_tokens": 64})
    assert [c["text"] for c in response.json()["data"]["choices"]] == [answer("hi", 64)[1], answer("hi\x00second-miner", 64)[1]]


def test_router_without_usage_is_estimated(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    sim.configure(global_={"omit_usage": True})
    _, text, _ = answer(CHATML_HI, 64)
    expected = {
        "prompt_tokens": estimate(CHATML_HI),
        "completion_tokens": estimate(text),
        "total_tokens": estimate(CHATML_HI) + estimate(text),
    }
    assert expected["completion_tokens"] != len(answer(CHATML_HI, 64)[0])  # not the router's count

    response = post(gateway, CHAT, key, {"model": ALIAS, "messages": HI, "max_tokens": 64})
    assert response.status_code == 200, response.text
    assert response.json()["usage"] == expected
    event = usage_event(request_id_of(response))
    assert (event.estimated, event.prompt_tokens, event.completion_tokens, event.total_tokens) == (
        True,
        expected["prompt_tokens"],
        expected["completion_tokens"],
        expected["total_tokens"],
    )

    response = post(
        gateway,
        CHAT,
        key,
        {"model": ALIAS, "messages": HI, "max_tokens": 64, "stream": True, "stream_options": {"include_usage": True}},
    )
    chunks = data_only(response)
    assert chat_text(chunks) == text
    # The final usage chunk also says what the answer cost: the alias's list price (PORTAL_DEFAULT_*_PRICE_PER_MILLION,
    # given when it appeared) on the key's plan, rounded up to the micro-unit, as its usage row and debit.
    from billing.services import default_price, request_cost_micros

    input_price, output_price = default_price()
    cost = request_cost_micros(
        prompt_tokens=expected["prompt_tokens"],
        completion_tokens=expected["completion_tokens"],
        input_micros_per_million=input_price,
        output_micros_per_million=output_price,
    )
    assert cost > 0
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"] == {**expected, "cost_micros": cost}
    event = usage_event(request_id_of(response))
    assert (event.estimated, event.completion_tokens, event.streamed, event.status) == (
        True,
        expected["completion_tokens"],
        True,
        "ok",
    )

    # With usage from the router, its counts win and nothing is estimated.
    sim.configure(global_={"omit_usage": False})
    response = post(gateway, CHAT, key, {"model": ALIAS, "messages": HI, "max_tokens": 64})
    assert response.json()["usage"]["completion_tokens"] == len(answer(CHATML_HI, 64)[0])
    assert usage_event(request_id_of(response)).estimated is False


def test_truncated_stream_ends_with_an_error_event(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    sim.configure(global_={"disconnect_after_tokens": 3})
    tokens, _, _ = answer(CHATML_HI, 64)
    delivered = "".join(tokens[:3])

    response = post(
        gateway,
        CHAT,
        key,
        {"model": ALIAS, "messages": HI, "max_tokens": 64, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert response.status_code == 200
    rid = request_id_of(response)
    chunks = data_only(response)
    assert "[DONE]" not in chunks
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]] == tokens[:3]
    error = chunks[-1]
    assert set(error) == {"error"}
    assert (error["error"]["type"], error["error"]["param"], error["error"]["code"]) == ("api_error", None, "upstream_error")
    assert error["error"]["message"] in (
        "the upstream model server ended the stream early",
        "the upstream model server failed mid-stream",
    )
    assert sim.stats()["streams_truncated_by_server"] == 1
    event = usage_event(rid)
    assert (event.status, event.error_code, event.http_status, event.streamed) == ("error", "upstream_error", 200, True)
    assert (event.completion_tokens, event.estimated) == (estimate(delivered), True)
    assert event.prompt_tokens == estimate(CHATML_HI)
    assert wait_for(lambda: RequestLog.objects.filter(request_id=rid).first()).status == 200

    response = post(gateway, MESSAGES, key, {"model": ALIAS, "messages": HI, "max_tokens": 64, "stream": True})
    events = sse(response)
    names = [name for name, _ in events]
    assert names == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * 3 + ["error"]
    error = json.loads(events[-1][1])
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert usage_event(request_id_of(response)).status == "error"

    response = post(gateway, ENVELOPE, key, {"model": ALIAS, "prompt": "hi", "max_tokens": 64, "stream": True})
    rid = request_id_of(response)
    payloads = data_only(response)
    assert "[DONE]" not in payloads
    assert [c["choices"][0]["text"] for c in payloads[:-1]] == answer("hi", 64)[0][:3]
    error = payloads[-1]
    assert (error["request_id"], error["status"], error["data"], error["model"], error["router_pool"]) == (
        rid,
        "failed",
        None,
        ALIAS,
        ALIAS,
    )
    assert error["error"]["code"] == "upstream_error"


def _long_prompt() -> tuple[str, list[str]]:
    """A chat message whose simulated answer is long (30+ tokens), for a slow stream that outlives the test's reads."""
    for i in range(100):
        content = f"tell me a long story {i}"
        tokens, _ = simulated_tokens(f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n", 64)
        if len(tokens) >= 30:
            return content, tokens
    raise AssertionError("no long answer found")


def test_client_disconnect_closes_the_upstream_and_records_cancelled(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    sim.configure(global_={"token_delay_ms": 100})
    content, tokens = _long_prompt()
    body = {"model": ALIAS, "messages": [{"role": "user", "content": content}], "max_tokens": 64, "stream": True}
    received = ""
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", f"{gateway.url}{CHAT}", json=body, headers={"authorization": f"Bearer {key.raw}"}) as response:
            assert response.status_code == 200
            rid = request_id_of(response)
            for line in response.iter_lines():
                if line.startswith("data: "):
                    received += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                    if received.count(" ") >= 3:
                        break
    closed_at = time.monotonic()
    assert received and tokens[0].startswith(received[:3])
    wait_for(lambda: sim.stats()["streams_aborted_by_client"] == 1, timeout=1.0, interval=0.02)
    assert time.monotonic() - closed_at < 1.2
    assert sim.stats()["streams_completed"] == 0
    event = usage_event(rid)
    assert (event.status, event.streamed, event.http_status, event.estimated) == ("cancelled", True, 200, True)
    assert estimate(received) <= event.completion_tokens < estimate("".join(tokens))
    assert event.completion_tokens > 0
    # The gateway serves on.
    sim.configure(global_={"token_delay_ms": 0})
    response = post(gateway, CHAT, key, {"model": ALIAS, "messages": HI, "max_tokens": 5, "stream": True})
    assert response.status_code == 200
    assert chat_text(data_only(response)) == answer(CHATML_HI, 5)[1]
    response = post(gateway, CHAT, key, {"model": ALIAS, "messages": HI, "max_tokens": 5})
    assert response.json()["choices"][0]["message"]["content"] == answer(CHATML_HI, 5)[1]


# --- stop sequences --------------------------------------------------------------------------------------------------------


def _stop_word() -> tuple[str, str, str]:
    """A word of the answer to "hi" (not its first), the full text, and the text cut before the word."""
    tokens, text, reason = answer(CHATML_HI, 64)
    assert reason == "stop"
    for token in tokens[3:]:
        word = token.strip()
        if len(word) >= 5 and text.find(word) > 0:  # a word whose first occurrence is not at the very start
            cut = text[: text.find(word)]
            return word, text, cut
    raise AssertionError("no usable stop word")


def test_stop_sequence_cuts_the_answer(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    word, text, cut = _stop_word()
    assert word in text and not cut.endswith(word)

    response = post(gateway, CHAT, key, {"model": ALIAS, "messages": HI, "max_tokens": 64, "stop": [word]})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (cut, "stop")
    assert last_request(sim)["stop"] == [word]
    assert response.json()["usage"]["completion_tokens"] == len(answer(CHATML_HI, 64)[0])  # the router's count still wins

    response = post(gateway, CHAT, key, {"model": ALIAS, "messages": HI, "max_tokens": 64, "stop": word, "stream": True})
    chunks = data_only(response)
    assert chunks[-1] == "[DONE]"
    assert chat_text(chunks) == cut
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1] if c["choices"][0]["finish_reason"]] == ["stop"]
    assert usage_event(request_id_of(response)).status == "ok"

    response = post(gateway, MESSAGES, key, {"model": ALIAS, "messages": HI, "max_tokens": 64, "stop_sequences": [word]})
    out = response.json()
    assert (out["content"], out["stop_reason"], out["stop_sequence"]) == ([{"type": "text", "text": cut}], "stop_sequence", word)

    response = post(
        gateway, MESSAGES, key, {"model": ALIAS, "messages": HI, "max_tokens": 64, "stop_sequences": [word], "stream": True}
    )
    events = sse(response)
    assert "".join(json.loads(d)["delta"]["text"] for name, d in events if name == "content_block_delta") == cut
    delta = json.loads(next(d for name, d in events if name == "message_delta"))
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": word}
    assert events[-1][0] == "message_stop"


# --- /health ------------------------------------------------------------------------------------------------------------------


def test_health_reports_services_and_pool_sizes_without_secrets(gateway: LiveGateway, sim: Any) -> None:
    response = httpx.get(f"{gateway.url}/health", headers=gateway.operator_headers, timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["models"] == [ALIAS]
    assert body["checks"] == {"database": "ok", "cache": "ok", "pool": "ok", "state": "ok"}
    assert body["pools"] == [
        {"alias": ALIAS, "pool": ALIAS, "draining": False, "endpoints": 1, "sessions": 2, "upstreams": 2, "healthy": 2}
    ]
    assert isinstance(body["usage_queue_depth"], int)
    assert isinstance(body["cache_epoch"], int)
    text = response.text
    for secret in (sim.base_url, "127.0.0.1", "http://", "/api/", ROUTER_KEY, SESSION_102_KEY):
        assert secret not in text, secret


def test_health_tells_anyone_the_status_and_the_models_and_nothing_more(gateway: LiveGateway) -> None:
    for headers in ({}, {"authorization": "Bearer wrong-token-of-some-length"}, {"authorization": b"Bearer \xe9"}):
        response = httpx.get(f"{gateway.url}/health", headers=headers, timeout=10)
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "models": [ALIAS]}
