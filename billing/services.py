"""Writes for plans and subscriptions, usage debits and staff credits on the ledger, and daily usage rollups."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol

from django.db import transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import Organization
from billing.models import ClosedBillingDay, LedgerEntry, ModelPrice, Plan, PlanSubscription, UsageDailyRollup
from usage.bulk import insert_ignoring_conflicts
from usage.models import UsageEvent

log = logging.getLogger("billing")

DEFAULT_PLANS: list[dict[str, Any]] = [
    {
        "slug": "free",
        "name": "Free",
        "requests_per_minute": 20,
        "tokens_per_minute": 20_000,
        "concurrent_requests": 4,
        "window_requests": 100,
        "window_seconds": 3 * 3600,
        "weekly_requests": 1_000,
        "is_default": True,
    },
    {
        "slug": "pro",
        "name": "Pro",
        "requests_per_minute": 600,
        "tokens_per_minute": 1_000_000,
        "concurrent_requests": 64,
        "window_requests": None,
        "window_seconds": 3600,
        "weekly_requests": None,
        "is_default": False,
    },
]


def plans_seed_defaults(plan_model: type[Plan] = Plan) -> None:
    """Create the free and pro plans if missing; never overwrite what staff changed."""
    for spec in DEFAULT_PLANS:
        fields = dict(spec)
        plan_model.objects.get_or_create(slug=fields.pop("slug"), defaults=fields)


class UnknownPlan(ValueError):
    pass


def plan_get_default(*, slug: str | None = None) -> Plan | None:
    if slug:
        plan = Plan.objects.filter(slug=slug).first()
        if plan is None:
            raise UnknownPlan(f"no plan with slug {slug!r}")
        return plan
    return Plan.objects.filter(is_default=True).order_by("id").first()


@transaction.atomic
def subscription_start(*, organization: Any, plan: Plan) -> PlanSubscription:
    now = timezone.now()
    PlanSubscription.objects.filter(organization=organization, ended_at__isnull=True).update(ended_at=now)
    if organization.plan_id != plan.id:
        organization.plan = plan
        organization.save(update_fields=["plan"])
    return PlanSubscription.objects.create(organization=organization, plan=plan, started_at=now)


# --- prices and usage debits -------------------------------------------------------------------

TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are per million tokens
BILLABLE_STATUSES = frozenset({UsageEvent.Status.OK.value, UsageEvent.Status.CANCELLED.value})
ERROR_STATUS = UsageEvent.Status.ERROR.value


def request_cost_micros(
    *, prompt_tokens: int, completion_tokens: int, input_micros_per_million: int, output_micros_per_million: int
) -> int:
    """The cost of one request in micro-units; a fraction of a micro-unit is billed as a whole one.

    Integer arithmetic only: ceil(a / b) is -(-a // b), exact for any size.
    """
    numerator = prompt_tokens * input_micros_per_million + completion_tokens * output_micros_per_million
    return -(-numerator // TOKENS_PER_PRICE_UNIT)


class BillableUsage(Protocol):
    """What a debit needs from a usage row: a UsageEvent or a usage.services.UsageRecord."""

    request_id: str
    organization_id: int | None
    alias: str
    status: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Price:
    input_micros_per_million: int
    output_micros_per_million: int


UNPRICED = Price(0, 0)
_warned_unpriced: set[str] = set()


def _is_billable(row: BillableUsage) -> bool:
    # A cancelled stream pays for what it used. A failed request pays for what it delivered: a stream that broke
    # (or ran into its deadline) after tokens went out is billed them, prompt included; one that delivered no
    # token, and every refusal, costs nothing.
    if row.organization_id is None or row.total_tokens <= 0:
        return False
    return row.status in BILLABLE_STATUSES or (row.status == ERROR_STATUS and row.completion_tokens > 0)


DEBIT_COLUMNS = (
    "organization_id", "kind", "amount_micros", "request_id", "alias", "input_tokens", "output_tokens", "created_at", "memo",
    "created_by_id",
)


def ledger_debits_for_usage(*, rows: Iterable[BillableUsage]) -> int:
    """Write one debit per billable usage row (`_is_billable`), skipping requests already debited; returns the debits offered.

    Called inside the usage batch's transaction, so an event and its debit commit together.
    Two queries per batch whatever its size: the organizations' plans, then the prices.
    """
    billable = {row.request_id: row for row in rows if _is_billable(row)}
    if not billable:
        return 0
    plan_of = dict(
        Organization.objects.filter(pk__in={row.organization_id for row in billable.values()}).values_list("pk", "plan_id")
    )
    prices = _price_table(aliases={row.alias for row in billable.values()}, plan_ids={p for p in plan_of.values() if p})
    debits: list[tuple[object, ...]] = []
    unpriced: set[str] = set()
    # Sorted: concurrent writers take the unique-index locks in one order and cannot deadlock on them.
    for request_id in sorted(billable):
        row = billable[request_id]
        if row.organization_id not in plan_of:
            continue  # the organization was deleted while the row waited: nobody left to bill
        price = prices.get((plan_of[row.organization_id], row.alias)) or prices.get((None, row.alias))
        if price is None:
            unpriced.add(row.alias)
            price = UNPRICED
        cost = request_cost_micros(
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            input_micros_per_million=price.input_micros_per_million,
            output_micros_per_million=price.output_micros_per_million,
        )
        debits.append(
            (row.organization_id, LedgerEntry.Kind.DEBIT.value, -cost, request_id, row.alias, row.prompt_tokens,
             row.completion_tokens, row.created_at, "", None)
        )
    if unpriced - _warned_unpriced:
        # Once per alias and process: a batch is written every fraction of a second.
        log.warning("no price for alias(es) %s: their requests are debited 0", ", ".join(sorted(unpriced - _warned_unpriced)))
        _warned_unpriced.update(unpriced)
    insert_ignoring_conflicts(LedgerEntry, DEBIT_COLUMNS, debits)
    return len(debits)


def _price_table(*, aliases: set[str], plan_ids: set[int]) -> dict[tuple[int | None, str], Price]:
    """(plan id or None for alias-wide, alias) -> price, in one query."""
    rows = ModelPrice.objects.filter(alias__in=aliases).filter(Q(plan__isnull=True) | Q(plan_id__in=plan_ids))
    return {
        (plan_id, alias): Price(input_price, output_price)
        for plan_id, alias, input_price, output_price in rows.values_list(
            "plan_id", "alias", "input_micros_per_million", "output_micros_per_million"
        )
    }


class NotAManualEntry(ValueError):
    pass


def ledger_entry_add(
    *, organization: Organization, kind: str, amount_micros: int, memo: str = "", created_by: Any | None = None
) -> LedgerEntry:
    """A staff credit or adjustment; debits come from usage only."""
    if kind not in (LedgerEntry.Kind.CREDIT, LedgerEntry.Kind.ADJUSTMENT):
        raise NotAManualEntry(f"only credits and adjustments are added by hand, not {kind!r}")
    entry = LedgerEntry(organization=organization, kind=kind, amount_micros=amount_micros, memo=memo, created_by=created_by)
    entry.full_clean()
    entry.save()
    return entry


# --- closing days: usage rolled up per organization, day and alias ------------------------------

ROLLUP_COUNTS = [
    "requests",
    "ok_requests",
    "error_requests",
    "cancelled_requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_micros",
]


@dataclass(frozen=True, slots=True)
class ClosedDay:
    day: date
    rollup_rows: int


def billing_days_close(*, days: Iterable[date]) -> list[ClosedDay]:
    """Roll each day's usage and debits up and mark the day closed; closing a day again rewrites the same rows.

    Consecutive days are aggregated together (one GROUP BY over usage and one over the ledger
    per run of days), so a backfill of a month does not scan the usage table thirty times.
    """
    closed: list[ClosedDay] = []
    for first, last in _consecutive_runs(sorted(set(days))):
        closed.extend(_close_run(first, last))
    return closed


def _consecutive_runs(days: list[date]) -> list[tuple[date, date]]:
    runs: list[tuple[date, date]] = []
    for day in days:
        if runs and runs[-1][1] + timedelta(days=1) == day:
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


def utc_midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


@transaction.atomic
def _close_run(first: date, last: date) -> list[ClosedDay]:
    start, end = utc_midnight(first), utc_midnight(last + timedelta(days=1))
    utc_day = TruncDate("created_at", tzinfo=UTC)
    usage = (
        UsageEvent.objects.filter(created_at__gte=start, created_at__lt=end, organization__isnull=False)
        .annotate(day=utc_day)
        .values("organization_id", "day", "alias")
        .annotate(
            requests=Count("id"),
            ok_requests=Count("id", filter=Q(status=UsageEvent.Status.OK)),
            error_requests=Count("id", filter=Q(status=UsageEvent.Status.ERROR)),
            cancelled_requests=Count("id", filter=Q(status=UsageEvent.Status.CANCELLED)),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            total=Sum("total_tokens"),
        )
        .order_by()
    )
    debits = (
        LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEBIT, created_at__gte=start, created_at__lt=end)
        .annotate(day=utc_day)
        .values("organization_id", "day", "alias")
        .annotate(debited=Sum("amount_micros"))
        .order_by()
    )
    now = timezone.now()
    rollups: dict[tuple[int, date, str], UsageDailyRollup] = {}
    for group in usage:
        key = (group["organization_id"], group["day"], group["alias"])
        rollups[key] = UsageDailyRollup(
            organization_id=key[0],
            day=key[1],
            alias=key[2],
            requests=group["requests"],
            ok_requests=group["ok_requests"],
            error_requests=group["error_requests"],
            cancelled_requests=group["cancelled_requests"],
            prompt_tokens=group["prompt"] or 0,
            completion_tokens=group["completion"] or 0,
            total_tokens=group["total"] or 0,
            computed_at=now,
        )
    for debit in debits:
        key = (debit["organization_id"], debit["day"], debit["alias"])
        if key not in rollups:
            # A debit whose event lost its organization (its key was deleted while queued): the
            # money is still owed, so the cost shows even with no requests beside it.
            rollups[key] = UsageDailyRollup(organization_id=key[0], day=key[1], alias=key[2], computed_at=now)
        rollups[key].cost_micros = -(debit["debited"] or 0)
    UsageDailyRollup.objects.bulk_create(
        list(rollups.values()),
        update_conflicts=True,
        unique_fields=["organization", "day", "alias"],
        update_fields=[*ROLLUP_COUNTS, "computed_at"],
    )
    # Groups that existed when the day was last closed and are gone now (their events were detached).
    UsageDailyRollup.objects.filter(day__gte=first, day__lte=last).exclude(computed_at=now).delete()
    per_day: dict[date, int] = {}
    for _, day, _ in rollups:
        per_day[day] = per_day.get(day, 0) + 1
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    ClosedBillingDay.objects.bulk_create(
        [ClosedBillingDay(day=day, closed_at=now, rollup_rows=per_day.get(day, 0)) for day in days],
        update_conflicts=True,
        unique_fields=["day"],
        update_fields=["closed_at", "rollup_rows"],
    )
    return [ClosedDay(day=day, rollup_rows=per_day.get(day, 0)) for day in days]
