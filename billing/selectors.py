"""Plan reads for the gateway's cache; balances, period totals and days to close, all from the ledger."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.db.models import Count, Min, Q, Sum
from django.db.models.functions import Coalesce

from billing.models import ClosedBillingDay, LedgerEntry, Plan
from usage.models import UsageEvent


@dataclass(frozen=True, slots=True)
class PlanRecord:
    plan_id: int
    slug: str
    allowed_aliases: frozenset[str] | None  # None: every enabled alias
    requests_per_minute: int
    tokens_per_minute: int | None
    concurrent_requests: int | None
    window_requests: int | None
    window_seconds: int
    weekly_requests: int | None


def plan_table() -> dict[int, PlanRecord]:
    table: dict[int, PlanRecord] = {}
    for plan in Plan.objects.prefetch_related("allowed_aliases"):
        aliases = frozenset(a.alias for a in plan.allowed_aliases.all())
        table[plan.pk] = PlanRecord(
            plan_id=plan.pk,
            slug=plan.slug,
            allowed_aliases=aliases or None,
            requests_per_minute=plan.requests_per_minute,
            tokens_per_minute=plan.tokens_per_minute,
            concurrent_requests=plan.concurrent_requests,
            window_requests=plan.window_requests,
            window_seconds=plan.window_seconds,
            weekly_requests=plan.weekly_requests,
        )
    return table


def model_overrides_table() -> dict[int, dict[str, bool]]:
    """organization id → {alias: allowed} for organizations with exceptions to their plan's list."""
    from billing.models import ModelAccessOverride

    table: dict[int, dict[str, bool]] = {}
    for org_id, alias, allowed in ModelAccessOverride.objects.values_list("organization_id", "alias__alias", "allowed"):
        table.setdefault(org_id, {})[alias] = allowed
    return table


def organization_balance(organization_id: int) -> int:
    """Micro-units: credits and adjustments minus what usage cost; negative means the organization owes."""
    return LedgerEntry.objects.filter(organization_id=organization_id).aggregate(balance=Coalesce(Sum("amount_micros"), 0))[
        "balance"
    ]


@dataclass(frozen=True, slots=True)
class PeriodTotals:
    """Ledger movements of one organization in [start, end), in micro-units."""

    debits_micros: int  # zero or negative: what usage cost
    credits_micros: int
    adjustments_micros: int
    net_micros: int  # the change in balance over the period
    billed_requests: int
    input_tokens: int
    output_tokens: int


def period_totals(organization_id: int, start: datetime | date, end: datetime | date) -> PeriodTotals:
    """Totals over a half-open period; a date means midnight UTC at its start."""
    debit, credit = Q(kind=LedgerEntry.Kind.DEBIT), Q(kind=LedgerEntry.Kind.CREDIT)
    adjustment = Q(kind=LedgerEntry.Kind.ADJUSTMENT)
    sums = LedgerEntry.objects.filter(
        organization_id=organization_id, created_at__gte=_as_instant(start), created_at__lt=_as_instant(end)
    ).aggregate(
        debits=Coalesce(Sum("amount_micros", filter=debit), 0),
        credits=Coalesce(Sum("amount_micros", filter=credit), 0),
        adjustments=Coalesce(Sum("amount_micros", filter=adjustment), 0),
        billed=Count("id", filter=debit),
        input_tokens=Coalesce(Sum("input_tokens", filter=debit), 0),
        output_tokens=Coalesce(Sum("output_tokens", filter=debit), 0),
    )
    return PeriodTotals(
        debits_micros=sums["debits"],
        credits_micros=sums["credits"],
        adjustments_micros=sums["adjustments"],
        net_micros=sums["debits"] + sums["credits"] + sums["adjustments"],
        billed_requests=sums["billed"],
        input_tokens=sums["input_tokens"],
        output_tokens=sums["output_tokens"],
    )


def _as_instant(moment: datetime | date) -> datetime:
    if isinstance(moment, datetime):
        return moment
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)


def billing_days_unclosed(*, today: date) -> list[date]:
    """Every UTC day before today, from the first usage event on, that close_billing_period has not closed."""
    first = UsageEvent.objects.aggregate(first=Min("created_at"))["first"]
    if first is None:
        return []
    first_day = first.astimezone(UTC).date()
    closed = set(ClosedBillingDay.objects.filter(day__gte=first_day, day__lt=today).values_list("day", flat=True))
    span = (today - first_day).days
    return [day for day in (first_day + timedelta(days=n) for n in range(max(span, 0))) if day not in closed]
