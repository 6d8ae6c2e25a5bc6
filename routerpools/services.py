"""Writing the environment's router maps into the database, idempotently."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from django.db import IntegrityError, models, transaction

from routerpools.config import EnvRouterConfig
from routerpools.models import ModelAlias, RouterEndpoint, RouterPool, RouterSession


@dataclass(frozen=True, slots=True)
class SyncResult:
    created: int
    updated: int
    removed: int

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.removed)


_M = TypeVar("_M", bound=models.Model)


def _upsert(model: type[_M], lookup: dict, values: dict, counts: list[int], *, on_create: dict | None = None) -> _M:
    # _default_manager is each model's `objects` (none declares another); the stubs know it on any Model class.
    obj = model._default_manager.filter(**lookup).first()
    if obj is None:
        counts[0] += 1
        return model._default_manager.create(**lookup, **values, **(on_create or {}))
    dirty = [name for name, value in values.items() if getattr(obj, name) != value]
    if dirty:
        for name in dirty:
            setattr(obj, name, values[name])
        obj.save(update_fields=dirty)
        counts[1] += 1
    return obj


# Only new rows start enabled: a restart must not re-enable what staff disabled in the admin.
# (An alias the sync itself disabled because it left the environment is re-enabled on its return.)
_ENABLED = {"enabled": True}


def router_pools_sync(*, config: EnvRouterConfig) -> SyncResult:
    """Make the env-managed pools, endpoints, sessions and aliases equal to the config.

    Rows that staff created by hand are left alone; an env-managed alias that left the
    environment is disabled rather than deleted, so usage history keeps its name.
    Several gateway processes may run this at once on start-up: a lost race is retried.
    """
    for attempt in range(3):
        try:
            with transaction.atomic():
                return _sync_once(config)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _sync_once(config: EnvRouterConfig) -> SyncResult:
    counts = [0, 0, 0]  # created, updated, removed
    seen_aliases: set[str] = set()
    for spec in config.aliases:
        seen_aliases.add(spec.alias)
        pool = _upsert(RouterPool, {"name": spec.alias}, {"env_managed": True}, counts, on_create=_ENABLED)
        for url in spec.urls:
            _upsert(RouterEndpoint, {"pool": pool, "base_url": url}, {"auth_key": spec.alias_key}, counts, on_create=_ENABLED)
        stale = RouterEndpoint.objects.filter(pool=pool).exclude(base_url__in=spec.urls)
        counts[2] += stale.count()
        for row in stale:
            row.delete()
        for sid in spec.sessions:
            key = spec.session_keys.get(sid, "")
            _upsert(RouterSession, {"pool": pool, "session_id": sid}, {"auth_key": key}, counts, on_create=_ENABLED)
        stale_sessions = RouterSession.objects.filter(pool=pool).exclude(session_id__in=spec.sessions)
        counts[2] += stale_sessions.count()
        for session in stale_sessions:
            session.delete()
        existing = ModelAlias.objects.filter(alias=spec.alias).first()
        if existing is not None and not existing.env_managed:
            continue  # staff own this alias; the env only supplies the pool
        values: dict = {"pool": pool, "env_managed": True}
        if existing is not None and existing.disabled_by_env:
            values.update(enabled=True, disabled_by_env=False)  # back in the environment
        _upsert(ModelAlias, {"alias": spec.alias}, values, counts, on_create=_ENABLED)
    for alias in ModelAlias.objects.filter(env_managed=True, enabled=True).exclude(alias__in=seen_aliases):
        alias.enabled = False
        alias.disabled_by_env = True
        alias.save(update_fields=["enabled", "disabled_by_env"])
        counts[2] += 1
    return SyncResult(created=counts[0], updated=counts[1], removed=counts[2])
