"""Django's psycopg pool on PostgreSQL: connections reused, never more than PORTAL_DB_POOL_MAX per process, a
saturated or absent database fails fast rather than hanging the request."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from django.conf import settings
from django.db import connection

from simulator import SimulatorServer
from tests.support.live import IssuedKey, LiveGateway, issue_key, live_gateway_env, wait_for
from tests.support.plans import FAST_HEALTH
from tests.support.traffic import CHAT, post
from tests.test_config import SUPABASE_POOLER, _databases, base_env, manage_check

pytest_plugins = ["tests.support.fixtures"]
pytestmark = pytest.mark.skipif(connection.vendor != "postgresql", reason="the pool is PostgreSQL's (psycopg)")

POOL_MAX = 3


def test_the_settings_pool_postgresql_connections_without_persistent_ones() -> None:
    db = settings.DATABASES["default"]
    assert db["CONN_MAX_AGE"] == 0  # Django refuses a pool with persistent connections
    pool = db["OPTIONS"]["pool"]
    assert (pool["min_size"], pool["max_size"]) == (settings.PORTAL_DB_POOL_MIN, settings.PORTAL_DB_POOL_MAX)
    assert pool["timeout"] == settings.PORTAL_DB_POOL_TIMEOUT_S
    assert db["OPTIONS"]["connect_timeout"] == 5


def _server_connections(application_name: str) -> int:
    admin = {**settings.DATABASES["default"]}
    with psycopg.connect(
        host=admin["HOST"],
        port=admin["PORT"],
        user=admin["USER"],
        password=admin["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [application_name]).fetchone()[0]


@pytest.fixture
def pooled_gateway(routed: IssuedKey, sim: SimulatorServer) -> Iterator[tuple[LiveGateway, str]]:
    """A gateway with a pool of POOL_MAX whose server connections carry an application_name of their own."""
    name = f"pool-test-{uuid.uuid4().hex[:8]}"
    env = live_gateway_env(sim.base_url, PORTAL_DB_POOL_MIN="1", PORTAL_DB_POOL_MAX=str(POOL_MAX), **FAST_HEALTH)
    env["DATABASE_URL"] += f"?application_name={name}"
    gateway = LiveGateway(env=env).start()
    try:
        yield gateway, name
    finally:
        gateway.stop()


def _ready(gateway: LiveGateway) -> dict:
    return httpx.get(f"{gateway.url}/ready", headers=gateway.operator_headers, timeout=10).json()


def test_concurrent_requests_share_at_most_pool_max_server_connections_reused_across_requests(
    pooled_gateway: tuple[LiveGateway, str], sim: SimulatorServer
) -> None:
    gateway, name = pooled_gateway
    wait_for(lambda: _ready(gateway)["status"] == "ready", timeout=10, interval=0.1)
    # Keys this process has never seen: each first request looks its key up in the database (a cache miss), and
    # every request leaves usage rows for the recorder to write: the database is on the path of all of them.
    keys = [issue_key(slug=f"pool-{i}-{uuid.uuid4().hex[:6]}") for i in range(24)]
    sim.configure(token_delay_ms=5)
    counts: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            counts.append(_server_connections(name))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    statuses: list[int] = []
    lock = threading.Lock()

    def one(key: IssuedKey) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(3):
                status = post(client, gateway.url, key.raw, CHAT, text=f"pool {i}", max_tokens=4).status_code
                with lock:
                    statuses.append(status)

    workers = [threading.Thread(target=one, args=(key,)) for key in keys]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    wait_for(
        lambda: httpx.get(f"{gateway.url}/health", headers=gateway.operator_headers, timeout=5).json()["usage_queue_depth"] == 0,
        timeout=15,
    )
    stop.set()
    sampler.join(5)

    assert statuses == [200] * len(keys) * 3
    assert counts and 1 <= max(counts) <= POOL_MAX, counts
    pool = _ready(gateway)["db_pool"]
    assert pool["max"] == POOL_MAX and pool["size"] <= POOL_MAX, pool
    # Far more connections handed out than opened: the same few server connections served every request. Each key's
    # first request is a cache miss that takes a connection; the recorder's batches take more, but how many depends on
    # how the rows happened to batch, so the floor is the lookups alone (8x what was opened).
    assert pool["opened"] <= POOL_MAX and pool["handed_out"] >= len(keys), pool


def test_the_pool_is_sized_from_the_environment_and_left_off_behind_the_transaction_pooler() -> None:
    db = _databases(base_env(PORTAL_DB_POOL_MIN="4", PORTAL_DB_POOL_MAX="12", PORTAL_DB_POOL_TIMEOUT_MS="500"))
    assert db["CONN_MAX_AGE"] == 0
    assert {k: db["OPTIONS"]["pool"][k] for k in ("min_size", "max_size", "timeout")} == {
        "min_size": 4, "max_size": 12, "timeout": 0.5,
    }  # fmt: skip
    pooler = _databases(base_env(DATABASE_URL=None, PORTAL_SUPABASE_DB_URL=SUPABASE_POOLER))
    assert "pool" not in pooler["OPTIONS"] and pooler["CONN_MAX_AGE"] == 0
    assert "pool" not in _databases(base_env(PORTAL_DB_POOLER="1"))["OPTIONS"]


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            {"PORTAL_DB_POOL_MIN": "3", "PORTAL_DB_POOL_MAX": "2"},
            "PORTAL_DB_POOL_MIN: must be at most PORTAL_DB_POOL_MAX (2), got 3",
        ),
        ({"PORTAL_DB_POOL_MAX": "ten"}, "PORTAL_DB_POOL_MAX: expected an integer, got 'ten'"),
        ({"PORTAL_DB_POOL_MAX": "0"}, "PORTAL_DB_POOL_MAX: must be at least 1, got 0"),
        ({"PORTAL_DB_POOL_TIMEOUT_MS": "10"}, "PORTAL_DB_POOL_TIMEOUT_MS: must be at least 100, got 10"),
    ],
)
def test_bad_pool_settings_stop_start_up_with_one_line(overrides: dict[str, str], line: str) -> None:
    result = manage_check(base_env(**overrides))
    assert result.returncode == 2 and result.stderr == f"configuration error: {line}\n", result.stderr
