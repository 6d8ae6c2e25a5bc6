"""End-to-end enforcement through live daphne gateways: entitlements, rate limits, allowances, headers, billing.

Every test drives real HTTP against `gateway` (the session's daphne process on the test database and the
test Redis) and, where the issue asks for "every process", a second daphne sharing both. Plans are made
per test through the ORM (as the admin would), so numbers are small and counts exact. Tests that count
within a fixed window first make sure the window has room left (`window_room`), so none straddles a boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis
from django.db.models import Sum
from django.utils import timezone

from accounts.models import Organization
from apikeys.models import ApiKey
from billing.models import LedgerEntry, ModelAccessOverride, ModelPrice, Plan
from billing.selectors import organization_balance
from gateway.limits import MONDAY_OFFSET_S, WEEK_S, format_duration, week_start
from gateway.translate.common import estimate_tokens
from routerpools.models import ModelAlias, RouterPool
from simulator import SimulatorServer, estimate_prompt_tokens, simulated_tokens
from tests.conftest import (
    ALIAS,
    IssuedKey,
    LiveGateway,
    free_port,
    issue_key,
    live_gateway_env,
    needs_shared_redis,
    wait_for,
    wait_until_gateway_caught_up,
    wait_until_usage_written,
)
from usage.models import RequestLog, UsageEvent

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


@pytest.fixture
def other_alias(gateway: LiveGateway) -> ModelAlias:
    pool = RouterPool.objects.get(name=ALIAS)
    return ModelAlias.objects.create(alias=OTHER_ALIAS, pool=pool)


@pytest.fixture(scope="module")
def second_process(live_server_process: LiveGateway) -> Iterator[LiveGateway]:
    """Another daphne on the same database, Redis and rate-limit prefix: a second gateway host."""
    other = LiveGateway(env=dict(live_server_process.env)).start()
    yield other
    other.stop()


@pytest.fixture
def both(gateway: LiveGateway, second_process: LiveGateway) -> Iterator[tuple[LiveGateway, LiveGateway]]:
    wait_until_gateway_caught_up(second_process)
    yield gateway, second_process
    time.sleep(0.06)
    wait_until_usage_written(second_process)


@pytest.fixture
def own_gateways(sim: SimulatorServer) -> Iterator[list[LiveGateway]]:
    started: list[LiveGateway] = []
    yield started
    for gw in started:
        gw.stop()


# --- entitlements -------------------------------------------------------------------------------------


def test_plan_allow_list_and_organization_overrides_decide_every_surface_and_the_model_list(
    gateway: LiveGateway, other_alias: ModelAlias
) -> None:
    narrow = make_plan(aliases=[ALIAS])
    key = new_org_key(narrow, gateway)
    org = Organization.objects.get(pk=key.organization_id)

    def outcome() -> dict[tuple[str, str], int]:
        return {
            (path, alias): send(gateway, key, path, model=alias).status_code
            for path in SURFACES
            for alias in (ALIAS, OTHER_ALIAS)
        }

    # The plan lists oss-20b only: 3 admitted, 3 refused with model_not_allowed in each route's shape.
    for path in SURFACES:
        assert send(gateway, key, path).status_code == 200
        refused = send(gateway, key, path, model=OTHER_ALIAS)
        message = expect_error(refused, path, "model_not_allowed")
        assert OTHER_ALIAS in message
        if path == CHAT:
            assert refused.json()["error"]["param"] == "model"
    assert models(gateway, key) == [ALIAS]
    retrieve = HTTP.get(f"{gateway.url}/v1/models/{OTHER_ALIAS}", headers=headers_for(key, CHAT), timeout=10)
    assert retrieve.status_code == 404
    assert HTTP.get(f"{gateway.url}/v1/models/{ALIAS}", headers=headers_for(key, CHAT), timeout=10).json()["id"] == ALIAS

    # A grant for this organization adds the alias its plan lacks.
    grant = ModelAccessOverride.objects.create(organization=org, alias=other_alias, allowed=True)
    wait_until_gateway_caught_up(gateway)
    assert outcome() == {(p, a): 200 for p in SURFACES for a in (ALIAS, OTHER_ALIAS)}
    assert models(gateway, key) == BOTH_ALIASES

    # A withhold takes away an alias the plan has; the grant stays.
    ModelAccessOverride.objects.create(organization=org, alias=ModelAlias.objects.get(alias=ALIAS), allowed=False)
    wait_until_gateway_caught_up(gateway)
    result = outcome()
    assert result == {(p, a): (403 if a == ALIAS else 200) for p in SURFACES for a in (ALIAS, OTHER_ALIAS)}
    assert models(gateway, key) == [OTHER_ALIAS]

    # An override belongs to its organization only: another organization on the same plan keeps the plan's list.
    neighbour = new_org_key(narrow, gateway)
    assert models(gateway, neighbour) == [ALIAS]
    assert send(gateway, neighbour, CHAT, model=OTHER_ALIAS).status_code == 403

    # Turning the grant into a withhold (an admin edit, via save()) removes the last alias.
    grant.allowed = False
    grant.save()
    wait_until_gateway_caught_up(gateway)
    assert set(outcome().values()) == {403}
    assert models(gateway, key) == []


def test_a_plan_with_an_empty_list_allows_every_alias_minus_withheld_ones(gateway: LiveGateway, other_alias: ModelAlias) -> None:
    open_plan = make_plan()
    key = new_org_key(open_plan, gateway)
    assert models(gateway, key) == BOTH_ALIASES
    assert [send(gateway, key, p, model=a).status_code for p in SURFACES for a in (ALIAS, OTHER_ALIAS)] == [200] * 6

    ModelAccessOverride.objects.create(organization_id=key.organization_id, alias=other_alias, allowed=False)
    wait_until_gateway_caught_up(gateway)
    assert models(gateway, key) == [ALIAS]
    for path in SURFACES:
        assert send(gateway, key, path).status_code == 200
        expect_error(send(gateway, key, path, model=OTHER_ALIAS), path, "model_not_allowed")


def test_a_suspended_organization_gets_403_and_an_expired_key_401_on_every_surface(gateway: LiveGateway) -> None:
    key = new_org_key("pro", gateway)
    expired = new_org_key("pro", gateway)
    for path in SURFACES:
        assert send(gateway, key, path).status_code == 200
        assert send(gateway, expired, path).status_code == 200

    org = Organization.objects.get(pk=key.organization_id)
    org.status = Organization.Status.SUSPENDED
    org.save()
    row = ApiKey.objects.get(pk=expired.key_id)
    row.expires_at = timezone.now() - timedelta(seconds=1)
    row.save()
    wait_until_gateway_caught_up(gateway)

    for path in SURFACES:
        message = expect_error(send(gateway, key, path), path, "suspended")
        assert "suspended" in message
        message = expect_error(send(gateway, expired, path), path, "invalid_key")
        assert message == "invalid or revoked API key"
        assert expired.raw not in send(gateway, expired, path).text
    suspended_models = HTTP.get(f"{gateway.url}/v1/models", headers=headers_for(key, CHAT), timeout=10)
    assert error_kind(suspended_models, CHAT) == ERRORS["suspended"][CHAT]


def _flip_within_a_second(gateways: tuple[LiveGateway, ...], check: Any) -> float:
    """Seconds until `check(gw)` holds on every gateway; fails the test after one second."""
    started = time.monotonic()
    pending = list(gateways)

    def all_done() -> bool:
        pending[:] = [gw for gw in pending if not check(gw)]
        return not pending

    wait_for(all_done, timeout=1.0, interval=0.01)
    return time.monotonic() - started


def test_staff_changes_are_obeyed_within_a_second_in_every_process(
    both: tuple[LiveGateway, LiveGateway], other_alias: ModelAlias
) -> None:
    key = new_org_key("pro", *both)
    for gw in both:
        assert [send(gw, key, p).status_code for p in SURFACES] == [200, 200, 200]
        assert models(gw, key) == BOTH_ALIASES

    def refused_as(kind: str, model: str = ALIAS) -> Any:
        def check(gw: LiveGateway) -> bool:
            for path in SURFACES:
                response = send(gw, key, path, model=model)
                if response.status_code != ERRORS[kind][path][0]:
                    return False
                assert error_kind(response, path) == ERRORS[kind][path], response.text
            return True

        return check

    def served(model: str = ALIAS) -> Any:
        return lambda gw: all(send(gw, key, p, model=model).status_code == 200 for p in SURFACES)

    # Suspending the organization (the admin saves the row).
    org = Organization.objects.get(pk=key.organization_id)
    org.status = Organization.Status.SUSPENDED
    org.save()
    _flip_within_a_second(both, refused_as("suspended"))
    org.status = Organization.Status.ACTIVE
    org.save()
    _flip_within_a_second(both, served())

    # Disabling an alias: gone from routing (404) and from the model list; the other alias still serves.
    alias = ModelAlias.objects.get(alias=ALIAS)
    alias.enabled = False
    alias.save()
    _flip_within_a_second(both, refused_as("model_not_found"))
    for gw in both:
        assert models(gw, key) == [OTHER_ALIAS]
        assert send(gw, key, CHAT, model=OTHER_ALIAS).status_code == 200
    alias.enabled = True
    alias.save()
    _flip_within_a_second(both, served())

    # Draining the pool: no new requests on either alias it serves (503, Anthropic's 529 overloaded).
    pool = RouterPool.objects.get(name=ALIAS)
    pool.draining = True
    pool.save()
    _flip_within_a_second(both, refused_as("draining"))
    _flip_within_a_second(both, refused_as("draining", model=OTHER_ALIAS))
    pool.draining = False
    pool.save()
    _flip_within_a_second(both, served())

    # Narrowing the organization's plan (a many-to-many edit) and withholding by override.
    plan = Plan.objects.get(slug="pro")
    plan.allowed_aliases.add(alias)
    _flip_within_a_second(both, refused_as("model_not_allowed", model=OTHER_ALIAS))
    for gw in both:
        assert models(gw, key) == [ALIAS]
    plan.allowed_aliases.clear()
    _flip_within_a_second(both, served(OTHER_ALIAS))
    ModelAccessOverride.objects.create(organization=org, alias=alias, allowed=False)
    _flip_within_a_second(both, refused_as("model_not_allowed"))

    # Expiring the key.
    row = ApiKey.objects.get(pk=key.key_id)
    row.expires_at = timezone.now() - timedelta(seconds=1)
    row.save()
    _flip_within_a_second(both, refused_as("invalid_key", model=OTHER_ALIAS))


def test_staff_changing_a_plans_limits_or_an_organizations_plan_is_obeyed_within_a_second_in_every_process(
    both: tuple[LiveGateway, LiveGateway],
) -> None:
    minute_room()
    roomy = make_plan(rpm=100)
    key = new_org_key(roomy, *both)
    first, second = both
    assert [send(gw, key).status_code for gw in (first, second, first)] == [200, 200, 200]

    # Lowering the plan's rpm to what was already used: both processes refuse at once, naming the new limit.
    roomy.requests_per_minute = 3
    roomy.save()

    def refuses_at_three(gw: LiveGateway) -> bool:
        response = send(gw, key, ENVELOPE)
        return response.status_code == 429 and error_details(response)["limit_value"] == 3

    _flip_within_a_second(both, refuses_at_three)

    # Moving the organization to another plan (the admin saves the organization): its limits apply.
    weekly = make_plan(weekly=5)
    org = Organization.objects.get(pk=key.organization_id)
    org.plan = weekly
    org.save()

    def on_weekly_plan(gw: LiveGateway) -> bool:
        response = send(gw, key)
        return response.status_code == 200 and response.headers["x-ratelimit-limit-requests"] == "5"

    _flip_within_a_second(both, on_weekly_plan)


# --- rate limits per key and per organization ----------------------------------------------------------


def test_requests_per_minute_per_key_then_per_organization(gateway: LiveGateway) -> None:
    minute_room()
    plan = make_plan(rpm=5)
    key = new_org_key(plan, gateway)
    sibling = second_key(key)
    stranger = new_org_key(plan, gateway)

    # Five admitted across the three surfaces, remaining counting down exactly.
    paths = [CHAT, MESSAGES, ENVELOPE, CHAT, MESSAGES]
    responses = [send(gateway, key, p, text=f"rpm {i}") for i, p in enumerate(paths)]
    assert [r.status_code for r in responses] == [200] * 5
    assert [remaining_requests(r, p) for r, p in zip(responses, paths, strict=True)] == [4, 3, 2, 1, 0]

    # The sixth is refused on every surface, by the key's limit.
    for path in SURFACES:
        refused = send(gateway, key, path)
        message = expect_error(refused, path, "rate_limited")
        wait = int(refused.headers["retry-after"])
        assert 1 <= wait <= 60
        # 60 s (refused on the minute boundary) reads 1m0s, as OpenAI writes it
        assert message == f"API key requests per minute limit of 5 reached; resets in {format_duration(wait)}", message
        if path == ENVELOPE:
            assert error_details(refused) == {
                "limit": "requests_per_minute",
                "scope": "key",
                "limit_value": 5,
                "reset_seconds": wait,
            }
        assert remaining_requests(refused, path) == 0

    # The organization's second key finds the organization's budget spent.
    refused = send(gateway, sibling, ENVELOPE)
    expect_error(refused, ENVELOPE, "rate_limited")
    assert error_details(refused)["scope"] == "organization"
    assert refused.json()["error"]["message"].startswith("organization requests per minute limit of 5 reached; resets in ")

    # Another organization on the same plan has its own five.
    others = [send(gateway, stranger, CHAT, text=f"other {i}").status_code for i in range(6)]
    assert others == [200] * 5 + [429]


def test_organization_budget_is_shared_by_its_keys(gateway: LiveGateway) -> None:
    minute_room()
    plan = make_plan(rpm=6)
    first = new_org_key(plan, gateway)
    second = second_key(first)
    results = burst(
        [(gateway, first, CHAT, {"text": f"a{i}"}) for i in range(4)]
        + [(gateway, second, CHAT, {"text": f"b{i}"}) for i in range(4)]
    )
    assert statuses(results) == {200: 6, 429: 2}
    for response in results:
        if response.status_code == 429:
            assert "requests per minute limit of 6 reached" in expect_error(response, CHAT, "rate_limited")


def test_concurrent_in_flight_requests_per_key_and_organization(gateway: LiveGateway, sim: SimulatorServer) -> None:
    plan = make_plan(concurrent=2)
    key = new_org_key(plan, gateway)
    sibling = second_key(key)
    sim.configure(token_delay_ms=300)  # a streamed answer of 8..12 tokens stays open for 2.4..3.6 s

    with httpx.Client(timeout=20) as client:

        def open_stream(who: IssuedKey, path: str, text: str) -> httpx.Response:
            request = client.build_request(
                "POST",
                f"{gateway.url}{path}",
                json=body_for(path, text=text, max_tokens=12, stream=True),
                headers=headers_for(who, path),
            )
            return client.send(request, stream=True)

        held = [open_stream(key, CHAT, "hold one"), open_stream(key, MESSAGES, "hold two")]
        assert [r.status_code for r in held] == [200, 200]

        # Both slots in use: a third request from the key, on any surface, is refused at once.
        for path in SURFACES:
            started = time.monotonic()
            refused = send(gateway, key, path)
            assert time.monotonic() - started < 1.0
            message = expect_error(refused, path, "rate_limited")
            assert (
                message == "API key concurrent requests limit of 2 reached; retry when one of the 2 in-flight requests finishes"
            )
            assert refused.headers["retry-after"] == "1"
        refused = send(gateway, sibling, ENVELOPE)
        expect_error(refused, ENVELOPE, "rate_limited")
        assert error_details(refused) == {
            "limit": "concurrent_requests",
            "scope": "organization",
            "limit_value": 2,
            "reset_seconds": 1,
        }

        # The client hanging up on a stream frees its slot; a non-streamed request (instant) then passes.
        held[0].close()
        wait_for(lambda: send(gateway, sibling, CHAT).status_code == 200, timeout=3)
        third = open_stream(sibling, ENVELOPE, "hold three")
        assert third.status_code == 200
        expect_error(send(gateway, key, CHAT), CHAT, "rate_limited")

        # Streams that run to their end free their slots too.
        for response in (held[1], third):
            text = response.read().decode()
            assert "message_stop" in text or "[DONE]" in text
            response.close()
    sim.configure(token_delay_ms=0)
    wait_for(lambda: send(gateway, key, CHAT).status_code == 200, timeout=3)
    assert statuses(burst([(gateway, key, CHAT, {"text": f"c{i}"}) for i in range(2)])) == {200: 2}


def test_a_client_that_hangs_up_frees_its_slot(gateway: LiveGateway, sim: SimulatorServer) -> None:
    plan = make_plan(concurrent=1)
    key = new_org_key(plan, gateway)
    sim.configure(first_byte_delay_ms=3000)  # the router takes 3 s before its first byte
    for path, stream in ((CHAT, False), (MESSAGES, True), (ENVELOPE, False)):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{gateway.url}{path}", json=body_for(path, stream=stream), headers=headers_for(key, path), timeout=0.5)
        # The gateway notices the hang-up, cancels the upstream call and releases the slot, long before 3 s.
        started = time.monotonic()
        sim.configure(first_byte_delay_ms=0)
        wait_for(lambda: send(gateway, key, CHAT).status_code == 200, timeout=2, interval=0.02)
        assert time.monotonic() - started < 2
        sim.configure(first_byte_delay_ms=3000)
    sim.configure(first_byte_delay_ms=0)


def test_the_short_window_cap_is_a_quota_on_every_surface(gateway: LiveGateway) -> None:
    window_room(3600)
    plan = make_plan(window_requests=3, window_seconds=3600, weekly=1000)
    key = new_org_key(plan, gateway)
    ok = [send(gateway, key, p) for p in SURFACES]
    assert [r.status_code for r in ok] == [200] * 3
    # The allowance is tighter than rpm, so the request headers report it.
    assert [remaining_requests(r, p) for r, p in zip(ok, SURFACES, strict=True)] == [2, 1, 0]
    assert ok[0].headers["x-ratelimit-limit-requests"] == "3"
    reset = duration_seconds(ok[0].headers["x-ratelimit-reset-requests"])
    assert abs(reset - seconds_left(3600)) <= 2

    for path in SURFACES:
        refused = send(gateway, key, path)
        message = expect_error(refused, path, "quota")
        wait = int(refused.headers["retry-after"])
        assert abs(wait - seconds_left(3600)) <= 2
        assert message.startswith("API key 1-hour request allowance of 3 reached; resets in "), message
        assert re.search(r"\(at \d{4}-\d\d-\d\dT\d\d:00:00Z\)$", message), message
        if path == ENVELOPE:
            assert error_details(refused) == {"limit": "window_requests", "scope": "key", "limit_value": 3, "reset_seconds": wait}


def test_the_weekly_allowance_is_a_quota_that_resets_monday(gateway: LiveGateway) -> None:
    window_room(WEEK_S, offset=MONDAY_OFFSET_S)
    plan = make_plan(weekly=4)
    key = new_org_key(plan, gateway)
    sibling = second_key(key)
    ok = [send(gateway, key, CHAT, text=f"w{i}") for i in range(3)] + [send(gateway, sibling, MESSAGES)]
    assert [r.status_code for r in ok] == [200] * 4
    assert [remaining_requests(r) for r in ok[:3]] == [3, 2, 1]
    assert remaining_requests(ok[3], MESSAGES) == 0  # the organization's weekly count, seen from the second key
    monday = datetime.fromtimestamp(week_start(time.time()) + WEEK_S, tz=UTC)
    assert ok[3].headers["anthropic-ratelimit-requests-reset"] == monday.strftime("%Y-%m-%dT00:00:00Z")
    assert abs(duration_seconds(ok[0].headers["x-ratelimit-reset-requests"]) - seconds_left(WEEK_S, MONDAY_OFFSET_S)) <= 2

    for who, path in ((key, CHAT), (key, MESSAGES), (sibling, ENVELOPE)):
        refused = send(gateway, who, path)
        message = expect_error(refused, path, "quota")
        assert "weekly request allowance of 4 reached" in message
        assert message.endswith(f"(at {monday.strftime('%Y-%m-%dT00:00:00Z')})")
        assert abs(int(refused.headers["retry-after"]) - seconds_left(WEEK_S, MONDAY_OFFSET_S)) <= 2


def test_the_free_plan_reports_its_own_numbers(gateway: LiveGateway) -> None:
    minute_room()
    key = new_org_key("free", gateway)
    response = send(gateway, key, CHAT, max_tokens=10)
    assert response.status_code == 200
    assert response.headers["x-ratelimit-limit-requests"] == "20"
    assert response.headers["x-ratelimit-remaining-requests"] == "19"
    assert response.headers["x-ratelimit-limit-tokens"] == "20000"
    assert remaining_tokens(response) == 20000 - reservation(chatml("hi"), 10)


# --- two processes sharing Redis ---------------------------------------------------------------------------


@needs_shared_redis
@pytest.mark.parametrize("limit,per_process", [(7, 6), (13, 10)])
def test_two_processes_sharing_redis_admit_exactly_the_limit(
    both: tuple[LiveGateway, LiveGateway], limit: int, per_process: int
) -> None:
    minute_room()
    plan = make_plan(rpm=limit)
    key = new_org_key(plan, *both)
    first, second = both
    requests = []
    for i in range(per_process):
        requests.append((first, key, SURFACES[i % 3], {"text": f"p1 {i}"}))
        requests.append((second, key, SURFACES[(i + 1) % 3], {"text": f"p2 {i}"}))
    results = burst(requests)
    assert statuses(results) == {200: limit, 429: 2 * per_process - limit}
    admitted_remaining = sorted(
        remaining_requests(r, p) for r, (_, _, p, _) in zip(results, requests, strict=True) if r.status_code == 200
    )
    assert admitted_remaining == list(range(limit))  # each admission saw a distinct count: one shared counter
    for response, (_, _, path, _) in zip(results, requests, strict=True):
        if response.status_code == 429:
            assert f"requests per minute limit of {limit} reached" in expect_error(response, path, "rate_limited")
            assert int(response.headers["retry-after"]) >= 1
    # Both processes still refuse afterwards.
    assert [send(gw, key).status_code for gw in both] == [429, 429]


@needs_shared_redis
def test_two_processes_share_the_concurrency_slots(both: tuple[LiveGateway, LiveGateway], sim: SimulatorServer) -> None:
    plan = make_plan(concurrent=3)
    key = new_org_key(plan, *both)
    first, second = both
    sim.configure(token_delay_ms=200)
    with httpx.Client(timeout=20) as client:
        held = []
        for gw, text in ((first, "a"), (second, "b"), (first, "c")):
            request = client.build_request(
                "POST",
                f"{gw.url}{CHAT}",
                json=body_for(CHAT, text=text, max_tokens=40, stream=True),
                headers=headers_for(key, CHAT),
            )
            held.append(client.send(request, stream=True))
        assert [r.status_code for r in held] == [200, 200, 200]
        for gw in both:
            assert "concurrent requests limit of 3 reached" in expect_error(send(gw, key, CHAT), CHAT, "rate_limited")
        held[1].close()  # hung up on the second process: the slot frees for both
        wait_for(lambda: send(first, key, CHAT).status_code == 200, timeout=3)
        for response in held:
            response.close()


# --- token reservations -------------------------------------------------------------------------------------


def test_a_burst_cannot_overshoot_tokens_per_minute_and_settling_frees_the_budget(
    gateway: LiveGateway, sim: SimulatorServer
) -> None:
    minute_room()
    text, max_tokens = "count my tokens", 100
    prompt = chatml(text)
    reserve = reservation(prompt, max_tokens)
    prompt_tokens, completion_tokens = sim_answer(prompt, max_tokens)
    actual = prompt_tokens + completion_tokens
    assert actual < reserve
    tpm = 3 * reserve + reserve // 2  # room for three reservations, not four
    plan = make_plan(tpm=tpm)
    key = new_org_key(plan, gateway)

    # Eight at once, each held a second upstream, so nothing settles during the burst: exactly three fit.
    sim.configure(first_byte_delay_ms=1000)
    paths = [CHAT, MESSAGES] * 4
    results = burst([(gateway, key, p, {"text": text, "max_tokens": max_tokens}) for p in paths])
    assert statuses(results) == {200: 3, 429: 5}
    admitted = [(r, p) for r, p in zip(results, paths, strict=True) if r.status_code == 200]
    assert sorted(remaining_tokens(r, p) for r, p in admitted) == [tpm - 3 * reserve, tpm - 2 * reserve, tpm - reserve]
    for response, path in zip(results, paths, strict=True):
        if response.status_code == 429:
            message = expect_error(response, path, "rate_limited")
            assert message.startswith(f"API key tokens per minute limit of {tpm} reached; resets in "), message
            assert remaining_tokens(response, path) == tpm - 3 * reserve
        else:
            usage = response.json()["usage"]
            got = (
                (usage["prompt_tokens"], usage["completion_tokens"])
                if path == CHAT
                else (usage["input_tokens"], usage["output_tokens"])
            )
            assert got == (prompt_tokens, completion_tokens)
    sim.configure(first_byte_delay_ms=0)

    # Settled from real usage: the three used 3 * actual, so a fourth reservation fits now.
    assert tpm - 3 * reserve < reserve <= tpm - 3 * actual
    fourth = send(gateway, key, CHAT, text=text, max_tokens=max_tokens)
    assert fourth.status_code == 200
    assert remaining_tokens(fourth) == tpm - 3 * actual - reserve
    used = 4 * actual

    # A second held burst gets exactly what is left of the minute, no more.
    sim.configure(first_byte_delay_ms=1000)
    fits = (tpm - used) // reserve
    results = burst([(gateway, key, ENVELOPE, {"text": prompt, "max_tokens": max_tokens}) for _ in range(fits + 3)])
    assert statuses(results) == {200: fits, 429: 3}
    sim.configure(first_byte_delay_ms=0)
    used += fits * actual

    # Another key of the organization sees the organization's settled count (its own key count is zero).
    sibling = second_key(key)
    response = send(gateway, sibling, CHAT, text=text, max_tokens=max_tokens)
    if tpm - used >= reserve:
        assert response.status_code == 200
        assert remaining_tokens(response) == tpm - used - reserve
    else:
        expect_error(response, CHAT, "rate_limited")
        assert error_details(send(gateway, sibling, ENVELOPE, text=prompt, max_tokens=max_tokens))["scope"] == "organization"


def test_a_reservation_is_capped_at_the_plans_tokens_per_minute(gateway: LiveGateway, sim: SimulatorServer) -> None:
    minute_room()
    tpm = 300
    plan = make_plan(tpm=tpm)
    key = new_org_key(plan, gateway)
    text, max_tokens = "a long answer please", 2000  # estimate + 2000 is far above the whole minute's budget
    prompt_tokens, completion_tokens = sim_answer(chatml(text), max_tokens)

    sim.configure(first_byte_delay_ms=800)
    results = burst([(gateway, key, CHAT, {"text": text, "max_tokens": max_tokens}) for _ in range(3)])
    sim.configure(first_byte_delay_ms=0)
    # The whole budget is reserved by one request (it runs), the others wait for the minute.
    assert statuses(results) == {200: 1, 429: 2}
    ok = next(r for r in results if r.status_code == 200)
    assert remaining_tokens(ok) == 0
    for response in results:
        if response.status_code == 429:
            assert f"tokens per minute limit of {tpm} reached" in expect_error(response, CHAT, "rate_limited")

    # Settled: what it really used is gone from the budget, the rest is usable by a small request.
    small = send(gateway, key, CHAT, text="hi", max_tokens=10)
    assert small.status_code == 200
    assert remaining_tokens(small) == tpm - (prompt_tokens + completion_tokens) - reservation(chatml("hi"), 10)


# --- headers ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_every_completion_response_carries_the_rate_limit_headers(gateway: LiveGateway, stream: bool) -> None:
    minute_room()
    rpm, tpm = 50, 50_000
    plan = make_plan(rpm=rpm, tpm=tpm)
    key = new_org_key(plan, gateway)
    used_tokens = 0
    for n, path in enumerate([CHAT, MESSAGES, ENVELOPE, CHAT, MESSAGES, ENVELOPE]):
        text = f"headers {n}"
        before = time.time()
        response = send(gateway, key, path, text=text, max_tokens=12, stream=stream)
        assert response.status_code == 200, response.text
        minute_end = (before // 60 + 1) * 60
        got = ratelimit_headers(response, path)
        prompt = router_prompt(path, text)
        expected_remaining_tokens = tpm - used_tokens - reservation(prompt, 12)
        if path == MESSAGES:
            assert set(got) == {
                f"anthropic-ratelimit-{part}-{field}"
                for part in ("requests", "tokens")
                for field in ("limit", "remaining", "reset")
            }
            assert got["anthropic-ratelimit-requests-limit"] == str(rpm)
            assert got["anthropic-ratelimit-tokens-limit"] == str(tpm)
            for part in ("requests", "tokens"):
                reset = got[f"anthropic-ratelimit-{part}-reset"]
                assert RFC3339.match(reset), reset
                assert datetime.strptime(reset, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() == minute_end
        else:
            assert set(got) == {
                f"x-ratelimit-{field}-{part}" for part in ("requests", "tokens") for field in ("limit", "remaining", "reset")
            }
            assert got["x-ratelimit-limit-requests"] == str(rpm)
            assert got["x-ratelimit-limit-tokens"] == str(tpm)
            for part in ("requests", "tokens"):
                reset = got[f"x-ratelimit-reset-{part}"]
                assert DURATION.match(reset) and reset.endswith("s") and "h" not in reset, reset
                assert abs(duration_seconds(reset) - (minute_end - before)) <= 1.5
        # Remaining requests fall by exactly one a request; remaining tokens by the reservation, after the
        # earlier requests settled to their real usage.
        assert remaining_requests(response, path) == rpm - 1 - n
        assert remaining_tokens(response, path) == expected_remaining_tokens
        prompt_tokens, completion_tokens = sim_answer(prompt, 12)
        used_tokens += prompt_tokens + completion_tokens


def test_a_429_carries_retry_after_and_says_which_limit_and_when(gateway: LiveGateway) -> None:
    minute_room()
    plan = make_plan(rpm=1, tpm=10_000)
    key = new_org_key(plan, gateway)
    assert send(gateway, key, CHAT).status_code == 200
    for path in SURFACES:
        before = time.time()
        refused = send(gateway, key, path)
        assert refused.status_code == 429
        retry = refused.headers["retry-after"]
        assert retry.isdigit() and abs(int(retry) - (60 - before % 60)) <= 1.5
        message = expect_error(refused, path, "rate_limited")
        assert message == f"API key requests per minute limit of 1 reached; resets in {format_duration(int(retry))}"
        got = ratelimit_headers(refused, path)
        if path == MESSAGES:
            assert got["anthropic-ratelimit-requests-remaining"] == "0"
            assert RFC3339.match(got["anthropic-ratelimit-requests-reset"])
            assert got["anthropic-ratelimit-tokens-limit"] == "10000"
        else:
            assert got["x-ratelimit-remaining-requests"] == "0"
            assert got["x-ratelimit-reset-requests"] == f"{retry}s"
            assert got["x-ratelimit-limit-tokens"] == "10000"


def test_an_upstream_failure_after_admission_still_carries_the_headers(gateway: LiveGateway, sim: SimulatorServer) -> None:
    minute_room()
    plan = make_plan(rpm=9, tpm=9_000)
    key = new_org_key(plan, gateway)
    sim.configure(fail_status=500)
    for n, path in enumerate(SURFACES):
        failed = send(gateway, key, path)
        assert failed.status_code >= 500
        assert remaining_requests(failed, path) == 8 - n
        assert remaining_tokens(failed, path) == 9_000 - reservation(router_prompt(path, "hi"), 16)  # settled to 0


def test_refusals_after_authentication_carry_the_headers_without_consuming(gateway: LiveGateway, other_alias: ModelAlias) -> None:
    minute_room()
    plan = make_plan(rpm=10, tpm=5_000, aliases=[ALIAS])
    key = new_org_key(plan, gateway)
    first = send(gateway, key, CHAT)
    assert first.status_code == 200
    left_tokens = remaining_tokens(first)
    used = sum(sim_answer(chatml("hi"), 16))
    left_tokens += reservation(chatml("hi"), 16) - used  # settled

    refusals = [
        (CHAT, {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400),
        (MESSAGES, {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}]}, 400),  # no max_tokens
        (CHAT, body_for(CHAT, model=OTHER_ALIAS), 403),
        (MESSAGES, body_for(MESSAGES, model=OTHER_ALIAS), 403),
        (ENVELOPE, body_for(ENVELOPE, model=OTHER_ALIAS), 403),
        (CHAT, body_for(CHAT, model="no-such-model"), 404),
        (ENVELOPE, body_for(ENVELOPE, model="no-such-model"), 404),
    ]
    for path, body, status in refusals:
        response = HTTP.post(f"{gateway.url}{path}", json=body, headers=headers_for(key, path))
        assert response.status_code == status, response.text
        assert len(ratelimit_headers(response, path)) == 6, (path, status, response.headers)
        assert remaining_requests(response, path) == 9  # read, not consumed
        assert remaining_tokens(response, path) == left_tokens

    listed = HTTP.get(f"{gateway.url}/v1/models", headers=headers_for(key, CHAT), timeout=10)
    one = HTTP.get(f"{gateway.url}/v1/models/{OTHER_ALIAS}", headers=headers_for(key, CHAT), timeout=10)
    counted = HTTP.post(
        f"{gateway.url}/v1/messages/count_tokens",
        headers=headers_for(key, MESSAGES),
        timeout=10,
        json={"model": ALIAS, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert (listed.status_code, one.status_code, counted.status_code) == (200, 404, 200)
    for response, path in ((listed, CHAT), (one, CHAT), (counted, MESSAGES)):
        assert len(ratelimit_headers(response, path)) == 6, response.headers
    assert remaining_requests(listed) == remaining_requests(one) == 9
    # Counting tokens is admitted like a request (a request a minute; tests/hostile/test_billing.py has the rest).
    assert remaining_requests(counted, MESSAGES) == 8
    assert remaining_tokens(counted, MESSAGES) == left_tokens

    # The refusals took nothing: only the count and this request since the first.
    assert remaining_requests(send(gateway, key, ENVELOPE)) == 7
    # Unauthenticated refusals say nothing about anyone's limits.
    assert ratelimit_headers(send(gateway, "ctr_nonsense", CHAT), CHAT) == {}


# --- Redis unreachable ---------------------------------------------------------------------------------------------


def test_a_dead_redis_fails_open_to_per_process_limits(
    gateway: LiveGateway, sim: SimulatorServer, own_gateways: list[LiveGateway]
) -> None:
    dead = LiveGateway(env=live_gateway_env(sim.base_url, REDIS_URL=DEAD_REDIS))
    own_gateways.append(dead)
    dead.start()
    health = httpx.get(f"{dead.url}/health", headers=dead.operator_headers, timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "degraded"
    assert health.json()["checks"]["database"] == "ok" and health.json()["checks"]["cache"] != "ok"

    minute_room()
    plan = make_plan(rpm=4, tpm=10_000, concurrent=2)
    key = new_org_key(plan, dead)
    timings = []
    results = []
    for n, (path, stream) in enumerate([(CHAT, False), (MESSAGES, True), (ENVELOPE, False), (CHAT, True), (MESSAGES, False)]):
        started = time.monotonic()
        results.append(send(dead, key, path, text=f"dead {n}", stream=stream))
        timings.append(time.monotonic() - started)
    assert [r.status_code for r in results] == [200, 200, 200, 200, 429], [r.text for r in results]
    assert max(timings) < 1.5, timings
    assert [remaining_requests(r, p) for r, p in zip(results[:4], [CHAT, MESSAGES, ENVELOPE, CHAT], strict=True)] == [3, 2, 1, 0]
    assert "requests per minute limit of 4 reached" in expect_error(results[4], MESSAGES, "rate_limited")
    assert "retry-after" in results[4].headers
    # A refusal before admission reports the same in-process counters.
    assert remaining_requests(send(dead, key, CHAT, model="no-such-model")) == 0
    assert "rate-limit store unreachable" in dead.log() and "failing OPEN" in dead.log()

    # Usage is still accounted (the database is fine).
    wait_until_usage_written(dead)
    rids = [r.headers["x-request-id"] for r in results]
    wait_for(lambda: RequestLog.objects.filter(request_id__in=rids).count() == 5)
    assert UsageEvent.objects.filter(request_id__in=rids[:4], status="ok").count() == 4


class TcpProxy:
    """A TCP relay to Redis that the test can cut and restore: an outage without touching the shared Redis."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; close() alone would leave it listening
            server.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for conn in (src, dst):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


