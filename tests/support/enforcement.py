"""Helpers of the enforcement tests (tests/enforcement/): requests on every surface, refusals, windows, plans."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import httpx

from billing.models import Plan
from gateway.translate.common import estimate_tokens
from routerpools.models import ModelAlias
from simulator import estimate_prompt_tokens, simulated_tokens
from tests.support.live import (
    ALIAS,
    IssuedKey,
    LiveGateway,
    issue_key,
    wait_until_gateway_caught_up,
)

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
ENVELOPE = "/v1/completions"
SURFACES = (CHAT, MESSAGES, ENVELOPE)
OTHER_ALIAS = "oss-120b"  # a staff-made alias on the same simulator pool
BOTH_ALIASES = sorted([ALIAS, OTHER_ALIAS])  # /v1/models lists by name
DEAD_REDIS = "redis://127.0.0.1:1/0"

DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(\d+)s$")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


# --- helpers -----------------------------------------------------------------------------------------


def chatml(text: str) -> str:
    """The prompt the gateway renders for one user message on a chatml alias (chat and messages alike)."""
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def router_prompt(path: str, text: str) -> str:
    return text if path == ENVELOPE else chatml(text)


def body_for(path: str, *, text: str = "hi", model: str = ALIAS, max_tokens: int = 16, stream: bool = False) -> dict[str, Any]:
    if path == ENVELOPE:
        return {"model": model, "prompt": text, "max_tokens": max_tokens, "stream": stream}
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
        if path == CHAT:
            body["stream_options"] = {"include_usage": True}
    return body


def headers_for(key: IssuedKey | str, path: str) -> dict[str, str]:
    raw = key if isinstance(key, str) else key.raw
    if path == MESSAGES:
        return {"x-api-key": raw, "anthropic-version": "2023-06-01"}
    return {"authorization": f"Bearer {raw}"}


# One client for the sequential requests: making an httpx client costs more than a request through the gateway.
HTTP = httpx.Client(timeout=20)


def send(gw: LiveGateway, key: IssuedKey | str, path: str = CHAT, **kwargs: Any) -> httpx.Response:
    """One request, body read to the end (streams included)."""
    return HTTP.post(f"{gw.url}{path}", json=body_for(path, **kwargs), headers=headers_for(key, path))


def models(gw: LiveGateway, key: IssuedKey) -> list[str]:
    response = HTTP.get(f"{gw.url}/v1/models", headers=headers_for(key, CHAT))
    assert response.status_code == 200, response.text
    return [m["id"] for m in response.json()["data"]]


async def _burst(requests: list[tuple[LiveGateway, IssuedKey, str, dict[str, Any]]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(requests) + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one(gw: LiveGateway, key: IssuedKey, path: str, kwargs: dict[str, Any]) -> httpx.Response:
            response = await client.post(f"{gw.url}{path}", json=body_for(path, **kwargs), headers=headers_for(key, path))
            await response.aread()
            return response

        return list(await asyncio.gather(*(one(*r) for r in requests)))


def burst(requests: list[tuple[LiveGateway, IssuedKey, str, dict[str, Any]]]) -> list[httpx.Response]:
    """All requests at once, each on its own connection."""
    return asyncio.run(_burst(requests))


def statuses(responses: list[httpx.Response]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for response in responses:
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
    return counts


# What each refusal looks like on each surface: (status, OpenAI type, OpenAI code), (status, Anthropic type),
# (status, envelope code).
ERRORS: dict[str, dict[str, tuple[Any, ...]]] = {
    "invalid_key": {
        CHAT: (401, "invalid_request_error", "invalid_api_key"),
        MESSAGES: (401, "authentication_error"),
        ENVELOPE: (401, "invalid_api_key"),
    },
    "suspended": {
        CHAT: (403, "permission_error", "account_suspended"),
        MESSAGES: (403, "permission_error"),
        ENVELOPE: (403, "permission_denied"),
    },
    "model_not_allowed": {
        CHAT: (403, "permission_error", "model_not_allowed"),
        MESSAGES: (403, "permission_error"),
        ENVELOPE: (403, "permission_denied"),
    },
    "model_not_found": {
        CHAT: (404, "invalid_request_error", "model_not_found"),
        MESSAGES: (404, "not_found_error"),
        ENVELOPE: (404, "model_not_found"),
    },
    "rate_limited": {
        CHAT: (429, "rate_limit_error", "rate_limit_exceeded"),
        MESSAGES: (429, "rate_limit_error"),
        ENVELOPE: (429, "rate_limited"),
    },
    "quota": {
        CHAT: (429, "insufficient_quota", "insufficient_quota"),
        MESSAGES: (429, "rate_limit_error"),
        ENVELOPE: (429, "quota_exceeded"),
    },
    "insufficient_balance": {
        CHAT: (402, "insufficient_quota", "insufficient_quota"),
        MESSAGES: (402, "billing_error"),
        ENVELOPE: (402, "insufficient_quota"),
    },
    "spend_cap": {
        CHAT: (429, "insufficient_quota", "spend_cap_reached"),
        MESSAGES: (429, "rate_limit_error"),
        ENVELOPE: (429, "spend_cap_reached"),
    },
    "model_not_priced": {
        CHAT: (403, "permission_error", "model_not_priced"),
        MESSAGES: (403, "permission_error"),
        ENVELOPE: (403, "permission_denied"),
    },
    "draining": {
        CHAT: (503, "api_error", "upstream_unavailable"),
        MESSAGES: (529, "overloaded_error"),
        ENVELOPE: (503, "upstream_unavailable"),
    },
    "limits_unavailable": {
        CHAT: (503, "api_error", "limits_unavailable"),
        MESSAGES: (503, "api_error"),
        ENVELOPE: (503, "limits_unavailable"),
    },
}


def error_kind(response: httpx.Response, path: str) -> tuple[Any, ...]:
    """The refusal in the ERRORS notation, after checking the route's error shape and the request id."""
    rid = response.headers.get("x-request-id", "")
    assert rid.startswith("req_"), response.headers
    body = response.json()
    if path == MESSAGES:
        assert set(body) == {"type", "error", "request_id"} and body["type"] == "error", body
        assert body["request_id"] == rid == response.headers["request-id"]
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        return (response.status_code, body["error"]["type"])
    if path == ENVELOPE:
        assert body["status"] == "failed" and body["data"] is None and body["request_id"] == rid, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        return (response.status_code, body["error"]["code"])
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return (response.status_code, body["error"]["type"], body["error"]["code"])


