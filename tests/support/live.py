"""What the tests share: the router simulator's routing, live daphne gateways, keys, and waits that fail loudly.

Imported by test modules (`from tests.support.live import ...`); tests/conftest.py holds only the fixtures.
"""

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
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
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
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-v",
                    "0",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    *self.daphne_args,
                    "portal_project.asgi:application",
                ],
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


def seed_routing() -> None:
    """What a fresh deployment has: the env pools synced and the default plans; idempotent."""
    from billing.services import plans_seed_defaults
    from routerpools.config import parse_router_env
    from routerpools.services import router_pools_sync

    plans_seed_defaults()
    router_pools_sync(config=parse_router_env(LIVE_ROUTER_ENV))


LIVE_ROUTER_ENV: dict[str, str] = {}


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
    """Block until the gateway's usage writer has nothing left in memory; fails the test (loudly) when it does not."""
    deadline = time.monotonic() + timeout
    depth: object = "no answer"
    while time.monotonic() < deadline:
        try:
            depth = (
                httpx.get(f"{gateway.url}/health", headers=gateway.operator_headers, timeout=2).json().get("usage_queue_depth")
            )
            if depth == 0:
                return
        except (httpx.HTTPError, ValueError) as exc:
            depth = f"{exc.__class__.__name__}"
        time.sleep(0.02)
    pytest.fail(f"gateway still held usage rows after {timeout}s (queue depth: {depth}):\n{gateway.log()[-3000:]}")


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