@needs_shared_redis
def test_a_redis_outage_falls_back_per_process_and_recovers(gateway: LiveGateway, own_gateways: list[LiveGateway]) -> None:
    real = urlsplit(gateway.env["REDIS_URL"])
    proxy = TcpProxy((real.hostname or "127.0.0.1", real.port or 6379)).start()
    try:
        env = {**gateway.env, "REDIS_URL": urlunsplit(real._replace(netloc=f"127.0.0.1:{proxy.port}"))}
        proxied = LiveGateway(env=env)  # same Redis database and key prefix as `gateway`, through the relay
        own_gateways.append(proxied)
        proxied.start()
        minute_room()
        plan = make_plan(rpm=50)
        key = new_org_key(plan, gateway, proxied)
        store = redis.Redis.from_url(gateway.env["REDIS_URL"])
        counter = f"{gateway.env['PORTAL_LIMITS_PREFIX']}:{{o{key.organization_id}}}:k{key.key_id}:requests_per_minute:60:{int(time.time() // 60 * 60)}"

        def shared_count() -> int:
            return int(store.get(counter) or 0)

        # Redis up: one counter for both processes.
        assert remaining_requests(send(gateway, key)) == 49
        assert remaining_requests(send(proxied, key, ENVELOPE)) == 48
        assert shared_count() == 2

        # Redis gone for `proxied`: it serves at once from its own counters; `gateway` keeps the shared one.
        proxy.stop()
        started = time.monotonic()
        during = [send(proxied, key, p) for p in SURFACES]
        assert time.monotonic() - started < 2.0
        assert [r.status_code for r in during] == [200, 200, 200]
        assert [remaining_requests(r, p) for r, p in zip(during, SURFACES, strict=True)] == [49, 48, 47]
        assert remaining_requests(send(gateway, key)) == 47
        assert shared_count() == 3
        assert "failing OPEN" in proxied.log()

        # Redis back: after its one-second circuit, `proxied` counts in Redis again.
        proxy.start()

        def counts_in_redis() -> bool:
            before = shared_count()
            assert send(proxied, key).status_code == 200
            return shared_count() == before + 1

        wait_for(counts_in_redis, timeout=3, interval=0.1)
        store.close()
    finally:
        proxy.stop()