def expect_error(response: httpx.Response, path: str, kind: str) -> str:
    """Assert the response is the `kind` refusal in `path`'s shape; returns its message."""
    assert error_kind(response, path) == ERRORS[kind][path], response.text
    body = response.json()
    return body["error"]["message"]


def error_details(response: httpx.Response) -> dict[str, Any]:
    """The envelope's error details (the other shapes carry the same facts in the message)."""
    return response.json()["error"]["details"]


def window_room(length: int, *, need: float = 10.0, offset: float = 0.0) -> None:
    """If fewer than `need` seconds are left in the current fixed window, sleep into the next one."""
    left = length - ((time.time() - offset) % length)
    if left < need:
        time.sleep(left + 0.05)


def minute_room(need: float = 10.0) -> None:
    window_room(60, need=need)


def seconds_left(length: int, offset: float = 0.0) -> float:
    return length - ((time.time() - offset) % length)


def make_plan(
    *,
    rpm: int = 1000,
    tpm: int | None = None,
    concurrent: int | None = None,
    window_requests: int | None = None,
    window_seconds: int = 3600,
    weekly: int | None = None,
    aliases: list[str] | None = None,
    prepaid: bool = False,
    monthly_price_micros: int = 0,
) -> Plan:
    slug = f"t{uuid.uuid4().hex[:12]}"
    plan = Plan.objects.create(
        slug=slug,
        name=f"test {slug}",
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
        concurrent_requests=concurrent,
        window_requests=window_requests,
        window_seconds=window_seconds,
        weekly_requests=weekly,
        prepaid=prepaid,
        monthly_price_micros=monthly_price_micros,
    )
    if aliases:
        plan.allowed_aliases.set(ModelAlias.objects.filter(alias__in=aliases))
    return plan


def new_org_key(plan: Plan | str, *gateways: LiveGateway) -> IssuedKey:
    """A key of a new organization on `plan`; waits until the gateways know the plan."""
    key = issue_key(slug=f"org-{uuid.uuid4().hex[:10]}", plan=plan if isinstance(plan, str) else plan.slug)
    for gw in gateways:
        wait_until_gateway_caught_up(gw)
    return key


def second_key(first: IssuedKey) -> IssuedKey:
    return issue_key(slug=first.organization_slug, name="second key")


def ratelimit_headers(response: httpx.Response, path: str) -> dict[str, str]:
    prefix = "anthropic-ratelimit-" if path == MESSAGES else "x-ratelimit-"
    return {k: v for k, v in response.headers.items() if k.startswith(prefix)}


def remaining_requests(response: httpx.Response, path: str = CHAT) -> int:
    name = "anthropic-ratelimit-requests-remaining" if path == MESSAGES else "x-ratelimit-remaining-requests"
    return int(response.headers[name])


def remaining_tokens(response: httpx.Response, path: str = CHAT) -> int:
    name = "anthropic-ratelimit-tokens-remaining" if path == MESSAGES else "x-ratelimit-remaining-tokens"
    return int(response.headers[name])


def duration_seconds(value: str) -> int:
    match = DURATION.match(value)
    assert match, value
    hours, minutes, secs = (int(g) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + secs


def sim_answer(prompt: str, max_tokens: int) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) the simulator reports for this router call."""
    tokens, _ = simulated_tokens(prompt, max_tokens)
    return estimate_prompt_tokens(prompt), len(tokens)


def reservation(prompt: str, max_tokens: int) -> int:
    """What the gateway reserves: its prompt estimate plus max_tokens (within the tokens per minute limit)."""
    return estimate_tokens(prompt) + max_tokens
