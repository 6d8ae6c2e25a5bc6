"""Attacks on limits and bills, thrown at a live daphne with PostgreSQL and Redis: a client who tries to pay less.

A prompt larger than the whole token budget, a stream cancelled just before its usage chunk, a stream that fails
after delivering tokens, token counting outside every limit, anonymous floods that write rows, and a database
outage that would hold rows in memory without bound.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from billing.models import Plan
from gateway.translate.common import estimate_tokens
from routerpools.models import ModelAlias, RouterPool
from routerpools.simulator import SimulatorServer
from tests.conftest import ALIAS, IssuedKey, LiveGateway, issue_key, wait_for, wait_until_gateway_caught_up

CHAT, MESSAGES, ENVELOPE, COUNT = "/v1/chat/completions", "/v1/messages", "/v1/completions", "/v1/messages/count_tokens"
HTTP = httpx.Client(timeout=30)


def make_plan(*, rpm: int = 1000, tpm: int | None = None, concurrent: int | None = None, window_requests: int | None = None,
              weekly: int | None = None, aliases: list[str] | None = None) -> Plan:  # fmt: skip
    slug = f"h{uuid.uuid4().hex[:12]}"
    plan = Plan.objects.create(
        slug=slug, name=f"hostile {slug}", requests_per_minute=rpm, tokens_per_minute=tpm, concurrent_requests=concurrent,
        window_requests=window_requests, window_seconds=3 * 3600, weekly_requests=weekly,
    )  # fmt: skip
    if aliases is not None:
        plan.allowed_aliases.set(ModelAlias.objects.filter(alias__in=aliases))
    return plan


def org_key(plan: Plan, gateway: LiveGateway) -> IssuedKey:
    key = issue_key(slug=f"h-{uuid.uuid4().hex[:10]}", plan=plan.slug)
    wait_until_gateway_caught_up(gateway)
    return key


def headers_for(key: IssuedKey, path: str) -> dict[str, str]:
    return {"x-api-key": key.raw} if path in (MESSAGES, COUNT) else {"authorization": f"Bearer {key.raw}"}


def body_for(path: str, *, text: str = "hi", max_tokens: int = 16, model: str = ALIAS, stream: bool = False) -> dict[str, Any]:
    if path == ENVELOPE:
        return {"model": model, "prompt": text, "max_tokens": max_tokens, "stream": stream}
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if path != COUNT:
        body.update(max_tokens=max_tokens, stream=stream)
    return body


def post(gateway: LiveGateway, key: IssuedKey, path: str, **kwargs: Any) -> httpx.Response:
    return HTTP.post(f"{gateway.url}{path}", json=body_for(path, **kwargs), headers=headers_for(key, path))


def refusal(response: httpx.Response, path: str) -> tuple[int, str, str]:
    """(status, the error's type or code in the route's own shape, its message)."""
    body = response.json()
    if path in (MESSAGES, COUNT):
        assert body["type"] == "error" and body["request_id"] == response.headers["request-id"], body
        return response.status_code, body["error"]["type"], body["error"]["message"]
    if path == ENVELOPE:
        assert body["status"] == "failed" and body["data"] is None, body
        return response.status_code, body["error"]["code"], body["error"]["message"]
    return response.status_code, body["error"]["type"], body["error"]["message"]


def wait_for_minute_room(need: float = 10.0) -> None:
    """Sleep into the next minute if fewer than `need` seconds are left: per-minute counts must not reset mid-test."""
    left = 60 - time.time() % 60
    if left < need:
        time.sleep(left + 0.05)


RATE_LIMITED = {CHAT: "rate_limit_error", MESSAGES: "rate_limit_error", ENVELOPE: "rate_limited", COUNT: "rate_limit_error"}


# --- tokens per minute ----------------------------------------------------------------------------------------------


def test_a_prompt_over_the_whole_token_budget_is_refused_not_run_once_a_minute(
    gateway: LiveGateway, sim: SimulatorServer
) -> None:
    tpm = 300
    key = org_key(make_plan(tpm=tpm), gateway)
    huge = "tokens " * 400  # an estimate far above 300, with max_tokens as small as it gets
    assert estimate_tokens(huge) > tpm
    for path in (CHAT, MESSAGES, ENVELOPE):
        response = post(gateway, key, path, text=huge, max_tokens=1)
        status, kind, message = refusal(response, path)
        assert (status, kind) == (429, RATE_LIMITED[path]), response.text
        assert f"tokens per minute limit of {tpm}" in message and "shorten the prompt" in message, message
        assert int(response.headers["retry-after"]) >= 1
    assert sim.stats()["requests_total"] == 0  # refused before any router saw it

    # Only max_tokens is capped at the budget: a short prompt asking for a long answer still runs.
    ok = post(gateway, key, CHAT, text="hi", max_tokens=4000)
    assert ok.status_code == 200, ok.text
    assert int(ok.headers["x-ratelimit-remaining-tokens"]) == 0  # the whole minute reserved for it, no more


# --- counting tokens --------------------------------------------------------------------------------------------------


@pytest.fixture
def other_alias(gateway: LiveGateway) -> ModelAlias:
    return ModelAlias.objects.create(alias="premium-only", pool=RouterPool.objects.get(name=ALIAS))


def test_count_tokens_refuses_a_model_the_plan_does_not_include_as_messages_does(
    gateway: LiveGateway, other_alias: ModelAlias
) -> None:
    key = org_key(make_plan(aliases=[other_alias.alias]), gateway)
    for path in (COUNT, MESSAGES):
        response = post(gateway, key, path)
        status, kind, message = refusal(response, path)
        assert (status, kind) == (403, "permission_error"), response.text
        assert message == f"your plan does not include the model '{ALIAS}'"
    allowed = post(gateway, key, COUNT, model=other_alias.alias)
    assert allowed.status_code == 200 and allowed.json()["input_tokens"] >= 1


def test_count_tokens_is_rate_limited_like_a_request_but_spends_no_allowance(gateway: LiveGateway, sim: SimulatorServer) -> None:
    wait_for_minute_room()
    key = org_key(make_plan(rpm=3, weekly=1), gateway)
    counted = [post(gateway, key, COUNT) for _ in range(3)]
    assert [r.status_code for r in counted] == [200, 200, 200]
    # The tightest of the minute (2, 1, 0 left) and the week (1 left, untouched by counting).
    assert [int(r.headers["anthropic-ratelimit-requests-remaining"]) for r in counted] == [1, 1, 0]
    over = post(gateway, key, COUNT)
    status, kind, message = refusal(over, COUNT)
    assert (status, kind) == (429, "rate_limit_error") and "requests per minute limit of 3" in message, message
    assert int(over.headers["retry-after"]) >= 1
    # The minute's requests are shared with completions: counting used them up.
    assert refusal(post(gateway, key, MESSAGES), MESSAGES)[:2] == (429, "rate_limit_error")
    assert sim.stats()["requests_total"] == 0

    # The weekly allowance of one completion is still whole: counting did not spend it.
    unlimited_rpm = org_key(make_plan(rpm=1000, weekly=1), gateway)
    assert [post(gateway, unlimited_rpm, COUNT).status_code for _ in range(5)] == [200] * 5
    assert post(gateway, unlimited_rpm, MESSAGES).status_code == 200
    assert refusal(post(gateway, unlimited_rpm, MESSAGES), MESSAGES)[:2] == (429, "rate_limit_error")  # now it is spent


def test_count_tokens_takes_a_concurrency_slot_and_gives_it_back_at_once(gateway: LiveGateway, sim: SimulatorServer) -> None:
    key = org_key(make_plan(concurrent=1), gateway)
    assert [post(gateway, key, COUNT).status_code for _ in range(3)] == [200, 200, 200]  # released every time
    sim.configure(token_delay_ms=300)  # a stream that holds the only slot for seconds after its headers came
    with HTTP.stream("POST", f"{gateway.url}{CHAT}", json=body_for(CHAT, stream=True), headers=headers_for(key, CHAT)) as held:
        assert held.status_code == 200
        busy = post(gateway, key, COUNT)
        status, kind, message = refusal(busy, COUNT)
        assert (status, kind) == (429, "rate_limit_error") and "concurrent requests limit of 1" in message, message
    sim.configure(token_delay_ms=0)
    wait_for(lambda: sim.stats()["streams_open"] == 0)  # the gateway closed the upstream: the slot is free
    assert post(gateway, key, COUNT).status_code == 200