def test_a_dead_redis_fails_closed_with_503_when_configured(
    gateway: LiveGateway, sim: SimulatorServer, own_gateways: list[LiveGateway]
) -> None:
    dead = LiveGateway(env=live_gateway_env(sim.base_url, REDIS_URL=DEAD_REDIS, PORTAL_LIMITS_FAIL_MODE="closed"))
    own_gateways.append(dead)
    dead.start()
    key = new_org_key("pro", dead)
    for path in SURFACES:
        for stream in (False, True):
            started = time.monotonic()
            refused = send(dead, key, path, stream=stream)
            assert time.monotonic() - started < 1.5
            expect_error(refused, path, "limits_unavailable")
            assert refused.headers["retry-after"] == "1"
    assert sim.stats()["requests_total"] == 0  # nothing reached the router
    # Refusals that happen before the limiter are unchanged, and need no counters (so carry no rate-limit headers).
    expect_error(send(dead, "sk-nonsense", CHAT), CHAT, "invalid_key")
    missing = send(dead, key, MESSAGES, model="no-such-model")
    expect_error(missing, MESSAGES, "model_not_found")
    assert ratelimit_headers(missing, MESSAGES) == {}
    assert models(dead, key) == [ALIAS]


def test_a_key_on_a_plan_the_process_has_not_loaded_yet_is_not_unlimited(
    gateway: LiveGateway, sim: SimulatorServer, own_gateways: list[LiveGateway]
) -> None:
    # A poll interval longer than the test: the process keeps the plans it loaded at its first request.
    slow = LiveGateway(env=live_gateway_env(sim.base_url, PORTAL_CACHE_POLL_MS="600000"))
    own_gateways.append(slow)
    slow.start()
    wait_until_gateway_caught_up(slow)
    plan = make_plan(rpm=1, aliases=[ALIAS])
    key = issue_key(slug="late-plan", plan=plan.slug)  # a new key: looked up in the database, plan unknown here
    results = [send(slow, key, CHAT).status_code for _ in range(3)]
    assert results == [200, 429, 429]


