"""Fixtures of the enforcement tests: a second gateway process (one for the whole package), aliases, own gateways.

End-to-end enforcement through live daphne gateways: entitlements, rate limits, allowances, headers, billing.

Every test drives real HTTP against `gateway` (the session's daphne process on the test database and the
test Redis) and, where the issue asks for "every process", a second daphne sharing both. Plans are made
per test through the ORM (as the admin would), so numbers are small and counts exact. Tests that count
within a fixed window first make sure the window has room left (`window_room`), so none straddles a boundary.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from routerpools.models import ModelAlias, RouterPool
from simulator import SimulatorServer
from tests.support.live import (
    ALIAS,
    LiveGateway,
    wait_until_gateway_caught_up,
    wait_until_usage_written,
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


@pytest.fixture
def other_alias(gateway: LiveGateway) -> ModelAlias:
    pool = RouterPool.objects.get(name=ALIAS)
    return ModelAlias.objects.create(alias=OTHER_ALIAS, pool=pool)


@pytest.fixture(scope="package")
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
