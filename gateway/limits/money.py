"""Money in the admission: a prepaid plan's balance and the spend caps, held in Redis beside the rate limits.

Keys, under the limiter's prefix and the organization's hash tag (`lim:{o<org>}:…`, one cluster slot per
organization, like its counters):

- `cred`, `credn`: the ledger's credits and adjustments (signed micro-units) and their number. Set from the database
  only (a snapshot with more entries wins: the ledger is append-only), when missing and whenever a credit or an
  adjustment commits, from any process (`credits_push`, a LedgerEntry post_save hook run on commit), so a top-up is
  spendable at once; they expire after CREDITS_TTL_S and are read again, which heals a push that Redis missed.
- `spent`: what usage cost (debited, settled and reserved) since the ledger began, no expiry; seeded when missing
  with the ledger's debits. Available balance = cred - spent.
- `org:spend:d:<day start>`, `org:spend:m:<month start>`, and `k<key id>:spend:…`: each period's spend (settled and
  reserved) of the organization and of the key, expiring after their period; seeded when missing from the usage rows
  of the period (their cost_micros).

An admission reserves price x (prompt estimate + the most the answer may use) in the same Lua script as the rate
limits: it is refused (402 prepaid balance, 429 spend cap) when the reservation does not fit, and the request's real
cost replaces the reservation when it ends (FINISH_LUA). A key that is missing stops the script before it changes
anything; the gateway reads the database for it (one query a key, only then) and asks again.

After a Redis flush or restart the keys are seeded again from the database, which lacks only what was not written
yet: the rows in the usage writers' queues (a flush interval's worth, PORTAL_USAGE_FLUSH_MS) and the requests in
flight at the moment of the flush. That much can be spent twice, once; no balance is granted or lost beyond it.
"""

from __future__ import annotations

import logging
import math
import threading
from datetime import UTC, datetime
from typing import Any

from billing.money import format_micros_exact
from billing.selectors import organization_ledger_money
from gateway.errors import GatewayError, InsufficientBalance, SpendCapReached
from gateway.limits.checks import BALANCE, SPEND_DAILY, SPEND_MONTHLY, Admission, MoneyAsk, MoneyCheck, Outcome
from gateway.limits.headers import format_duration, rfc3339
from gateway.limits.stores import CALL_TIMEOUT_S, SEED_LUA, SeedItem, seed_args
from gateway.principal import Principal
from usage.selectors import spend_since

log = logging.getLogger("gateway.limits")

DAY_S = 86400
CREDITS_TTL_S = 600
TTL_MARGIN_S = 3600  # a period's counter outlives it a little: a late settlement still finds it


def money_root(prefix: str, organization_id: int) -> str:
    return f"{prefix}:{{o{organization_id}}}"


def month_bounds(now: float) -> tuple[float, float]:
    """The UTC calendar month holding `now`: its first and the next month's first instant, epoch seconds."""
    moment = datetime.fromtimestamp(now, tz=UTC)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    end = datetime(moment.year + (moment.month == 12), moment.month % 12 + 1, 1, tzinfo=UTC)
    return start.timestamp(), end.timestamp()


def money_checks(principal: Principal, *, prefix: str, now: float) -> tuple[MoneyCheck, ...]:
    """The balance (prepaid plans) and the caps that apply to this key and its organization; () when none does."""
    plan = principal.plan
    caps = (
        ("key", f"k{principal.key_id}", principal.key_spend_cap_daily_micros, principal.key_spend_cap_monthly_micros),
        ("organization", "org", principal.org_spend_cap_daily_micros, principal.org_spend_cap_monthly_micros),
    )
    prepaid = plan is not None and plan.prepaid
    if not prepaid and all(daily is None and monthly is None for _, _, daily, monthly in caps):
        return ()
    root = money_root(prefix, principal.organization_id)
    checks: list[MoneyCheck] = []
    if prepaid:
        checks.append(
            MoneyCheck(
                kind=BALANCE,
                scope="organization",
                store_key=f"{root}:cred",
                count_key=f"{root}:credn",
                spent_key=f"{root}:spent",
                ttl_s=CREDITS_TTL_S,
            )
        )
    day = now // DAY_S * DAY_S
    month: tuple[float, float] | None = None
    for scope, name, daily, monthly in caps:
        if daily is not None:
            checks.append(
                MoneyCheck(
                    kind=SPEND_DAILY,
                    scope=scope,  # type: ignore[arg-type]
                    store_key=f"{root}:{name}:spend:d:{int(day)}",
                    limit=daily,
                    ttl_s=DAY_S + TTL_MARGIN_S,
                    reset_at=day + DAY_S,
                    since=day,
                )
            )
        if monthly is not None:
            month = month or month_bounds(now)
            checks.append(
                MoneyCheck(
                    kind=SPEND_MONTHLY,
                    scope=scope,  # type: ignore[arg-type]
                    store_key=f"{root}:{name}:spend:m:{int(month[0])}",
                    limit=monthly,
                    ttl_s=int(month[1] - month[0]) + TTL_MARGIN_S,
                    reset_at=month[1],
                    since=month[0],
                )
            )
    return tuple(checks)


def money_keys(checks: tuple[MoneyCheck, ...]) -> tuple[str, ...]:
    """What a settlement moves: the spent counter and every cap counter (never the credits: the ledger's)."""
    return tuple(c.spent_key if c.kind == BALANCE else c.store_key for c in checks)


