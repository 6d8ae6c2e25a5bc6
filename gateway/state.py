"""What the gateway keeps in memory: key records, the routing table and plans, refreshed when the epoch moves."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings

from apikeys.selectors import KeyRecord, apikey_record, apikey_record_by_external_id
from billing.selectors import PlanRecord, model_overrides_table, plan_table
from gateway.db import db_call
from gateway.invalidation import read_epoch
from routerpools.selectors import AliasRoute, routing_table

log = logging.getLogger("gateway.state")

NEGATIVE_TTL_S = 5.0  # unknown public ids and Unkey key ids: also dropped whenever the epoch moves
MAX_NEGATIVE = 100_000


@dataclass(slots=True)
class Snapshot:
    routes: dict[str, AliasRoute] = field(default_factory=dict)
    plans: dict[int, PlanRecord] = field(default_factory=dict)
    model_overrides: dict[int, dict[str, bool]] = field(default_factory=dict)


class GatewayState:
    """One per process. Reads come from dicts; the database is only asked on a miss or a change."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()
        self.epoch: int | None = None
        self.generation = 0  # bumped locally on every invalidation, guards racing lookups
        self._keys: dict[str, KeyRecord] = {}  # by public id (local keys)
        self._unkey_keys: dict[str, KeyRecord] = {}  # by Unkey's keyId (Unkey-issued keys)
        # Both kinds of lookup share the negative cache and the in-flight futures, under ("public"|"unkey", id).
        self._missing: dict[tuple[str, str], float] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[KeyRecord | None]] = {}
        self._loaded = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: asyncio.Task[None] | None = None
        self._load_lock: asyncio.Lock | None = None

    # --- life cycle -----------------------------------------------------------------------
    async def ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # First request, or a new event loop (tests): start the poller on this loop.
            self._loop = loop
            self._loaded = asyncio.Event()
            self._load_lock = asyncio.Lock()
            self._inflight = {}
            # A context of its own: started from some request, its log lines must not carry that request's id.
            self._poller = loop.create_task(self._poll_forever(), name="gateway-epoch-poller", context=contextvars.Context())
        if not self._loaded.is_set():
            await self._load_if_needed()

    @property
    def loaded(self) -> bool:
        """The routing table, plans and overrides were loaded at least once: the process can serve from cache."""
        return self._loaded.is_set()

    async def _load_if_needed(self) -> None:
        assert self._load_lock is not None
        async with self._load_lock:
            if self._loaded.is_set():
                return
            await self.reload()

    async def reload(self) -> None:
        epoch = await db_call(read_epoch)
        routes = await db_call(routing_table)
        plans = await db_call(plan_table)
        overrides = await db_call(model_overrides_table)
        self.snapshot = Snapshot(routes=routes, plans=plans, model_overrides=overrides)
        self._invalidate_keys()
        self.epoch = epoch
        self._loaded.set()

    def _invalidate_keys(self) -> None:
        self.generation += 1
        self._keys = {}
        self._unkey_keys = {}
        self._missing = {}

    async def _poll_forever(self) -> None:
        interval = settings.PORTAL_CACHE_POLL_S
        while True:
            await asyncio.sleep(interval)
            try:
                epoch = await db_call(read_epoch)
                if epoch != self.epoch:
                    await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database away: keep serving from what we have
                log.warning("cache refresh failed; serving cached keys and pools: %s", exc.__class__.__name__)
                await asyncio.sleep(min(5.0, interval * 4))

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        self._loop = None

    # --- reads ----------------------------------------------------------------------------------
    async def key_record(self, public_id: str) -> KeyRecord | None:
        return await self._cached_record(self._keys, ("public", public_id), apikey_record, public_id=public_id)

    async def unkey_key_record(self, external_id: str) -> KeyRecord | None:
        """Our row of an Unkey-issued key, by Unkey's keyId: what a valid verification is cross-checked with."""
        return await self._cached_record(
            self._unkey_keys, ("unkey", external_id), apikey_record_by_external_id, external_id=external_id
        )

    async def _cached_record(
        self, found: dict[str, KeyRecord], ref: tuple[str, str], load: Callable[..., KeyRecord | None], **query: str
    ) -> KeyRecord | None:
        ident = ref[1]
        record = found.get(ident)
        if record is not None:
            return record
        missing_until = self._missing.get(ref)
        if missing_until is not None and missing_until > time.monotonic():
            return None
        pending = self._inflight.get(ref)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[KeyRecord | None] = asyncio.get_running_loop().create_future()
        self._inflight[ref] = future
        generation = self.generation
        try:
            record = await db_call(load, **query)
            if generation == self.generation:
                if record is None:
                    if len(self._missing) > MAX_NEGATIVE:
                        self._missing = {}
                    self._missing[ref] = time.monotonic() + NEGATIVE_TTL_S
                else:
                    found[ident] = record  # still the current dict: an invalidation would have moved the generation
            future.set_result(record)
            return record
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else should warn
            raise
        finally:
            self._inflight.pop(ref, None)

    def routes(self) -> dict[str, AliasRoute]:
        return self.snapshot.routes

    def route(self, alias: str) -> AliasRoute | None:
        return self.snapshot.routes.get(alias)

    async def plan_fresh(self, plan_id: int) -> PlanRecord | None:
        """A plan this process has not loaded yet (just created, or the poller is behind): reload once, coalesced."""
        assert self._load_lock is not None
        async with self._load_lock:
            if plan_id not in self.snapshot.plans:
                await self.reload()
        return self.snapshot.plans.get(plan_id)

    def plan(self, plan_id: int | None) -> PlanRecord | None:
        return self.snapshot.plans.get(plan_id) if plan_id is not None else None


state = GatewayState()
