"""What the gateway keeps in memory: key records, the routing table and plans, kept fresh change by change.

Changes (gateway/invalidation.py) arrive over Redis pub/sub at once, and from a poll of the change log as the
fallback. A key change drops that key's record, an organization change the records of that organization's keys,
neither costs a query; a routing or plan change reloads that one table off the request path. Only a log that was
emptied or pruned past this process (it could not read it for longer than the retention) reloads everything.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from django.conf import settings

from apikeys.selectors import KeyRecord, apikey_record, apikey_record_by_external_id
from billing.selectors import PlanRecord, PriceTable, model_overrides_table, plan_table, price_in, price_table
from billing.services import Price
from gateway.db import db_call
from gateway.invalidation import (
    READ_BATCH,
    Change,
    Scope,
    channel_name,
    parse_message,
    prune_changes,
    read_changes,
    read_position,
)
from routerpools.selectors import AliasRoute, routing_table

log = logging.getLogger("gateway.state")

NEGATIVE_TTL_S = 5.0  # unknown public ids and Unkey key ids; a key's own change drops its entry at once
MAX_NEGATIVE = 100_000
# An id skipped below the position is a transaction that had not committed when we read past it (or one that
# rolled back): the poll asks for it again this long. Pub/sub delivers it on commit in any case.
GAP_WAIT_S = 300.0
MAX_GAPS = 1000
RECENT_CHANGES = 4096  # targeted changes remembered so a lookup in flight across one does not store a stale record
PRUNE_EVERY_S = 60.0
PUBSUB_BACKOFF_MAX_S = 5.0


@dataclass(slots=True)
class Snapshot:
    routes: dict[str, AliasRoute] = field(default_factory=dict)
    plans: dict[int, PlanRecord] = field(default_factory=dict)
    model_overrides: dict[int, dict[str, bool]] = field(default_factory=dict)
    prices: PriceTable = field(default_factory=dict)  # loaded with the plans, reloaded on every ModelPrice change


Ref = tuple[str, str]  # ("public", public id) or ("unkey", Unkey keyId); ("org", id) in the recent changes


class GatewayState:
    """One per process. Reads come from dicts; the database is only asked on a miss or a change."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()
        # The newest change of the log this process has applied (the poll moves it; /health reports it as
        # cache_epoch). None: nothing loaded yet.
        self.position: int | None = None
        self.generation = 0  # bumped on every full reload, guards racing lookups
        self.pubsub_connected = False
        self._keys: dict[str, KeyRecord] = {}  # by public id (local keys)
        self._unkey_keys: dict[str, KeyRecord] = {}  # by Unkey's keyId (Unkey-issued keys)
        self._org_refs: dict[int, set[Ref]] = {}  # organization id → the refs of its cached records
        # Both kinds of lookup share the negative cache and the in-flight futures, under ("public"|"unkey", id).
        self._missing: dict[Ref, float] = {}
        self._inflight: dict[Ref, asyncio.Future[KeyRecord | None]] = {}
        self._seq = 0  # counts targeted changes applied; _recent holds the last ones, newest last
        self._recent: collections.deque[tuple[int, Ref]] = collections.deque(maxlen=RECENT_CHANGES)
        self._gaps: dict[int, float] = {}  # id → when first skipped
        self._heard: dict[int, float] = {}  # ids applied from pub/sub that the poll has not read yet: not again
        self._loaded = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._load_lock: asyncio.Lock | None = None
        self._next_prune = 0.0

    # --- life cycle -----------------------------------------------------------------------
    async def ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # First request, or a new event loop (tests): start the poller and the listener on this loop.
            self._loop = loop
            self._loaded = asyncio.Event()
            self._wake = asyncio.Event()
            self._load_lock = asyncio.Lock()
            self._inflight = {}
            self._next_prune = time.monotonic() + PRUNE_EVERY_S * random.uniform(0.5, 1.5)
            # Contexts of their own: started from some request, their log lines must not carry that request's id,
            # and their statements are not that request's (gateway/dbstats.py counts the /v1 path apart).
            self._poller = loop.create_task(self._poll_forever(), name="gateway-cache-poller", context=contextvars.Context())
            if settings.REDIS_URL:
                self._listener = loop.create_task(
                    self._listen_forever(), name="gateway-cache-listener", context=contextvars.Context()
                )
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
            await self._reload_all()

    async def reload(self) -> None:
        """Everything again: the tables and every key record (the first load; a log emptied or pruned past us)."""
        assert self._load_lock is not None
        async with self._load_lock:
            await self._reload_all()

    async def _reload_all(self) -> None:
        # The position first: a change committed while the tables load is read again by the next poll, and
        # applying it to tables that already hold it is harmless.
        position = await db_call(read_position)
        routes = await db_call(routing_table)
        plans = await db_call(plan_table)
        overrides = await db_call(model_overrides_table)
        prices = await db_call(price_table)
        self.snapshot = Snapshot(routes=routes, plans=plans, model_overrides=overrides, prices=prices)
        self.generation += 1
        self._keys = {}
        self._unkey_keys = {}
        self._org_refs = {}
        self._missing = {}
        self._gaps = {}
        self._heard = {}
        self.position = position
        self._loaded.set()

    def stop(self) -> None:
        for task in (self._poller, self._listener):
            if task is not None:
                task.cancel()
        self._poller = self._listener = None
        self.pubsub_connected = False
        self._loop = None

    # --- applying changes -------------------------------------------------------------------------
    async def apply(self, changes: Iterable[Change]) -> None:
        """Drop what the changes touched; reload each table they name once, whatever their number."""
        tables: set[str] = set()
        for change in changes:
            if change.scope == Scope.KEY:
                self._drop(("public", change.ident))
            elif change.scope == Scope.UNKEY:
                self._drop(("unkey", change.ident))
            elif change.scope == Scope.ORG:
                self._drop_organization(change.ident)
            elif change.scope in (Scope.ROUTES, Scope.PLANS):
                tables.add(change.scope)
        if tables:
            assert self._load_lock is not None
            # Under the load lock: two reloads of one table finishing out of order would leave the older one.
            async with self._load_lock:
                await self._reload_tables(tables)

    async def _reload_tables(self, tables: set[str]) -> None:
        routes = await db_call(routing_table) if Scope.ROUTES in tables else None
        if Scope.PLANS in tables:
            plans = await db_call(plan_table)
            overrides = await db_call(model_overrides_table)
            prices = await db_call(price_table)
            self.snapshot = replace(self.snapshot, plans=plans, model_overrides=overrides, prices=prices)
        if routes is not None:
            self.snapshot = replace(self.snapshot, routes=routes)

    def _remember(self, ref: Ref) -> None:
        self._seq += 1
        self._recent.append((self._seq, ref))

    def _drop(self, ref: Ref) -> None:
        self._remember(ref)
        (self._keys if ref[0] == "public" else self._unkey_keys).pop(ref[1], None)
        self._missing.pop(ref, None)

    def _drop_organization(self, ident: str) -> None:
        try:
            org_id = int(ident)
        except ValueError:
            return
        self._remember(("org", str(org_id)))
        for ref in self._org_refs.pop(org_id, ()):
            (self._keys if ref[0] == "public" else self._unkey_keys).pop(ref[1], None)

    def _changed_since(self, seq: int, ref: Ref, record: KeyRecord | None) -> bool:
        """Whether a change to this key, or to the organization of the record just read, was applied after `seq`."""
        if self._seq == seq:
            return False
        if self._seq - seq >= len(self._recent):
            return True  # more changes than remembered: assume the worst, the next lookup reads it again
        org = ("org", str(record.organization_id)) if record is not None else None
        for applied, changed in reversed(self._recent):
            if applied <= seq:
                return False
            if changed == ref or changed == org:
                return True
        return False

    async def _poll_forever(self) -> None:
        interval = settings.PORTAL_CACHE_POLL_S
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database away: keep serving from what we have
                log.warning("cache refresh failed; serving cached keys and pools: %s", exc.__class__.__name__)
                await asyncio.sleep(min(5.0, interval * 4))
                continue
            await self._prune_now_and_then()

    async def poll_once(self) -> None:
        """Apply the changes of the log after our position, and the skipped ones that have committed since."""
        if self.position is None:
            await self.reload()
            return
        while True:
            position, generation = self.position, self.generation
            changes = await db_call(read_changes, position, list(self._gaps))
            if self.generation != generation:  # a full reload ran meanwhile: it read the log itself
                return
            if position and not any(c.id == position for c in changes):
                # The change we stand on is gone: the log was emptied (a restored or flushed database), or pruned
                # past us after we could not read it for longer than the retention. What we missed is unknown.
                log.info("cache change log moved past this process; reloading everything")
                await self.reload()
                return
            now = time.monotonic()
            fresh = [c for c in changes if c.id != position]
            ids = {c.id for c in fresh}
            top = max(ids, default=position)
            for skipped in range(max(position + 1, top - MAX_GAPS), top):
                if skipped not in ids:
                    self._gaps.setdefault(skipped, now)
            for stale in [i for i, since in self._gaps.items() if i in ids or now - since > GAP_WAIT_S]:
                del self._gaps[stale]
            if len(self._gaps) > MAX_GAPS:
                for oldest in sorted(self._gaps)[: len(self._gaps) - MAX_GAPS]:
                    del self._gaps[oldest]
            await self.apply(c for c in fresh if self._heard.pop(c.id, None) is None)
            self._heard = {i: at for i, at in self._heard.items() if now - at < GAP_WAIT_S}
            if self.generation != generation:
                return
            self.position = max(self.position or 0, top)  # pub/sub may have moved it past `top` meanwhile
            if len(changes) < READ_BATCH:
                return

    async def _prune_now_and_then(self) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        # Jittered, so a fleet started together does not prune together; every process may, none has to.
        self._next_prune = now + PRUNE_EVERY_S * random.uniform(0.5, 1.5)
        try:
            await db_call(prune_changes, settings.PORTAL_CACHE_RETENTION_S)
        except Exception as exc:
            log.info("cache change log not pruned this time: %s", exc.__class__.__name__)

    async def _listen_forever(self) -> None:
        """Apply changes as Redis publishes them; reconnect with a backoff, and poll at once after every (re)connect
        to catch what was published while we were away."""
        import redis.asyncio as aioredis

        backoff = 0.2
        failing = False
        first = True
        while True:
            # No socket timeout: the reads below carry their own, and redis-py's default (5 s) would break an idle
            # subscription. The health check pings an idle connection, so a dead one is found and replaced.
            client = aioredis.Redis.from_url(
                settings.REDIS_URL, socket_timeout=None, socket_connect_timeout=2, health_check_interval=15
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel_name())
                self.pubsub_connected = True
                if failing:
                    log.info("cache change subscription restored")
                if not first:
                    # Back after a drop: read the log now for what was published meanwhile. Not on the first
                    # connect: the first load has just read it, and the regular poll covers the moment between.
                    self._wake.set()
                failing, backoff = False, 0.2
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    batch: list[Change] = []
                    while message is not None:
                        change = parse_message(message.get("data", b""))
                        if change is not None:
                            batch.append(change)
                        message = await pubsub.get_message(timeout=0) if len(batch) < 1000 else None
                    if batch:
                        await self._apply_heard(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:  # once per outage; the poll carries on meanwhile
                    log.warning(
                        "cache change subscription lost (%s); relying on the poll until it is back", exc.__class__.__name__
                    )
                failing = True
            finally:
                self.pubsub_connected = False
                first = False
                for closing in (pubsub.aclose, client.aclose):
                    try:
                        await closing()
                    except Exception:
                        pass
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, PUBSUB_BACKOFF_MAX_S)

    async def _apply_heard(self, batch: list[Change]) -> None:
        if not self._loaded.is_set() or self.position is None:
            return  # the first load reads everything anyway
        now = time.monotonic()
        new = [c for c in batch if (c.id > self.position or c.id in self._gaps) and c.id not in self._heard]
        for change in new:
            self._heard[change.id] = now
        if new:
            await self.apply(new)
        # The position moves over what pub/sub delivered with no id missing below it (a caught-up process in a
        # quiet moment stands where the log ends); past a gap it waits for the poll, which knows what is missing.
        while self.position is not None and self.position + 1 in self._heard and not self._gaps:
            self.position += 1

    # --- reads ----------------------------------------------------------------------------------
    async def key_record(self, public_id: str) -> KeyRecord | None:
        return await self._cached_record(self._keys, ("public", public_id), apikey_record, public_id=public_id)

    async def unkey_key_record(self, external_id: str) -> KeyRecord | None:
        """Our row of an Unkey-issued key, by Unkey's keyId: what a valid verification is cross-checked with."""
        return await self._cached_record(
            self._unkey_keys, ("unkey", external_id), apikey_record_by_external_id, external_id=external_id
        )

    async def _cached_record(
        self, found: dict[str, KeyRecord], ref: Ref, load: Callable[..., KeyRecord | None], **query: str
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
        generation, seq = self.generation, self._seq
        try:
            record = await db_call(load, **query)
            # Not stored if a reload or a change to this key or its organization landed while we read: what we
            # read may predate it. This caller still gets it (it asked before the change), the next one reads again.
            if generation == self.generation and not self._changed_since(seq, ref, record):
                if record is None:
                    if len(self._missing) > MAX_NEGATIVE:
                        self._missing = {}
                    self._missing[ref] = time.monotonic() + NEGATIVE_TTL_S
                else:
                    # Found by the ref's kind: a full reload would have moved the generation and replaced the dicts.
                    (self._keys if ref[0] == "public" else self._unkey_keys)[ident] = record
                    self._org_refs.setdefault(record.organization_id, set()).add(ref)
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
        """A plan this process has not loaded yet (just created, its change not here yet): reload the plans once,
        coalesced."""
        assert self._load_lock is not None
        async with self._load_lock:
            if plan_id not in self.snapshot.plans:
                await self._reload_tables({Scope.PLANS})
        return self.snapshot.plans.get(plan_id)

    def plan(self, plan_id: int | None) -> PlanRecord | None:
        return self.snapshot.plans.get(plan_id) if plan_id is not None else None

    def price(self, plan_id: int | None, alias: str) -> Price | None:
        """What `alias` costs on `plan_id` (the plan's row wins over the alias-wide one); None: unpriced."""
        return price_in(self.snapshot.prices, plan_id, alias)


state = GatewayState()
