"""Start-up and shutdown of a gateway process under daphne: apply the env pools, flush usage on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys

from django.conf import settings
from django.db import DatabaseError

from apikeys.unkey import unkey_client
from gateway import dbstats
from gateway.limits import limiter
from gateway.recorder import recorder
from gateway.state import state
from gateway.upstream import upstreams
from routerpools.services import router_pools_sync

log = logging.getLogger("gateway.lifecycle")


def on_server_start() -> None:
    """Called once from asgi.py, before daphne serves: sync context, so the ORM may be used here."""
    dbstats.install()
    config = settings.PORTAL_ROUTER_ENV
    if not config.is_empty:
        try:
            result = router_pools_sync(config=config)
            if result.changed:
                log.info("router pools from the environment applied: %d created, %d updated, %d removed",
                         result.created, result.updated, result.removed)
        except DatabaseError as exc:
            # Serve anyway: pools already in the database (or a later poll) still route.
            log.error("could not apply router pools from the environment: %s", exc.__class__.__name__)
    _register_shutdown()


async def shutdown() -> None:
    """Stop background work and write every buffered usage row."""
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

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
