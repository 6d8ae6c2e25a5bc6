"""Shared fixtures: the real PostgreSQL and Redis, the router simulator, and live daphne gateways.

The helpers they use, and that test modules import, live in tests/support/live.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from simulator import SimulatorServer
from tests.support import live
from tests.support.live import (
    ROUTER_KEY,
    SESSION_102_KEY,
    IssuedKey,
    LiveGateway,
    issue_key,
    live_gateway_env,
    router_env,
    seed_routing,
    wait_until_gateway_caught_up,
    wait_until_usage_written,
)


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


@pytest.fixture
def gateway(transactional_db, live_server_process: LiveGateway, sim: SimulatorServer) -> Iterator[LiveGateway]:  # noqa: ANN001
    """A live gateway whose database holds the routing and plans; each test starts from an empty database."""
    live.LIVE_ROUTER_ENV.clear()
    live.LIVE_ROUTER_ENV.update(router_env(sim.base_url))
    seed_routing()
    wait_until_gateway_caught_up(live_server_process)
    yield live_server_process
    # Let the gateway write this test's rows before the database is emptied under it.
    time.sleep(0.06)
    wait_until_usage_written(live_server_process)


@pytest.fixture
def api_key(gateway: LiveGateway) -> IssuedKey:
    return issue_key()
