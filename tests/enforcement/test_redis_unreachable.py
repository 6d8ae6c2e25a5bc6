"""Redis unreachable: the limiter fails open to per-process limits (or closed, as configured), loudly."""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import httpx
import redis

from simulator import SimulatorServer
from tests.support.enforcement import (
    CHAT,
    DEAD_REDIS,
    ENVELOPE,
    MESSAGES,
    SURFACES,
    expect_error,
    make_plan,
    minute_room,
    models,
    new_org_key,
    ratelimit_headers,
    remaining_requests,
    send,
)
from tests.support.live import (
    ALIAS,
    LiveGateway,
    issue_key,
    live_gateway_env,
    needs_shared_redis,
    wait_for,
    wait_until_gateway_caught_up,
    wait_until_usage_written,
)
from tests.support.relay import CuttableRelay
from usage.models import RequestLog, UsageEvent

# --- Redis unreachable ---------------------------------------------------------------------------------------------


def test_a_dead_redis_fails_open_to_per_process_limits(
    gateway: LiveGateway, sim: SimulatorServer, own_gateways: list[LiveGateway]
) -> None:
    dead = LiveGateway(env=live_gateway_env(sim.base_url, REDIS_URL=DEAD_REDIS))
    own_gateways.append(dead)
    dead.start()
    # Live (it serves, from per-process limits) but not ready: the load balancer keeps it, an alert fires.
    health = httpx.get(f"{dead.url}/health", headers=dead.operator_headers, timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert health.json()["checks"]["database"] == "ok" and health.json()["checks"]["cache"] != "ok"
    assert httpx.get(f"{dead.url}/ready", timeout=10).status_code == 503

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


@needs_shared_redis
def test_a_redis_outage_falls_back_per_process_and_recovers(gateway: LiveGateway, own_gateways: list[LiveGateway]) -> None:
    real = urlsplit(gateway.env["REDIS_URL"])
    proxy = CuttableRelay((real.hostname or "127.0.0.1", real.port or 6379)).start()  # an outage of this gateway's Redis only
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
        proxy.cut()
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
        proxy.cut()


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
