"""Liveness (/health) and readiness (/ready) of a live gateway: a dependency away degrades the first and fails the
second; only a process that cannot serve (draining, or its state never loaded) fails its liveness probe."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from django.db import connection

from simulator import SimulatorServer
from tests.support.live import REDIS_FOR_TESTS, IssuedKey, LiveGateway, live_gateway_env, wait_for
from tests.support.plans import FAST_HEALTH
from tests.support.relay import CuttableRelay
from tests.support.traffic import CHAT, body_for, headers_for, post

pytest_plugins = ["tests.support.fixtures"]

needs_postgres = pytest.mark.skipif(connection.vendor != "postgresql", reason="the database is cut through a TCP relay")
PROBE_BOUND_S = 5.0  # each check has 2 s; the whole probe must come back well within the client's patience


def _via(url: str, port: int) -> str:
    """`url` with its host and port replaced by the relay's."""
    parts = urlsplit(url)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{port}"))


def _target(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def probe(gateway: LiveGateway, path: str, client: httpx.Client | None = None) -> tuple[int, dict, float]:
    started = time.monotonic()
    getter = client.get if client is not None else httpx.get
    response = getter(f"{gateway.url}{path}", headers=gateway.operator_headers, timeout=PROBE_BOUND_S + 5)
    return response.status_code, response.json(), time.monotonic() - started


@pytest.fixture
def relayed_gateway(routed: IssuedKey, sim: SimulatorServer) -> Iterator[Callable[..., tuple[LiveGateway, CuttableRelay]]]:
    """Starts a gateway whose database (`what="database"`) or Redis (`what="redis"`) is reached through a relay."""
    started: list[tuple[LiveGateway, CuttableRelay]] = []

    def start(what: str, *, cut_first: bool = False, **env: str) -> tuple[LiveGateway, CuttableRelay]:
        base = live_gateway_env(sim.base_url, **{**FAST_HEALTH, **env})
        if what == "database":
            relay = CuttableRelay(_target(base["DATABASE_URL"], 5432)).start()
            base["DATABASE_URL"] = _via(base["DATABASE_URL"], relay.port)
        else:
            relay = CuttableRelay(_target(base["REDIS_URL"], 6379)).start()
            base["REDIS_URL"] = _via(base["REDIS_URL"], relay.port)
        if cut_first:
            relay.cut()
        gateway = LiveGateway(env=base)
        started.append((gateway, relay))
        gateway.start()
        return gateway, relay

    yield start
    for gateway, relay in started:
        gateway.stop()
        relay.cut()


def _serves(gateway: LiveGateway, key: IssuedKey) -> int:
    with httpx.Client(timeout=30) as client:
        return post(client, gateway.url, key.raw, CHAT, text="probe", max_tokens=4).status_code


@needs_postgres
def test_a_database_cut_degrades_health_but_keeps_it_200_and_fails_ready(
    routed: IssuedKey, relayed_gateway: Callable[..., tuple[LiveGateway, CuttableRelay]]
) -> None:
    gateway, relay = relayed_gateway("database")
    wait_for(lambda: probe(gateway, "/ready")[0] == 200, timeout=10, interval=0.1)
    status, body, _ = probe(gateway, "/health")
    assert (status, body["status"], body["checks"]["database"]) == (200, "ok", "ok")
    assert _serves(gateway, routed) == 200  # the key is now in this process's cache

    relay.cut()
    status, body, took = probe(gateway, "/health")
    assert status == 200, body
    assert body["status"] == "degraded" and "database" in body["failing"], body
    assert body["checks"]["database"].startswith("error"), body
    assert took < PROBE_BOUND_S
    # Anyone (the load balancer) sees the status and what fails, not the details.
    public = httpx.get(f"{gateway.url}/health", timeout=PROBE_BOUND_S + 5).json()
    assert set(public) == {"status", "models", "failing"} and public["status"] == "degraded"
    status, body, took = probe(gateway, "/ready")
    assert status == 503 and body["status"] == "not_ready" and "database" in body["failing"], body
    assert took < PROBE_BOUND_S
    assert _serves(gateway, routed) == 200  # served from the cache through the outage

    relay.start()  # the same port again
    wait_for(lambda: probe(gateway, "/ready")[0] == 200, timeout=15, interval=0.2)
    status, body, _ = probe(gateway, "/health")
    assert (status, body["status"]) == (200, "ok") and "failing" not in body


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="without REDIS_URL the cache is in memory: nothing to cut")
def test_redis_unreachable_degrades_health_but_keeps_it_200_and_fails_ready(
    routed: IssuedKey, relayed_gateway: Callable[..., tuple[LiveGateway, CuttableRelay]]
) -> None:
    assert REDIS_FOR_TESTS
    gateway, relay = relayed_gateway("redis")
    wait_for(lambda: probe(gateway, "/ready")[0] == 200, timeout=10, interval=0.1)
    relay.cut()
    status, body, took = probe(gateway, "/health")
    assert status == 200 and body["status"] == "degraded" and body["failing"] == ["cache"], body
    assert took < PROBE_BOUND_S
    status, body, took = probe(gateway, "/ready")
    assert status == 503 and body["failing"] == ["cache"], body
    assert took < PROBE_BOUND_S
    assert _serves(gateway, routed) == 200  # limits fail open (PORTAL_LIMITS_FAIL_MODE), keys come from memory
    relay.start()
    wait_for(lambda: probe(gateway, "/ready")[0] == 200, timeout=15, interval=0.2)


