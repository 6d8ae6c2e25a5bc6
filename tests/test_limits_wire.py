"""The limiter's own Redis wire (gateway/limits/wire.py) and what is kept per principal (gateway/limits/layout.py):
a script Redis does not know is loaded and the call sent again, a caller that gives up leaves the connection in
step, a settlement is on the wire before finish() returns, a layout is rebuilt when its window ends, and a key's
principal is kept only while the records it was made of are the cache's. Real Redis, a prefix per test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis

from gateway.limits import Limiter, policy
from gateway.limits.stores import ADMIT_LUA, FINISH_LUA
from gateway.limits.wire import Wire, command, script_sha
from tests.support.live import REDIS_FOR_TESTS
from tests.test_limits import Clock, make_plan, make_principal, run, scratch_prefix


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from scratch_prefix("limwire")


def test_a_script_redis_does_not_know_is_loaded_and_the_call_sent_again(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Scripts Redis has never seen (what a restart or SCRIPT FLUSH leaves), without flushing a shared server's cache.
    token = uuid.uuid4().hex
    admit, finish = f"{ADMIT_LUA}-- {token}\n", f"{FINISH_LUA}-- {token}\n"
    for name, value in (("ADMIT_LUA", admit), ("FINISH_LUA", finish)):
        monkeypatch.setattr(policy, name, value)
    monkeypatch.setattr(policy, "ADMIT_SHA", script_sha(admit))
    monkeypatch.setattr(policy, "FINISH_SHA", script_sha(finish))
    admin = redis.Redis.from_url(REDIS_FOR_TESTS)
    assert admin.script_exists(script_sha(admit), script_sha(finish)) == [False, False]
    limiter = Limiter(redis_url=REDIS_FOR_TESTS, prefix=prefix, now=Clock())
    principal = make_principal(make_plan(rpm=5, tpm=1000, concurrent=1))

    async def body() -> None:
        first = await limiter.admit(principal, request_id="r1", tokens=100)
        assert first.backend == "redis" and first.reserved_tokens == 100
        await limiter.finish(first, actual_tokens=30)
        await limiter.aclose()  # waits for the settlement's reply (NOSCRIPT, then loaded and sent again)
        second = await limiter.admit(principal, request_id="r2", tokens=100)  # the slot is free again
        assert second.tokens is not None and second.tokens.remaining == 1000 - 30 - 100
        await limiter.aclose()

    run(body)
    assert admin.script_exists(script_sha(admit), script_sha(finish)) == [True, True]
    assert (limiter.redis_failures, limiter.fallback_admissions) == (0, 0)
    admin.close()


def test_a_caller_that_gives_up_leaves_the_connection_in_step() -> None:
    async def body() -> list[object]:
        wire = Wire(REDIS_FOR_TESTS, timeouts=(0.3, 1.5), scripts={})
        line = await wire.line(False)
        abandoned = asyncio.ensure_future(wire.call(command("ECHO", "first"), money=False))
        await asyncio.sleep(0)  # written (at the end of this turn), then given up before its reply
        abandoned.cancel()
        replies = [await wire.call(command("ECHO", f"r{i}"), money=False) for i in range(3)]
        assert wire.ready(False) is line  # the same connection: a cancelled caller is no reason to drop it
        wire.close()
        return replies

    assert run(body) == [b"r0", b"r1", b"r2"]


def test_a_settlement_is_in_redis_when_the_next_admission_of_the_process_runs(prefix: str) -> None:
    limiter = Limiter(redis_url=REDIS_FOR_TESTS, prefix=prefix, now=Clock())
    principal = make_principal(make_plan(concurrent=1, tpm=1000))

    async def body() -> None:
        for i in range(20):  # never waited for, yet each frees the one slot before the next admission asks
            admission = await limiter.admit(principal, request_id=f"r{i}", tokens=50)
            await limiter.finish(admission, actual_tokens=10)
        last = await limiter.admit(principal, request_id="last", tokens=0)
        assert last.tokens is not None and last.tokens.remaining == 1000 - 20 * 10
        await limiter.aclose()

    run(body)


def test_a_layout_is_kept_within_its_windows_and_built_again_when_one_ends(prefix: str) -> None:
    clock = Clock()
    limiter = Limiter(redis_url=REDIS_FOR_TESTS, prefix=prefix, now=clock)
    principal = make_principal(make_plan(rpm=2, window_requests=100, window_seconds=3600))

    async def body() -> None:
        await limiter.admit(principal, request_id="r1")
        kept = principal.limits_layouts[(None, False)]
        clock.t += 30  # the same minute
        await limiter.admit(principal, request_id="r2")
        assert principal.limits_layouts[(None, False)] is kept
        clock.t += 30  # the next minute: new counter keys
        admission = await limiter.admit(principal, request_id="r3")
        assert principal.limits_layouts[(None, False)] is not kept
        assert admission.requests is not None and admission.requests.remaining == 1  # a fresh minute's counter
        await limiter.aclose()

    run(body)
    assert replace(principal, key_id=2).limits_layouts == {}  # a copy never shares the original's


def test_a_keys_principal_is_kept_while_its_records_are_the_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    from apikeys.selectors import KeyRecord
    from gateway import auth
    from gateway.state import state

    plan = make_plan(rpm=5)
    monkeypatch.setattr(state, "snapshot", replace(state.snapshot, plans={1: plan}, model_overrides={}))
    monkeypatch.setattr(auth, "_principals", {})
    record = KeyRecord(
        key_id=9, public_id="p", key_hash="h", organization_id=3, organization_slug="o", organization_active=True,
        plan_id=1, expires_at=None, revoked=False,
    )  # fmt: skip
    first = run(lambda: auth.principal_of(record))
    assert run(lambda: auth.principal_of(record)) is first
    changed = replace(record, requests_per_minute=1)  # the key's row changed: a new record object in the cache
    again = run(lambda: auth.principal_of(changed))
    assert again is not first and again.key_requests_per_minute == 1
    monkeypatch.setattr(state, "snapshot", replace(state.snapshot, plans={1: replace(plan, requests_per_minute=7)}))
    replanned = run(lambda: auth.principal_of(changed))
    assert replanned is not again and replanned.plan is not None and replanned.plan.requests_per_minute == 7