# --- billing and usage accounting ------------------------------------------------------------------------------------


def test_the_ledger_balances_to_the_token_after_a_concurrent_burst(gateway: LiveGateway, sim: SimulatorServer) -> None:
    input_price, output_price = 1_234_567, 2_345_679  # micro-units per million tokens: every request rounds up
    ModelPrice.objects.create(alias=ALIAS, input_micros_per_million=input_price, output_micros_per_million=output_price)
    key = new_org_key("pro", gateway)
    kinds = [(CHAT, False), (CHAT, True), (MESSAGES, False), (MESSAGES, True), (ENVELOPE, False)]
    requests = []
    for i in range(40):
        path, stream = kinds[i % len(kinds)]
        requests.append((gateway, key, path, {"text": f"bill me {i}", "max_tokens": 5 + i, "stream": stream}))
    results = burst(requests)
    assert statuses(results) == {200: 40}
    rids = {r.headers["x-request-id"] for r in results}
    assert len(rids) == 40

    wait_until_usage_written(gateway)
    wait_for(lambda: UsageEvent.objects.filter(organization_id=key.organization_id).count() == 40)
    events = list(UsageEvent.objects.filter(organization_id=key.organization_id))
    assert {e.request_id for e in events} == rids
    assert all(e.status == "ok" and not e.estimated for e in events)

    # The token counts are the simulator's, request by request (matched on client_reference).
    sent = {b["client_reference"]: b for b in sim.stats()["last_bodies"] if isinstance(b, dict)}
    assert rids <= set(sent)
    for event in events:
        body = sent[event.request_id]
        assert (event.prompt_tokens, event.completion_tokens) == sim_answer(body["prompt"], body["max_tokens"])
        assert event.total_tokens == event.prompt_tokens + event.completion_tokens

    debits = LedgerEntry.objects.filter(organization_id=key.organization_id, kind=LedgerEntry.Kind.DEBIT)
    assert debits.count() == 40
    assert set(debits.values_list("request_id", flat=True)) == rids
    expected = sum(math.ceil((input_price * e.prompt_tokens + output_price * e.completion_tokens) / 1_000_000) for e in events)
    assert organization_balance(key.organization_id) == -expected
    by_request = {e.request_id: e for e in events}
    for debit in debits:
        event = by_request[debit.request_id]
        assert (debit.input_tokens, debit.output_tokens) == (event.prompt_tokens, event.completion_tokens)
        assert debit.amount_micros == -math.ceil(
            (input_price * event.prompt_tokens + output_price * event.completion_tokens) / 1_000_000
        )
    assert debits.aggregate(total=Sum("amount_micros"))["total"] == -expected