@needs_postgres
def test_a_process_whose_state_never_loaded_is_not_alive_until_it_does(
    routed: IssuedKey, relayed_gateway: Callable[..., tuple[LiveGateway, CuttableRelay]]
) -> None:
    gateway, relay = relayed_gateway("database", cut_first=True)
    status, body, took = probe(gateway, "/health")
    assert status == 503 and body["status"] == "starting" and "state" in body["failing"], body
    assert took < PROBE_BOUND_S
    assert probe(gateway, "/ready")[0] == 503
    relay.start()
    wait_for(lambda: probe(gateway, "/health")[0] == 200, timeout=15, interval=0.2)
    assert _serves(gateway, routed) == 200


def test_a_draining_process_fails_both_probes_on_the_connections_it_still_serves(
    routed: IssuedKey, sim: SimulatorServer, start_gateway: Callable[..., LiveGateway]
) -> None:
    gateway = start_gateway(PORTAL_SHUTDOWN_GRACE_S="15")
    sim.configure(token_delay_ms=100, answer_tokens=30)  # a stream of about three seconds keeps the drain going
    ended = threading.Event()

    def stream() -> None:
        with (
            httpx.Client(timeout=30) as client,
            client.stream(
                "POST",
                f"{gateway.url}{CHAT}",
                json=body_for(CHAT, text="drain", max_tokens=64, stream=True),
                headers=headers_for(routed.raw, CHAT),
            ) as response,
        ):
            response.read()
        ended.set()

    # One kept-alive connection, opened before the SIGTERM: a load balancer's probe connection.
    with httpx.Client(timeout=10) as prober:
        assert probe(gateway, "/health", prober)[0] == 200
        threading.Thread(target=stream, daemon=True).start()
        wait_for(lambda: sim.stats()["streams_open"] == 1, timeout=5, interval=0.02)
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        status, body, _ = wait_for(lambda: (r := probe(gateway, "/health", prober))[0] == 503 and r, timeout=3, interval=0.05)
        assert body["status"] == "draining", body
        status, body, _ = probe(gateway, "/ready", prober)
        assert status == 503 and "draining" in body["failing"], body
        assert not ended.is_set()  # the stream was still going: this was the drain, not a stopped process
    assert ended.wait(20)
    assert gateway.process.wait(timeout=10) == 0
