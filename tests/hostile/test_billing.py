"""Attacks on limits and bills, thrown at a live daphne with PostgreSQL and Redis: a client who tries to pay less.

A prompt larger than the whole token budget, a stream cancelled just before its usage chunk, a stream that fails
after delivering tokens, token counting outside every limit, anonymous floods that write rows, and a database
outage that would hold rows in memory without bound.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from billing.models import Plan
from gateway.translate.common import estimate_tokens
from routerpools.models import ModelAlias
from routerpools.simulator import SimulatorServer
from tests.conftest import ALIAS, IssuedKey, LiveGateway, issue_key, wait_until_gateway_caught_up

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
