"""Start-up and shutdown of a gateway process under daphne: apply the env pools; on SIGTERM stop listening, let the
requests in flight finish (up to PORTAL_SHUTDOWN_GRACE_S), then flush usage."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from types import FrameType
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections

from apikeys.unkey import unkey_client
from gateway import dbstats, metrics
from gateway.limits import limiter
from gateway.recorder import recorder
from gateway.state import state
from gateway.upstream import upstreams
from routerpools.services import router_pools_sync

log = logging.getLogger("gateway.lifecycle")

_draining = False  # set on the first SIGTERM, for good: /health answers 503 on the connections still open


def draining() -> bool:
    return _draining


def on_server_start() -> None:
    """Called once from asgi.py, before daphne serves: sync context, so the ORM may be used here."""
    dbstats.install()
    config = settings.PORTAL_ROUTER_ENV
    if not config.is_empty:
        try:
            result = router_pools_sync(config=config)
            if result.changed:
                log.info(
                    "router pools from the environment applied: %d created, %d updated, %d removed",
                    result.created,
                    result.updated,
                    result.removed,
                )
        except DatabaseError as exc:
            # Serve anyway: pools already in the database (or a later poll) still route.
            log.error("could not apply router pools from the environment: %s", exc.__class__.__name__)
    # The main thread does no more database work: give its connection back (to the pool, which would otherwise
    # have one fewer for the rest of the process's life). Not inside a transaction (a test importing this module).
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close()
    _register_shutdown()


CANCELLED_CLEANUP_S = 2.0  # for the requests daphne cancels at shutdown to close their upstreams and record usage


async def _requests_done(within_s: float) -> int:
    """Wait until no request is in flight, for at most `within_s`; returns how many still are."""
    deadline = time.monotonic() + within_s
    while True:
        left = metrics.inflight_requests()
        if left == 0 or time.monotonic() >= deadline:
            return left
        await asyncio.sleep(0.05)


async def shutdown() -> None:
    """Stop background work and write every buffered usage row."""
    # daphne cancels whatever still runs in this same shutdown phase; let those requests record their usage
    # (a cancelled stream leaves a "cancelled" row) before the last flush, or their rows would be lost.
    await _requests_done(CANCELLED_CLEANUP_S)
    state.stop()
    await recorder.drain()
    recorder.stop()
    await upstreams.aclose()
    await limiter.aclose()
    await unkey_client().aclose()


def _register_shutdown() -> None:
    # daphne has no ASGI lifespan; it runs on Twisted's asyncio reactor, whose
    # "before shutdown" triggers may return a Deferred that shutdown waits for.
    if "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    def before_shutdown() -> Deferred:
        return Deferred.fromFuture(asyncio.ensure_future(shutdown()))

    # Twisted types the reactor as its zope interface, whose methods lack self: mypy shifts the arguments by one.
    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)  # type: ignore[arg-type]
    # Twisted's own SIGTERM handler stops the reactor at once, and daphne then cancels every request in flight:
    # streams cut mid-answer. Ours, installed once the reactor runs (after Twisted's), drains first.
    reactor.callWhenRunning(_install_graceful_sigterm, reactor)


def _install_graceful_sigterm(reactor: Any) -> None:
    draining: list[asyncio.Future[None]] = []  # the drain task, held so it cannot be garbage-collected mid-way

    def begin() -> None:
        if draining:
            log.warning("second SIGTERM: stopping without waiting for the requests in flight")
            _stop(reactor)
            return
        draining.append(asyncio.ensure_future(_drain_then_stop(reactor)))

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(begin)  # a signal handler may run between any two bytecodes: hop onto the loop

    signal.signal(signal.SIGTERM, on_sigterm)


async def _drain_then_stop(reactor: Any) -> None:
    """Stop accepting connections (the load balancer moves on), wait for the requests in flight, then stop."""
    from twisted.internet import tcp

    global _draining
    _draining = True
    grace = settings.PORTAL_SHUTDOWN_GRACE_S
    ports = [reader for reader in reactor.getReaders() if isinstance(reader, tcp.Port)]  # daphne's listening sockets
    for port in ports:
        port.stopListening()
    log.info(
        "SIGTERM: stopped listening on %d socket(s); waiting for %d requests in flight, up to %ds",
        len(ports),
        metrics.inflight_requests(),
        grace,
    )
    left = await _requests_done(grace)
    if left:
        log.warning("shutdown grace period of %ds over: %d requests in flight are cut", grace, left)
    _stop(reactor)


def _stop(reactor: Any) -> None:
    from twisted.internet.error import ReactorNotRunning

    try:
        reactor.stop()
    except ReactorNotRunning:
        pass  # already stopping