def seed_items(money: MoneyAsk, missing: list[int]) -> list[SeedItem]:
    """Read from the database what the missing keys should hold (run in a worker thread: it queries)."""
    items: list[SeedItem] = []
    for index in missing:
        check = money.checks[index]
        if check.kind == BALANCE:
            ledger = organization_ledger_money(money.organization_id)
            items.append(
                SeedItem(
                    check.store_key,
                    ledger.credits_micros,
                    check.ttl_s,
                    version_key=check.count_key,
                    version=ledger.credit_entries,
                )
            )
            items.append(SeedItem(check.spent_key, ledger.debited_micros, 0))
        else:
            spent = spend_since(
                organization_id=money.organization_id,
                api_key_id=money.key_id if check.scope == "key" else None,
                since=datetime.fromtimestamp(check.since, tz=UTC),
            )
            items.append(SeedItem(check.store_key, spent, check.ttl_s))
    return items


# --- credits pushed from whichever process wrote them -----------------------------------------------------------------

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def _client(url: str) -> Any:
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            import redis

            client = _clients[url] = redis.Redis.from_url(
                url, socket_timeout=CALL_TIMEOUT_S * 2, socket_connect_timeout=CALL_TIMEOUT_S * 2
            )
        return client


def credits_push(organization_id: int) -> None:
    """Put the ledger's credits as they stand into Redis (a newer snapshot than the one held wins), so a credit just
    committed is spendable by every gateway process at once. Best effort: on a Redis failure the credits key expires
    within CREDITS_TTL_S and is read again."""
    from gateway.limits.policy import limiter

    url = limiter.redis_url
    if not url:
        limiter.credits_push_local(organization_id)  # the in-process store: this process is the only one
        return
    ledger = organization_ledger_money(organization_id)
    root = money_root(limiter.prefix, organization_id)
    item = SeedItem(f"{root}:cred", ledger.credits_micros, CREDITS_TTL_S, f"{root}:credn", ledger.credit_entries)
    keys, args = seed_args([item])
    try:
        _client(url).eval(SEED_LUA, len(keys), *keys, *args)
    except Exception as exc:  # never the URL: it may carry a password
        log.warning(
            "credits of organization %s not pushed to the limiter (%s); spendable within %ss",
            organization_id,
            exc.__class__.__name__,
            CREDITS_TTL_S,
        )


def _ledger_entry_saved(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    from django.db import transaction

    if kwargs.get("raw") or instance.kind == "debit":
        return
    organization_id = instance.organization_id
    transaction.on_commit(lambda: credits_push(organization_id))


def balance_forget(organization_id: int) -> None:
    """Drop an organization's balance keys: `spent` is kept only while its plan is prepaid, so an organization that
    leaves pay-as-you-go and comes back later is seeded afresh from the ledger, debits of the meantime included."""
    from gateway.limits.policy import limiter

    root = money_root(limiter.prefix, organization_id)
    keys = [f"{root}:cred", f"{root}:credn", f"{root}:spent"]
    if not limiter.redis_url:
        limiter.local.forget(keys)
        return
    try:
        _client(limiter.redis_url).delete(*keys)
    except Exception as exc:
        log.warning("balance keys of organization %s not dropped (%s)", organization_id, exc.__class__.__name__)


def _organization_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    from django.db import transaction

    from billing.models import Plan

    if kwargs.get("raw") or instance.plan_id is None:
        return
    if not Plan.objects.filter(pk=instance.plan_id, prepaid=True).exists():
        organization_id = instance.pk
        transaction.on_commit(lambda: balance_forget(organization_id))


def connect_signals() -> None:
    from django.db.models.signals import post_save

    from accounts.models import Organization
    from billing.models import LedgerEntry

    post_save.connect(_ledger_entry_saved, sender=LedgerEntry, dispatch_uid="limiter-credits-push")
    post_save.connect(_organization_saved, sender=Organization, dispatch_uid="limiter-balance-forget")


def money_denial(money: MoneyAsk, outcome: Outcome, admission: Admission) -> GatewayError:
    """The refusal for the first money check that had no room: the balance (402), else the cap that resets last."""
    denied = [money.checks[i] for i in outcome.money_denied]
    values = {money.checks[i].store_key: outcome.money_values[i] for i in outcome.money_denied}
    balance = next((c for c in denied if c.kind == BALANCE), None)
    if balance is not None:
        available = values[balance.store_key]
        return InsufficientBalance(
            f"your prepaid balance is {format_micros_exact(available)} and this request may cost up to "
            f"{format_micros_exact(money.reserve)} (its prompt and max_tokens at the model's price); add credits, "
            "or ask for fewer max_tokens",
            details={"limit": BALANCE, "balance_micros": available, "required_micros": money.reserve},
            headers=admission.headers(),
        )
    cap = max(denied, key=lambda c: c.reset_at or 0.0)
    assert cap.reset_at is not None
    retry_after = max(1, math.ceil(cap.reset_at - admission.now))
    period = "daily" if cap.kind == SPEND_DAILY else "monthly"
    who = "API key" if cap.scope == "key" else "organization"
    return SpendCapReached(
        f"{who} {period} spend cap of {format_micros_exact(cap.limit)} reached "
        f"({format_micros_exact(values[cap.store_key])} spent, this request may cost up to "
        f"{format_micros_exact(money.reserve)}); resets in {format_duration(retry_after)} (at {rfc3339(cap.reset_at)})",
        details={
            "limit": cap.kind,
            "scope": cap.scope,
            "limit_value": cap.limit,
            "spent_micros": values[cap.store_key],
            "reset_seconds": retry_after,
        },
        headers={"retry-after": str(retry_after), **admission.headers()},
    )
