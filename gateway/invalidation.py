"""Cross-process cache invalidation, targeted: a change names what it touched (this key, this organization, the
routing table, the plans), so every gateway process drops exactly that and keeps the rest.

The write side: a signal on every model a gateway caches appends a row to the change log (gateway.CacheChange) in
the writer's own transaction, and once that commits publishes the change on Redis pub/sub. Appending never waits
on another writer (the old design bumped one counter row, and every write of every sign-up queued on it).

The read side (gateway/state.py): every process subscribes and applies a change as it arrives; a poll of the log
every PORTAL_CACHE_POLL_S is the fallback that catches what pub/sub dropped (Redis away, a reconnect, a publish
that failed), and the only path without Redis. Applying a change twice is harmless, so both may see it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Model, Q
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.utils import timezone

from gateway.models import CacheChange

log = logging.getLogger("gateway.invalidation")

Scope = CacheChange.Scope
PUBLISH_TIMEOUT_S = 0.5  # a writer (a sign-up, an admin save) waits at most this for Redis, then leaves it to the poll
READ_BATCH = 5000


class Change(NamedTuple):
    id: int
    scope: str
    ident: str


# --- write side ----------------------------------------------------------------------------------------------------


def record_change(scope: str, ident: str = "") -> None:
    """Append a change in the current transaction; publish it to every gateway process once that commits."""
    row = CacheChange.objects.create(scope=scope, ident=ident)
    change = Change(row.pk, scope, ident)
    transaction.on_commit(lambda: publish(change))


def channel_name() -> str:
    # Derived from the database: changes are about one database, and every process on it (the gateway's and the
    # portal's, a test's and its live servers') computes the same name, while other databases' never collide.
    return settings.PORTAL_CACHE_CHANNEL or f"portal-cache:{connection.settings_dict['NAME']}"


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def _publisher(url: str) -> Any:
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            import redis

            client = _clients[url] = redis.Redis.from_url(
                url, socket_timeout=PUBLISH_TIMEOUT_S, socket_connect_timeout=PUBLISH_TIMEOUT_S
            )
        return client


def publish(change: Change) -> None:
    """Best effort: the change is in the log already, so a Redis failure only delays it to the next poll."""
    url = settings.REDIS_URL
    if not url:
        return
    try:
        _publisher(url).publish(channel_name(), json.dumps(change._asdict()))
    except Exception as exc:  # never the URL: it may carry a password
        log.warning(
            "cache change %s not published (%s); gateway processes see it at their next poll", change.id, exc.__class__.__name__
        )


# --- read side (run in a worker thread by gateway/state.py) -----------------------------------------------------------


def read_position() -> int:
    """The newest change in the log, 0 for an empty log: where a process that loads everything now stands."""
    return CacheChange.objects.aggregate(top=Max("id"))["top"] or 0


def read_changes(position: int, gaps: list[int]) -> list[Change]:
    """The change at `position` (proof the log was not emptied or pruned past it), the ones after it, and any of
    the `gaps` (ids skipped below it: a transaction still open then, or rolled back) that have committed since."""
    wanted = Q(id__gte=position)
    if gaps:
        wanted |= Q(id__in=gaps)
    rows = CacheChange.objects.filter(wanted).order_by("id").values_list("id", "scope", "ident")[:READ_BATCH]
    return [Change(*row) for row in rows]


def prune_changes(retention_s: float) -> int:
    """Delete changes older than the retention, the newest always kept: it is where every caught-up process stands,
    and a log with it gone looks emptied (and makes every process reload everything)."""
    newest = read_position()
    cutoff = timezone.now() - timedelta(seconds=retention_s)
    deleted, _ = CacheChange.objects.filter(created__lt=cutoff, id__lt=newest).delete()
    return deleted


def parse_message(data: bytes | str) -> Change | None:
    try:
        body = json.loads(data)
        change = Change(int(body["id"]), str(body["scope"]), str(body.get("ident", "")))
    except (ValueError, TypeError, KeyError):
        return None
    return change if change.scope in Scope.values else None


# --- what each model's changes touch ----------------------------------------------------------------------------------
# Not watched: Membership and User. A key record (apikeys/selectors.py's KeyRecord) holds the key's own fields and
# its organization's slug, status and plan, nothing about who belongs to it, so a sign-up's user and membership
# rows touch no cache. PlanSubscription is watched as its organization although the plan a key record holds is
# Organization.plan (saved with the organization): cheap, and safe should a subscription ever carry more.


def _key_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    if kwargs.get("raw"):  # loaddata
        return
    record_change(Scope.KEY, instance.public_id)
    if instance.external_id:
        record_change(Scope.UNKEY, instance.external_id)


def _org_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    if not kwargs.get("raw"):
        record_change(Scope.ORG, str(instance.pk))


def _subscription_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    if not kwargs.get("raw"):
        record_change(Scope.ORG, str(instance.organization_id))


def _routes_changed(sender: Any, **kwargs: Any) -> None:
    if not kwargs.get("raw"):
        record_change(Scope.ROUTES)


def _plans_changed(sender: Any, **kwargs: Any) -> None:
    if kwargs.get("raw"):
        return
    if kwargs.get("action", "post_").startswith("pre_"):  # m2m_changed fires before and after: once is enough
        return
    record_change(Scope.PLANS)


def _alias_changed(sender: Any, **kwargs: Any) -> None:
    # An alias is a route, and plans' allow-lists and the overrides name aliases: a rename touches both tables.
    if not kwargs.get("raw"):
        record_change(Scope.ROUTES)
        record_change(Scope.PLANS)


def connect_signals() -> None:
    from accounts.models import Organization
    from apikeys.models import ApiKey
    from billing.models import ModelAccessOverride, ModelPrice, Plan, PlanSubscription
    from routerpools.models import ModelAlias, RouterEndpoint, RouterPool, RouterSession

    receivers: list[tuple[type[Model], Callable[..., None]]] = [
        (ApiKey, _key_changed),
        (Organization, _org_changed),
        (PlanSubscription, _subscription_changed),
        (Plan, _plans_changed),
        (ModelAccessOverride, _plans_changed),  # rare admin edits: the whole overrides table is one small query
        (ModelPrice, _plans_changed),  # prices are loaded with the plans (state.price)
        (RouterPool, _routes_changed),
        (RouterEndpoint, _routes_changed),
        (RouterSession, _routes_changed),
        (ModelAlias, _alias_changed),
    ]
    for model, receiver in receivers:
        post_save.connect(receiver, sender=model, dispatch_uid=f"cache-change-save-{model.__name__}")
        post_delete.connect(receiver, sender=model, dispatch_uid=f"cache-change-delete-{model.__name__}")
    m2m_changed.connect(_plans_changed, sender=Plan.allowed_aliases.through, dispatch_uid="cache-change-plan-aliases")
