"""Fixtures for tests that start gateways of their own (loaded with `pytest_plugins = ["tests.support.fixtures"]`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from billing.services import plans_seed_defaults
from routerpools.config import parse_router_env
from routerpools.services import router_pools_sync
from simulator import SimulatorServer
from tests.conftest import IssuedKey, LiveGateway, issue_key, live_gateway_env, router_env, wait_until_gateway_caught_up
from tests.support.plans import FAST_HEALTH, big_plan


@pytest.fixture
def routed(transactional_db, sim: SimulatorServer) -> IssuedKey:  # noqa: ANN001
    """Plans, the simulator's pool (sessions 101 and 102) and a key on a plan without practical limits."""
    plans_seed_defaults()
    router_pools_sync(config=parse_router_env(router_env(sim.base_url)))
    return issue_key(slug=f"own-{uuid.uuid4().hex[:8]}", plan=big_plan().slug)


@pytest.fixture
def start_gateway(routed: IssuedKey, sim: SimulatorServer) -> Iterator[Callable[..., LiveGateway]]:
    """Starts gateways of the test's own with FAST_HEALTH and `env`; stopped before the database is emptied under them."""
    started: list[LiveGateway] = []

    def start(**env: str) -> LiveGateway:
        gateway = LiveGateway(env=live_gateway_env(sim.base_url, **{**FAST_HEALTH, **env}))
        started.append(gateway)
        gateway.start()
        wait_until_gateway_caught_up(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()
