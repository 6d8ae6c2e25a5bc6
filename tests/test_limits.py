"""The admission engine: exact admit/deny counts per limit, atomic bursts, two processes, headers and a dead Redis.

Real Redis (settings.REDIS_URL) with a fresh key prefix per test, and the in-process store; the clock is
frozen one second into a minute of a Wednesday, so no test can straddle a window boundary.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from billing.selectors import PlanRecord
from gateway.errors import GatewayError, QuotaExceeded, RateLimited
from gateway.limits import (
    Admission,
    Limiter,
    LimitsUnavailable,
    anthropic_headers,
    format_duration,
    openai_headers,
)
from gateway.principal import Principal
from tests.support.live import REDIS_FOR_TESTS

ROOT = Path(__file__).resolve().parent.parent
FROZEN = datetime(2025, 6, 4, 12, 0, 1, tzinfo=UTC).timestamp()  # Wednesday, 1 s into the minute and the hour
NEXT_MONDAY = datetime(2025, 6, 9, 0, 0, 0, tzinfo=UTC).timestamp()
DEAD_REDIS = "redis://127.0.0.1:1/0"


class Clock:
    def __init__(self, t: float = FROZEN) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_plan(
    *,
    rpm: int = 10_000,
    tpm: int | None = None,
    concurrent: int | None = None,
    window_requests: int | None = None,
    window_seconds: int = 3600,
    weekly: int | None = None,
) -> PlanRecord:
    return PlanRecord(
        plan_id=1,
        slug="test",
        allowed_aliases=None,
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
        concurrent_requests=concurrent,
        window_requests=window_requests,
        window_seconds=window_seconds,
        weekly_requests=weekly,
    )


def make_principal(plan: PlanRecord | None, *, key_id: int = 1, org_id: int = 1) -> Principal:
    return Principal(key_id=key_id, organization_id=org_id, organization_slug=f"org{org_id}", plan=plan)


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(body())


def scratch_prefix(label: str) -> Iterator[str]:
    """A key prefix of the test's own on the shared Redis, and its keys deleted afterwards."""
    value = f"{label}-{uuid.uuid4().hex[:12]}"
    yield value
    client = redis.Redis.from_url(REDIS_FOR_TESTS)
    keys = list(client.scan_iter(match=f"{value}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from scratch_prefix("limtest")


@pytest.fixture(params=["redis", "local"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def new_limiter(mode: str, prefix: str, clock: Clock) -> Callable[..., Limiter]:
    def build(**kwargs: Any) -> Limiter:
        url = REDIS_FOR_TESTS if mode == "redis" else None
        return Limiter(redis_url=url, prefix=prefix, now=clock, **kwargs)

    return build


async def admit_many(limiter: Limiter, principal: Principal, count: int, *, tokens: int = 0) -> list[Admission | GatewayError]:
    async def one(i: int) -> Admission | GatewayError:
        try:
            return await limiter.admit(principal, request_id=f"req_{uuid.uuid4().hex}", tokens=tokens)
        except GatewayError as exc:
            return exc

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def admitted(results: list[Admission | GatewayError]) -> list[Admission]:
    return [r for r in results if isinstance(r, Admission)]


def backend_of(mode: str) -> str:
    return "redis" if mode == "redis" else "local"


# --- requests per minute ----------------------------------------------------------------------------


def test_key_requests_per_minute_admits_exactly_the_limit_then_resets_next_minute(new_limiter, clock, mode) -> None:  # noqa: ANN001
    limiter = new_limiter()
    principal = make_principal(make_plan(rpm=5))

    async def body() -> None:
        for i in range(5):
            admission = await limiter.admit(principal, request_id=f"r{i}")
            assert admission.backend == backend_of(mode)
            assert admission.requests is not None and admission.requests.remaining == 4 - i
        with pytest.raises(RateLimited) as denied:
            await limiter.admit(principal, request_id="r5")
        assert denied.value.message == "API key requests per minute limit of 5 reached; resets in 59s"
        assert denied.value.details == {"limit": "requests_per_minute", "scope": "key", "limit_value": 5, "reset_seconds": 59}
        assert denied.value.headers["retry-after"] == "59"
        assert denied.value.status == 429 and denied.value.code == "rate_limit_exceeded"
        clock.t += 58.5  # still the same minute
        with pytest.raises(RateLimited) as again:
            await limiter.admit(principal, request_id="r6")
        assert again.value.headers["retry-after"] == "1"
        clock.t += 0.5  # the next minute
        fresh = await limiter.admit(principal, request_id="r7")
        assert fresh.requests is not None and (fresh.requests.remaining, fresh.requests.reset_seconds) == (4, 60)
        await limiter.aclose()

    run(body)


def test_organization_requests_per_minute_are_shared_by_its_keys(new_limiter) -> None:  # noqa: ANN001
    limiter = new_limiter()
    plan = make_plan(rpm=5)
    first, second = make_principal(plan, key_id=1, org_id=7), make_principal(plan, key_id=2, org_id=7)
    other_org = make_principal(plan, key_id=3, org_id=8)

    async def body() -> None:
        assert len(admitted(await admit_many(limiter, first, 3))) == 3
        assert len(admitted(await admit_many(limiter, second, 3))) == 2
        for who in (first, second):
            with pytest.raises(RateLimited) as denied:
                await limiter.admit(who, request_id="x")
            assert denied.value.message == "organization requests per minute limit of 5 reached; resets in 59s"
            assert denied.value.details == {
                "limit": "requests_per_minute",
                "scope": "organization",
                "limit_value": 5,
                "reset_seconds": 59,
            }
        assert len(admitted(await admit_many(limiter, other_org, 6))) == 5
        await limiter.aclose()

    run(body)


def test_a_denied_request_consumes_nothing(new_limiter) -> None:  # noqa: ANN001
    limiter = new_limiter()
    principal = make_principal(make_plan(rpm=5, tpm=1000, concurrent=10))

    async def body() -> None:
        await limiter.admit(principal, request_id="big", tokens=900)
        with pytest.raises(RateLimited) as denied:
            await limiter.admit(principal, request_id="too-many-tokens", tokens=200)
        assert denied.value.details is not None and denied.value.details["limit"] == "tokens_per_minute"
        # The refused request took no request, no token and no slot: 4 more fit, using the last 100 tokens.
        results = [await limiter.admit(principal, request_id=f"r{i}", tokens=25) for i in range(4)]
        assert results[-1].tokens is not None and results[-1].tokens.remaining == 0
        assert results[-1].requests is not None and results[-1].requests.remaining == 0
        with pytest.raises(RateLimited):
            await limiter.admit(principal, request_id="sixth", tokens=0)
        await limiter.aclose()

    run(body)


# --- bursts and processes ---------------------------------------------------------------------------


def test_a_burst_of_200_concurrent_admits_against_50_admits_exactly_50(new_limiter) -> None:  # noqa: ANN001
    limiter = new_limiter()
    principal = make_principal(make_plan(rpm=50))

    async def body() -> None:
        results = await admit_many(limiter, principal, 200)
        assert len(admitted(results)) == 50
        assert sum(isinstance(r, RateLimited) for r in results) == 150
        assert (limiter.redis_failures, limiter.fallback_admissions) == (0, 0)  # a burst is not an outage
        await limiter.aclose()

    run(body)


CHILD_SCRIPT = r"""
import asyncio, json, sys, uuid
import django
django.setup()
from billing.selectors import PlanRecord
from gateway.principal import Principal
from gateway.errors import RateLimited
from gateway.limits import Limiter

url, prefix, now, count, limit = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
plan = PlanRecord(plan_id=1, slug="t", allowed_aliases=None, requests_per_minute=limit, tokens_per_minute=None,
                  concurrent_requests=None, window_requests=None, window_seconds=3600, weekly_requests=None)
principal = Principal(key_id=1, organization_id=1, organization_slug="org1", plan=plan)

async def main():
    limiter = Limiter(redis_url=url, prefix=prefix, now=lambda: now)
    client = limiter._bound().client
    await asyncio.gather(*(client.ping() for _ in range(20)))  # open connections before the race
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    async def one():
        try:
            await limiter.admit(principal, request_id=uuid.uuid4().hex)
            return 1
        except RateLimited:
            return 0

    results = await asyncio.gather(*(one() for _ in range(count)))
    print(json.dumps({"admitted": sum(results), "fallbacks": limiter.fallback_admissions}), flush=True)
    await limiter.aclose()

asyncio.run(main())
"""


def test_two_processes_sharing_redis_admit_exactly_the_limit_together(prefix: str) -> None:
    count, limit = 120, 150
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal_project.test_settings"}
    args = [REDIS_FOR_TESTS, prefix, str(FROZEN), str(count), str(limit)]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD_SCRIPT, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.strip() == "ready", child.stderr.read() if child.stderr else line
        for child in children:  # both wait on stdin: release them together
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        reports = []
        for child in children:
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert [r["fallbacks"] for r in reports] == [0, 0]
    assert sum(r["admitted"] for r in reports) == limit
    assert all(r["admitted"] >= limit - count for r in reports)


# --- tokens -------------------------------------------------------------------------------------------


def test_token_reservations_cap_a_burst_and_settling_returns_the_difference(new_limiter) -> None:  # noqa: ANN001
    limiter = new_limiter()
    principal = make_principal(make_plan(tpm=10_000))

    async def body() -> None:
        first = await admit_many(limiter, principal, 20, tokens=1000)
        winners = admitted(first)
        assert len(winners) == 10
        denied = [r for r in first if isinstance(r, RateLimited)]
        assert len(denied) == 10
        assert denied[0].details == {"limit": "tokens_per_minute", "scope": "key", "limit_value": 10_000, "reset_seconds": 59}
        await asyncio.gather(*(limiter.finish(a, actual_tokens=100) for a in winners))
        second = await admit_many(limiter, principal, 100, tokens=100)
        assert len(admitted(second)) == 90
        assert min(a.tokens.remaining for a in admitted(second) if a.tokens) == 0
        await limiter.aclose()

    run(body)


def test_settling_adjusts_the_window_the_reservation_went_to(new_limiter, clock) -> None:  # noqa: ANN001
    limiter = new_limiter()
    principal = make_principal(make_plan(tpm=10_000))

    async def body() -> None:
        admission = await limiter.admit(principal, request_id="long", tokens=5000)
        clock.t += 60  # the answer comes back in the next minute
        await limiter.finish(admission, actual_tokens=100)
        whole_budget = await limiter.admit(principal, request_id="next-minute", tokens=10_000)
        assert whole_budget.tokens is not None and whole_budget.tokens.remaining == 0
        clock.t -= 60  # the earlier minute was charged the real 100 tokens, not 5000
        fits = await limiter.admit(principal, request_id="back", tokens=9_900)
        assert fits.tokens is not None and fits.tokens.remaining == 0
        with pytest.raises(RateLimited):
            await limiter.admit(principal, request_id="over", tokens=1)
        await limiter.aclose()

    run(body)


def test_finish_is_idempotent_and_none_keeps_the_reservation(new_limiter) -> None:  # noqa: ANN001
    limiter = new_limiter()
    principal = make_principal(make_plan(tpm=1000))

    async def body() -> None:
        settled = await limiter.admit(principal, request_id="a", tokens=500)
        await asyncio.gather(*(limiter.finish(settled, actual_tokens=100) for _ in range(3)))
        kept = await limiter.admit(principal, request_id="b", tokens=400)
        await limiter.finish(kept, actual_tokens=None)
        await limiter.finish(kept, actual_tokens=0)  # too late: already finished
        last = await limiter.admit(principal, request_id="c", tokens=500)
        assert last.tokens is not None and last.tokens.remaining == 0
        with pytest.raises(RateLimited):
            await limiter.admit(principal, request_id="d", tokens=1)
        await limiter.aclose()

    run(body)


def test_a_reservation_larger_than_the_whole_budget_is_refused_with_its_reason(new_limiter) -> None:  # noqa: ANN001
    limiter = new_limiter()
    principal = make_principal(make_plan(tpm=1000))

    async def body() -> None:
        with pytest.raises(RateLimited) as denied:
            await limiter.admit(principal, request_id="huge", tokens=1001)
        assert denied.value.message == (
            "request needs at least 1001 tokens for its prompt, more than the API key tokens per minute limit of 1000, "
            "so it can never be admitted; shorten the prompt"
        )
        assert denied.value.details is not None and denied.value.details["requested_tokens"] == 1001
        assert denied.value.headers["retry-after"] == "59"
        exact = await limiter.admit(principal, request_id="exact", tokens=1000)
        assert exact.tokens is not None and exact.tokens.remaining == 0
        await limiter.aclose()

    run(body)


def test_only_the_up_to_part_is_capped_at_the_budget_and_a_prompt_over_it_is_refused(new_limiter) -> None:  # noqa: ANN001
    limiter = new_limiter()
    principal = make_principal(make_plan(tpm=1000))

    async def body() -> None:
        # A prompt of 300 asking for 5000 tokens of answer: the answer's part is cut to what the minute leaves.
        capped = await limiter.admit(principal, request_id="long-answer", tokens=300, up_to_tokens=5000)
        assert capped.reserved_tokens == 1000 and capped.tokens is not None and capped.tokens.remaining == 0
        await limiter.finish(capped, actual_tokens=0)
        small = await limiter.admit(principal, request_id="small", tokens=300, up_to_tokens=100)
        assert small.reserved_tokens == 400
        await limiter.finish(small, actual_tokens=0)
        # The prompt alone over the budget: refused however small max_tokens is (it used to be capped and run).
        with pytest.raises(RateLimited) as denied:
            await limiter.admit(principal, request_id="big-prompt", tokens=1200, up_to_tokens=1)
        assert denied.value.details is not None
        assert (denied.value.details["limit"], denied.value.details["requested_tokens"]) == ("tokens_per_minute", 1200)
        assert "tokens per minute limit of 1000" in denied.value.message
        # A prompt of exactly the budget runs, with nothing reserved for its answer beyond it.
        exact = await limiter.admit(principal, request_id="exact", tokens=1000, up_to_tokens=50)
        assert exact.reserved_tokens == 1000
        await limiter.aclose()

    run(body)


def test_spare_tokens_take_only_the_room_left_and_never_refuse(new_limiter) -> None:  # noqa: ANN001
    """A request without max_tokens reserves its alias's cap as `spare_tokens`: only as far as the minute has room."""
    limiter = new_limiter()
    plan = make_plan(tpm=1000)
    key_a, key_b = make_principal(plan, key_id=1), make_principal(plan, key_id=2)  # one organization, two keys

    async def body() -> None:
        # An unused minute: the whole budget after the prompt, as for an explicit max_tokens over the budget.
        first = await limiter.admit(key_a, request_id="first", tokens=10, spare_tokens=4096)
        assert first.reserved_tokens == 1000 and first.tokens is not None and first.tokens.remaining == 0
        await limiter.finish(first, actual_tokens=50)
        # The same cap asked as max_tokens would now need the whole budget again and wait for the next minute...
        with pytest.raises(RateLimited):
            await limiter.admit(key_a, request_id="asked", tokens=10, up_to_tokens=4096)
        # ...a request that asked for nothing reserves what is left (1000 - 50 used - 10 of prompt) and runs.
        second = await limiter.admit(key_a, request_id="second", tokens=10, spare_tokens=4096)
        assert second.reserved_tokens == 10 + 940 and second.tokens is not None and second.tokens.remaining == 0
        # With the minute full its prompt no longer fits: refused like any request whose prompt does not fit.
        with pytest.raises(RateLimited) as full:
            await limiter.admit(key_b, request_id="full", tokens=10, spare_tokens=4096)
        assert full.value.details is not None and full.value.details["limit"] == "tokens_per_minute"
        await limiter.finish(second, actual_tokens=100)
        # The tightest counter decides: key B has used nothing, its organization 150 (A's two settled requests).
        third = await limiter.admit(key_b, request_id="third", tokens=10, spare_tokens=4096)
        assert third.reserved_tokens == 10 + (1000 - 150 - 10)
        await limiter.finish(third, actual_tokens=30)
        # Settled from the real usage like any reservation: 150 + 30 used, the rest free again.
        peek = await limiter.peek(key_b)
        assert peek is not None and peek.tokens is not None and peek.tokens.remaining == 1000 - 180
        # Spare tokens smaller than the room are reserved whole, next to an explicit up_to part.
        small = await limiter.admit(key_b, request_id="small", tokens=10, spare_tokens=20)
        assert small.reserved_tokens == 30
        await limiter.aclose()

    run(body)


def test_spare_tokens_without_a_token_limit_reserve_nothing(new_limiter) -> None:  # noqa: ANN001
    limiter = new_limiter()

    async def body() -> None:
        admission = await limiter.admit(make_principal(make_plan(tpm=None)), request_id="free", tokens=5, spare_tokens=4096)
        assert admission.tokens is None and admission.token_keys == ()
        await limiter.aclose()

    run(body)


def test_without_a_token_limit_the_whole_request_is_reserved(new_limiter) -> None:  # noqa: ANN001
    limiter = new_limiter()
    principal = make_principal(make_plan(tpm=None))

    async def body() -> None:
        admission = await limiter.admit(principal, request_id="free", tokens=10**6, up_to_tokens=10**6)
        assert admission.tokens is None
        await limiter.aclose()

    run(body)


# --- concurrency --------------------------------------------------------------------------------------


def test_concurrency_slots_are_released_exactly_once(new_limiter) -> None:  # noqa: ANN001
    limiter = new_limiter()
    principal = make_principal(make_plan(concurrent=3))

    async def body() -> None:
        first = await admit_many(limiter, principal, 10)
        holding = admitted(first)
        assert len(holding) == 3
        refused = [r for r in first if isinstance(r, RateLimited)]
        assert len(refused) == 7
        assert refused[0].details == {"limit": "concurrent_requests", "scope": "key", "limit_value": 3, "reset_seconds": 1}
        assert refused[0].headers["retry-after"] == "1"
        assert (
            refused[0].message
            == "API key concurrent requests limit of 3 reached; retry when one of the 3 in-flight requests finishes"
        )
        for _ in range(3):
            await limiter.finish(holding[0])  # released once, however often it is finished
        assert len(admitted(await admit_many(limiter, principal, 5))) == 1
        await asyncio.gather(limiter.finish(holding[1]), limiter.finish(holding[2]))
        assert len(admitted(await admit_many(limiter, principal, 5))) == 2
        await limiter.aclose()

    run(body)


def test_a_slot_never_released_expires_after_its_ttl(new_limiter, clock) -> None:  # noqa: ANN001
    limiter = new_limiter(slot_ttl_s=30)
    principal = make_principal(make_plan(concurrent=2))

    async def body() -> None:
        assert len(admitted(await admit_many(limiter, principal, 3))) == 2  # never finished: a crashed process
        clock.t += 29
        assert len(admitted(await admit_many(limiter, principal, 1))) == 0
        clock.t += 1.5
        assert len(admitted(await admit_many(limiter, principal, 3))) == 2
        await limiter.aclose()

    run(body)


def test_a_cancelled_finish_still_releases_the_slot(prefix: str) -> None:
    # One connection: the finish has to queue behind another admission, and is cancelled while it waits,
    # as when the client of a finished stream disconnects.
    limiter = Limiter(redis_url=REDIS_FOR_TESTS, prefix=prefix, now=Clock(), max_connections=1)
    plan = make_plan(concurrent=1)
    principal, neighbour = make_principal(plan, org_id=1), make_principal(plan, key_id=2, org_id=2)

    async def body() -> None:
        holding = await limiter.admit(principal, request_id="held")
        other = asyncio.create_task(limiter.admit(neighbour, request_id="other"))
        finishing = asyncio.create_task(limiter.finish(holding))
        await asyncio.sleep(0)
        finishing.cancel()
        await other
        await asyncio.sleep(0.05)
        assert len(admitted(await admit_many(limiter, principal, 3))) == 1
        await limiter.aclose()

    run(body)


# --- plan allowances ------------------------------------------------------------------------------


def test_the_short_window_cap_is_a_quota_that_resets_with_its_window(new_limiter, clock) -> None:  # noqa: ANN001
    limiter = new_limiter()
    principal = make_principal(make_plan(window_requests=3, window_seconds=3600))

    async def body() -> None:
        assert len(admitted(await admit_many(limiter, principal, 3))) == 3
        clock.t += 120  # a new minute does not refill the window
        with pytest.raises(QuotaExceeded) as denied:
            await limiter.admit(principal, request_id="over")
        assert denied.value.message == "API key 1-hour request allowance of 3 reached; resets in 57m59s (at 2025-06-04T13:00:00Z)"
        assert denied.value.details == {"limit": "window_requests", "scope": "key", "limit_value": 3, "reset_seconds": 3479}
        assert denied.value.headers["retry-after"] == "3479"
        assert (denied.value.status, denied.value.code) == (429, "insufficient_quota")
        clock.t += 3479  # 13:00:00
        assert len(admitted(await admit_many(limiter, principal, 4))) == 3
        await limiter.aclose()

    run(body)


def test_the_weekly_allowance_resets_monday_midnight_utc(new_limiter, clock) -> None:  # noqa: ANN001
    limiter = new_limiter()
    principal = make_principal(make_plan(weekly=4))

    async def body() -> None:
        assert len(admitted(await admit_many(limiter, principal, 6))) == 4
        clock.t = NEXT_MONDAY - 1  # Sunday 23:59:59
        with pytest.raises(QuotaExceeded) as denied:
            await limiter.admit(principal, request_id="sunday")
        assert denied.value.message == "API key weekly request allowance of 4 reached; resets in 1s (at 2025-06-09T00:00:00Z)"
        assert denied.value.details == {"limit": "weekly_requests", "scope": "key", "limit_value": 4, "reset_seconds": 1}
        clock.t = NEXT_MONDAY
        monday = await limiter.admit(principal, request_id="monday")
        assert monday.requests is not None and monday.requests.limit == 4 and monday.requests.remaining == 3
        assert monday.requests.reset_seconds == 7 * 86400
        await limiter.aclose()

    run(body)


def test_weekly_denial_names_the_wait_until_monday(new_limiter) -> None:  # noqa: ANN001
    limiter = new_limiter()
    principal = make_principal(make_plan(rpm=10, weekly=2))

    async def body() -> None:
        await admit_many(limiter, principal, 2)
        with pytest.raises(QuotaExceeded) as denied:
            await limiter.admit(principal, request_id="wed")
        wait = int(NEXT_MONDAY - FROZEN)
        assert wait == 388_799
        assert denied.value.headers["retry-after"] == str(wait)
        assert denied.value.message.endswith("resets in 107h59m59s (at 2025-06-09T00:00:00Z)")
        await limiter.aclose()

    run(body)


def test_a_principal_without_a_plan_is_not_limited(new_limiter) -> None:  # noqa: ANN001
    limiter = new_limiter()

    async def body() -> None:
        admission = await limiter.admit(make_principal(None), request_id="free", tokens=10**9)
        assert (admission.requests, admission.tokens, admission.backend) == (None, None, "none")
        assert openai_headers(admission) == {}
        await limiter.finish(admission, actual_tokens=5)
        await limiter.aclose()

    run(body)


# --- headers ------------------------------------------------------------------------------------------


def test_duration_format_matches_openai() -> None:
    assert [format_duration(s) for s in (1, 59, 60, 360, 3600, 3723, 388_799)] == [
        "1s",
        "59s",
        "1m0s",
        "6m0s",
        "1h0m0s",
        "1h2m3s",
        "107h59m59s",
    ]


def test_openai_and_anthropic_headers_report_the_tightest_limits(new_limiter) -> None:  # noqa: ANN001
    limiter = new_limiter()
    principal = make_principal(make_plan(rpm=20, tpm=20_000, window_requests=100, window_seconds=3 * 3600, weekly=1000))

    async def body() -> None:
        admission = await limiter.admit(principal, request_id="one", tokens=1500)
        assert openai_headers(admission) == {
            "x-ratelimit-limit-requests": "20",
            "x-ratelimit-remaining-requests": "19",
            "x-ratelimit-reset-requests": "59s",
            "x-ratelimit-limit-tokens": "20000",
            "x-ratelimit-remaining-tokens": "18500",
            "x-ratelimit-reset-tokens": "59s",
        }
        assert anthropic_headers(admission) == {
            "anthropic-ratelimit-requests-limit": "20",
            "anthropic-ratelimit-requests-remaining": "19",
            "anthropic-ratelimit-requests-reset": "2025-06-04T12:01:00Z",
            "anthropic-ratelimit-tokens-limit": "20000",
            "anthropic-ratelimit-tokens-remaining": "18500",
            "anthropic-ratelimit-tokens-reset": "2025-06-04T12:01:00Z",
        }
        await limiter.aclose()

    run(body)


def test_headers_switch_to_the_allowance_when_it_is_tighter(new_limiter) -> None:  # noqa: ANN001
    limiter = new_limiter()
    principal = make_principal(make_plan(rpm=20, window_requests=3, window_seconds=3 * 3600))

    async def body() -> None:
        await admit_many(limiter, principal, 2)
        admission = await limiter.admit(principal, request_id="third")
        # 12:00:01 in the 12:00-15:00 window: 2h59m59s to go; rpm has 17 left, the window none.
        assert openai_headers(admission) == {
            "x-ratelimit-limit-requests": "3",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "2h59m59s",
        }
        assert anthropic_headers(admission)["anthropic-ratelimit-requests-reset"] == "2025-06-04T15:00:00Z"
        await limiter.aclose()

    run(body)


@pytest.mark.parametrize("surface", ["openai", "anthropic"])
def test_a_429_carries_retry_after_and_the_surface_headers(new_limiter, clock, surface: str) -> None:  # noqa: ANN001
    limiter = new_limiter()
    principal = make_principal(make_plan(rpm=2, tpm=1000))
    clock.t += 45.25  # 12:00:46.25: 13.75 s left in the minute

    async def body() -> None:
        await admit_many(limiter, principal, 2, tokens=100)
        with pytest.raises(RateLimited) as denied:
            await limiter.admit(principal, request_id="third", tokens=100, surface=surface)  # type: ignore[arg-type]
        headers = denied.value.headers
        assert headers["retry-after"] == "14"
        assert denied.value.message == "API key requests per minute limit of 2 reached; resets in 14s"
        if surface == "openai":
            assert headers == {
                "retry-after": "14",
                "x-ratelimit-limit-requests": "2",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "14s",
                "x-ratelimit-limit-tokens": "1000",
                "x-ratelimit-remaining-tokens": "800",
                "x-ratelimit-reset-tokens": "14s",
            }
        else:
            assert headers == {
                "retry-after": "14",
                "anthropic-ratelimit-requests-limit": "2",
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-requests-reset": "2025-06-04T12:01:00Z",
                "anthropic-ratelimit-tokens-limit": "1000",
                "anthropic-ratelimit-tokens-remaining": "800",
                "anthropic-ratelimit-tokens-reset": "2025-06-04T12:01:00Z",
            }
        await limiter.aclose()

    run(body)


# --- Redis specifics ------------------------------------------------------------------------------


def test_every_redis_key_has_a_ttl(prefix: str, clock: Clock) -> None:
    limiter = Limiter(redis_url=REDIS_FOR_TESTS, prefix=prefix, now=clock)
    principal = make_principal(make_plan(rpm=10, tpm=1000, concurrent=5, window_requests=50, weekly=100))

    async def body() -> None:
        first = await limiter.admit(principal, request_id="a", tokens=10)
        await limiter.admit(principal, request_id="b", tokens=10)
        clock.t += 60
        await limiter.finish(first, actual_tokens=20)  # settles into a window that still exists
        await limiter.aclose()

    run(body)
    client = redis.Redis.from_url(REDIS_FOR_TESTS)
    keys = sorted(k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=1000))
    ttls = {key: client.pttl(key) for key in keys}
    client.close()
    assert len(keys) == 2 * 4 + 2  # rpm, tpm, window, week and the slot set, for the key and the org
    assert all(ttl > 0 for ttl in ttls.values()), ttls


def test_from_settings_reads_the_prefix_and_the_fail_mode(settings) -> None:  # noqa: ANN001
    settings.PORTAL_LIMITS_PREFIX = "custom"
    settings.PORTAL_LIMITS_FAIL_MODE = "closed"
    limiter = Limiter.from_settings()
    assert (limiter.prefix, limiter.fail_mode, limiter.redis_url) == ("custom", "closed", settings.REDIS_URL or None)
    settings.PORTAL_LIMITS_FAIL_MODE = "sideways"
    with pytest.raises(ValueError):
        Limiter.from_settings()


def test_a_dead_redis_fails_open_to_the_in_process_limiter_and_logs_once(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    limiter = Limiter(redis_url=DEAD_REDIS, prefix=prefix, now=Clock(), fail_mode="open")
    principal = make_principal(make_plan(rpm=3, concurrent=10))
    durations: list[float] = []

    async def timed_admit(request_id: str) -> Admission | GatewayError:
        started = time.perf_counter()
        try:
            return await limiter.admit(principal, request_id=request_id)
        except GatewayError as exc:
            return exc
        finally:
            durations.append(time.perf_counter() - started)

    async def body() -> list[Admission | GatewayError]:
        results = [await timed_admit(f"r{i}") for i in range(5)]
        await asyncio.sleep(1.1)  # the circuit closes: Redis is tried (and fails) again, without a second log line
        results.append(await timed_admit("later"))
        for result in results:
            if isinstance(result, Admission):
                await limiter.finish(result, actual_tokens=None)
        return results

    with caplog.at_level(logging.ERROR, logger="gateway.limits"):
        results = run(body)
    # Same semantics per process: 3 per minute, then 429.
    assert [type(r).__name__ for r in results] == ["Admission"] * 3 + ["RateLimited"] * 3
    assert all(r.backend == "local" for r in admitted(results))
    assert (limiter.redis_failures, limiter.fallback_admissions) == (2, 6)
    lines = [r for r in caplog.records if r.name == "gateway.limits"]
    assert len(lines) == 1 and "failing OPEN" in lines[0].getMessage()
    assert max(durations) < 0.5, durations


def test_slots_whose_release_failed_in_a_redis_stall_are_released_when_redis_answers_again(prefix: str) -> None:
    # A real stall: CLIENT PAUSE holds every write on the Redis server for 700 ms, longer than the
    # limiter's 300 ms call timeout. The clock is frozen, so the slots cannot expire by their TTL here.
    limiter = Limiter(redis_url=REDIS_FOR_TESTS, prefix=prefix, now=Clock(), fail_mode="open")
    principal = make_principal(make_plan(concurrent=2))
    admin = redis.Redis.from_url(REDIS_FOR_TESTS)

    async def body() -> tuple[list[str], list[str], list[str]]:
        first = [await limiter.admit(principal, request_id=f"r{i}") for i in (1, 2)]
        assert [a.backend for a in first] == ["redis", "redis"]
        admin.execute_command("CLIENT", "PAUSE", 700, "WRITE")
        for admission in first:
            await limiter.finish(admission, actual_tokens=None)  # each times out: the slots stay taken in Redis
        await asyncio.sleep(0.4)  # a settlement is not waited for: it fails when its call times out (0.3 s)
        assert limiter.redis_failures == 1  # one failure: the second fell with the connection the timeout closed
        slot_keys = first[0].slot_keys  # the key's and the organization's concurrency sets
        await asyncio.sleep(1.2)  # the pause is over and the limiter's circuit has closed again
        held = sorted(m.decode() for key in slot_keys for m in admin.zrange(key, 0, -1))
        second = [await limiter.admit(principal, request_id=f"r{i}") for i in (3, 4)]  # released first, then admitted
        now_held = sorted(m.decode() for key in slot_keys for m in admin.zrange(key, 0, -1))
        for admission in second:
            await limiter.finish(admission, actual_tokens=None)
        await limiter.aclose()
        return held, [a.backend for a in second], now_held

    try:
        held_before, backends, held_after = run(body)
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
    assert held_before == ["r1", "r1", "r2", "r2"]  # what used to stay taken until the slots' TTL (300 s)
    assert backends == ["redis", "redis"]  # a limit of 2 admits two more: both old slots are free
    assert held_after == ["r3", "r3", "r4", "r4"]
    assert limiter.releases_retried == 2


def test_a_dead_redis_fails_closed_with_503_when_configured(prefix: str) -> None:
    limiter = Limiter(redis_url=DEAD_REDIS, prefix=prefix, now=Clock(), fail_mode="closed")
    principal = make_principal(make_plan(rpm=3))

    async def body() -> None:
        for i in range(3):
            started = time.perf_counter()
            with pytest.raises(LimitsUnavailable) as failed:
                await limiter.admit(principal, request_id=f"r{i}")
            assert time.perf_counter() - started < 0.5
            assert (failed.value.status, failed.value.openai_type, failed.value.code) == (503, "api_error", "limits_unavailable")
            assert failed.value.headers == {"retry-after": "1"}
        assert limiter.fallback_admissions == 0

    run(body)


def test_a_redis_that_accepts_but_never_answers_is_bounded_by_the_timeout(prefix: str) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # connections complete in the backlog; nothing ever replies
    port = silent.getsockname()[1]
    limiter = Limiter(redis_url=f"redis://127.0.0.1:{port}/0", prefix=prefix, now=Clock(), fail_mode="open")
    principal = make_principal(make_plan(rpm=3))

    async def body() -> list[float]:
        durations = []
        for i in range(2):
            started = time.perf_counter()
            admission = await limiter.admit(principal, request_id=f"r{i}")
            durations.append(time.perf_counter() - started)
            assert admission.backend == "local"
        await limiter.aclose()
        return durations

    try:
        durations = run(body)
    finally:
        silent.close()
    assert durations[0] < 0.5, durations
    assert durations[1] < 0.05, durations  # the circuit is open: Redis is not even tried