def test_a_429_is_logged_and_never_billed(gateway: LiveGateway) -> None:
    window_room(3600)
    minute_room()
    ModelPrice.objects.create(alias=ALIAS, input_micros_per_million=1_000_000, output_micros_per_million=2_000_000)
    plan = make_plan(rpm=2, window_requests=3)
    key = new_org_key(plan, gateway)
    ok = [send(gateway, key, CHAT, text=f"ok {i}") for i in range(2)]
    rate_limited = send(gateway, key, MESSAGES)
    assert [r.status_code for r in ok] == [200, 200] and rate_limited.status_code == 429
    quota_key = new_org_key(make_plan(window_requests=1), gateway)
    assert send(gateway, quota_key, ENVELOPE).status_code == 200
    quota = send(gateway, quota_key, ENVELOPE)
    expect_error(quota, ENVELOPE, "quota")

    wait_until_usage_written(gateway)
    for refused in (rate_limited, quota):
        rid = refused.headers["x-request-id"]
        log = wait_for(lambda rid=rid: RequestLog.objects.filter(request_id=rid).first())
        assert log.status == 429
        event = UsageEvent.objects.get(request_id=rid)
        assert (event.status, event.http_status, event.total_tokens) == ("error", 429, 0)
        assert not LedgerEntry.objects.filter(request_id=rid).exists()
    assert LedgerEntry.objects.filter(organization_id=key.organization_id, kind="debit").count() == 2
    assert LedgerEntry.objects.filter(organization_id=quota_key.organization_id, kind="debit").count() == 1
    codes = dict(
        UsageEvent.objects.filter(
            request_id__in=[rate_limited.headers["x-request-id"], quota.headers["x-request-id"]]
        ).values_list("request_id", "error_code")
    )
    assert codes == {
        rate_limited.headers["x-request-id"]: "rate_limit_exceeded",
        quota.headers["x-request-id"]: "insufficient_quota",
    }
