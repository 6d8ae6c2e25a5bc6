"""Shared fixtures: the real PostgreSQL and Redis, the router simulator, and live daphne gateways."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from simulator import SimulatorServer

ROOT = Path(__file__).resolve().parent.parent
# Tests about Redis itself use the machine's real Redis even when the suite runs in the embedded
# mode (`make test-sqlite`, no REDIS_URL); sharing limits across processes needs REDIS_URL set.
REDIS_FOR_TESTS = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"
needs_shared_redis = pytest.mark.skipif(
    not os.environ.get("REDIS_URL"), reason="several gateway processes share limits only through Redis (REDIS_URL unset)"
)
ROUTER_KEY = "router-secret"
# The live gateways' PORTAL_METRICS_TOKEN: /metrics and the details of /health (queue depth, cache position) want it.
METRICS_TOKEN = "test-metrics-token-not-for-production"
SESSION_102_KEY = "session-102-secret"
ALIAS = "oss-20b"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def router_env(sim_url: str, *, alias: str = ALIAS) -> dict[str, str]:
    """The PORTAL_ROUTER_* maps of one alias on the simulator, sessions 101 and 102."""
    return {
        "PORTAL_ROUTER_POOLS_JSON": json.dumps({alias: sim_url}),
        "PORTAL_ROUTER_MODEL_SESSIONS_JSON": json.dumps({alias: [101, 102]}),
        "PORTAL_ROUTER_MODEL_AUTH_KEYS_JSON": json.dumps({alias: ROUTER_KEY}),
        "PORTAL_ROUTER_SESSION_AUTH_KEYS_JSON": json.dumps({"102": SESSION_102_KEY}),
        "PORTAL_DEFAULT_MODEL": alias,
    }


def _database_url_for_live_server() -> str:
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


@dataclass
class LiveGateway:
    """A daphne process serving portal_project.asgi:application against the test database."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    daphne_args: tuple[str, ...] = ()  # more daphne options, e.g. ("--proxy-headers",)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def operator_headers(self) -> dict[str, str]:
        """What /metrics and the details of /health want: this gateway's PORTAL_METRICS_TOKEN as a Bearer token."""
        token = self.env.get("PORTAL_METRICS_TOKEN")
        return {"authorization": f"Bearer {token}"} if token else {}

    def start(self) -> LiveGateway:
        fd, name = tempfile.mkstemp(prefix="daphne-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(self.port), *self.daphne_args,
                 "portal_project.asgi:application"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code in (200, 503):
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"daphne did not answer /health in time:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def live_gateway_env(sim_url: str, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(router_env(sim_url))
    env.update(
        {
            "DATABASE_URL": _database_url_for_live_server(),
            "PORTAL_CACHE_POLL_MS": "100",
            "PORTAL_USAGE_FLUSH_MS": "50",
            "PORTAL_UPSTREAM_TIMEOUT_S": "20",
            # One gateway serves many tests: a circuit a test opened must not outlive it by much.
            "PORTAL_BREAKER_COOLDOWN_MS": "1000",
            "PORTAL_HEALTH_INTERVAL_MS": "1000",
            "LOG_LEVEL": "INFO",
            "PORTAL_METRICS_TOKEN": METRICS_TOKEN,
            # Fresh rate-limit counters per test session: ids restart with each new test database.
            "PORTAL_LIMITS_PREFIX": f"lim-test-{uuid.uuid4().hex[:12]}",
        }
    )
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorServer]:
    server = SimulatorServer(auth_key=ROUTER_KEY).start()
    server.configure(sessions={"102": {"auth_key": SESSION_102_KEY}})
    yield server
    server.stop()


@pytest.fixture
def sim(simulator: SimulatorServer) -> Iterator[SimulatorServer]:
    """The shared simulator with its start-up knobs and zeroed stats for this test."""
    simulator.reset()
    simulator.configure(sessions={"102": {"auth_key": SESSION_102_KEY}})
    yield simulator
    simulator.reset()
    simulator.configure(sessions={"102": {"auth_key": SESSION_102_KEY}})


@pytest.fixture(scope="session")
def live_server_process(django_db_setup, django_db_blocker, simulator: SimulatorServer) -> Iterator[LiveGateway]:  # noqa: ANN001
    gateway = LiveGateway(env=live_gateway_env(simulator.base_url)).start()
    yield gateway
    gateway.stop()


def seed_routing() -> None:
    """What a fresh deployment has: the env pools synced and the default plans; idempotent."""
    from billing.services import plans_seed_defaults
    from routerpools.config import parse_router_env
    from routerpools.services import router_pools_sync

    plans_seed_defaults()
    router_pools_sync(config=parse_router_env(_LIVE_ROUTER_ENV))


_LIVE_ROUTER_ENV: dict[str, str] = {}


def wait_until_gateway_caught_up(gateway: LiveGateway, timeout: float = 10.0) -> None:
    """Block until the gateway has applied every cache change the database holds (its newest change id)."""
    from gateway.invalidation import read_position

    epoch = read_position()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{gateway.url}/health", headers=gateway.operator_headers, timeout=2).json().get("cache_epoch") == epoch:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.02)
    pytest.fail(f"gateway did not apply cache change {epoch} in {timeout}s:\n{gateway.log()[-3000:]}")


def wait_until_usage_written(gateway: LiveGateway, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{gateway.url}/health", headers=gateway.operator_headers, timeout=2).json().get("usage_queue_depth") == 0:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.02)


@pytest.fixture
def gateway(transactional_db, live_server_process: LiveGateway, sim: SimulatorServer) -> Iterator[LiveGateway]:  # noqa: ANN001
    """A live gateway whose database holds the routing and plans; each test starts from an empty database."""
    _LIVE_ROUTER_ENV.clear()
    _LIVE_ROUTER_ENV.update(router_env(sim.base_url))
    seed_routing()
    wait_until_gateway_caught_up(live_server_process)
    yield live_server_process
    # Let the gateway write this test's rows before the database is emptied under it.
    time.sleep(0.06)
    wait_until_usage_written(live_server_process)


@dataclass
class IssuedKey:
    raw: str
    key_id: int
    organization_id: int
    organization_slug: str


def issue_key(*, slug: str = "acme", plan: str | None = "pro", name: str = "test key") -> IssuedKey:
    from accounts.models import Organization
    from apikeys.services import apikey_create
    from billing.services import organization_create

    org = Organization.objects.filter(slug=slug).first() or organization_create(slug=slug, name=slug.title(), plan_slug=plan)
    created = apikey_create(organization=org, name=name, actor_label="tests")
    return IssuedKey(raw=created.raw, key_id=created.api_key.pk, organization_id=org.pk, organization_slug=org.slug)


@pytest.fixture
def api_key(gateway: LiveGateway) -> IssuedKey:
    return issue_key()


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05):  # noqa: ANN001, ANN201
    """Poll until predicate() is truthy; returns its value or fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)
