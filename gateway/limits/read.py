"""The limiter's public read API: an organization's allowance counters, read without touching them (portal.allowances)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.limits.checks import QUOTA_KINDS
from gateway.limits.stores import SOCKET_TIMEOUT_S
from gateway.principal import Principal

if TYPE_CHECKING:
    from billing.selectors import PlanRecord
    from gateway.limits.policy import Limiter

log = logging.getLogger("gateway.limits")

# --- A read-only look at an organization's allowances, for the portal's billing page ----------------------


@dataclass(frozen=True, slots=True)
class AllowanceCounter:
    """One of an organization's request allowances (the short window or the week) as the limiter counts it now."""

    kind: str  # WINDOW or WEEKLY
    limit: int
    window_s: int
    starts_at: float  # epoch seconds: the fixed window's start, included
    resets_at: float  # epoch seconds: the next window's start
    used: int | None  # the organization's counter; None when not read (no Redis, or it did not answer)


def allowance_counters(
    organization_id: int, plan: PlanRecord | None, *, now: float, source: Limiter | None = None
) -> list[AllowanceCounter]:
    """The organization's window and weekly allowances, with the windows and store keys admission uses; writes nothing.

    Sync, for the portal's sync views: one MGET on a short-lived client with the limiter's socket timeouts. The
    in-process store is never read (it holds one process's admissions only): `used` is None without Redis, and
    the caller counts usage rows instead.
    """
    import redis as sync_redis
    from redis.retry import Retry as SyncRetry

    if source is None:
        from gateway import limits  # the package's limiter, looked up now: a process or a test may have replaced it

        source = limits.limiter
    organization = Principal(key_id=0, organization_id=organization_id, organization_slug="", plan=plan)
    checks = [c for c in source._checks(organization, now=now, tokens=0) if c.scope == "organization" and c.kind in QUOTA_KINDS]
    used: list[int | None] = [None] * len(checks)
    if checks and source.redis_url:
        client = sync_redis.Redis.from_url(
            source.redis_url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry=SyncRetry(NoBackoff(), 0),
        )
        try:
            used = [int(value or 0) for value in client.mget([c.store_key for c in checks])]
        except (RedisError, OSError) as exc:
            log.warning("allowance counters unreadable (%s: %s); counting usage rows instead", exc.__class__.__name__, exc)
        finally:
            client.close()
    return [
        AllowanceCounter(
            kind=check.kind,
            limit=check.limit,
            window_s=check.window_s,
            starts_at=check.reset_at - check.window_s,
            resets_at=check.reset_at,
            used=value,
        )
        for check, value in zip(checks, used, strict=True)
        if check.reset_at is not None
    ]
