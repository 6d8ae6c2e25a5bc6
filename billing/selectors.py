"""Plan reads for the gateway's cache; balances and period totals from the ledger. No usage reads: billing sits below
usage (docs/ARCHITECTURE.md), so the reads that join usage rows (admitted requests, days to close) are usage.selectors'."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

from django.db.models import Count, F, Q, QuerySet, Sum, Window
from django.db.models.functions import Coalesce

from accounts.models import Organization
from billing.models import LedgerEntry, ModelAccessOverride, ModelPrice, Plan
from billing.services import Price
from routerpools.models import ModelAlias


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
    prepaid: bool = False  # pay as you go: served only while the prepaid balance can pay
    monthly_price_micros: int = 0

    @property
    def paid(self) -> bool:
        """A plan someone pays for (prepaid, or a subscription price): its unpriced aliases are refused, not served free."""
        return self.prepaid or self.monthly_price_micros > 0


def model_allowed(alias: str, *, plan_aliases: Collection[str] | None, overrides: Mapping[str, bool] | None) -> bool:
    """The one rule of model access, for the gateway (Principal.may_use) and the portal (models_for_organization) alike:
    the organization's own exceptions (ModelAccessOverride) first, then its plan's allow-list, where no list (or an
    empty one) means every alias."""
    if overrides and alias in overrides:
        return overrides[alias]
    return not plan_aliases or alias in plan_aliases


def models_for_organization(organization: Organization) -> list[ModelAlias]:
    """The enabled aliases of enabled pools that this organization may call (the gateway routes only those)."""
    plan = organization.plan
    plan_aliases = set(plan.allowed_aliases.values_list("alias", flat=True)) if plan is not None else None
    overrides = dict(ModelAccessOverride.objects.filter(organization=organization).values_list("alias__alias", "allowed"))
    return [
        alias
        for alias in ModelAlias.objects.filter(enabled=True, pool__enabled=True).order_by("alias")
        if model_allowed(alias.alias, plan_aliases=plan_aliases, overrides=overrides)
    ]


@dataclass(frozen=True, slots=True)
class ModelOffer:
    """One model an organization may call, with what it costs on the organization's plan and its limits."""

    alias: str
    display_name: str
    context_length: int | None  # None: not stated
    max_output_tokens: int
    input_micros_per_million: int | None  # None (both): unpriced
    output_micros_per_million: int | None

    @property
    def priced(self) -> bool:
        return self.input_micros_per_million is not None

    @property
    def free(self) -> bool:
        return self.input_micros_per_million == 0 and self.output_micros_per_million == 0


def prices_for_plan(plan_id: int | None) -> dict[str, tuple[int, int]]:
    """alias → (input, output) micro-units per million tokens as billing charges a plan: its own price, else the
    alias-wide one. One query."""
    rows = ModelPrice.objects.filter(Q(plan__isnull=True) | Q(plan_id=plan_id)).values_list(
        "alias", "plan_id", "input_micros_per_million", "output_micros_per_million"
    )
    table: dict[str, tuple[int, int]] = {}
    # Alias-wide rows first, so a plan's own row (plan_id set) overwrites them.
    for alias, _, input_price, output_price in sorted(rows, key=lambda row: row[1] is not None):
        table[alias] = (input_price, output_price)
    return table


def model_offers(organization: Organization) -> list[ModelOffer]:
    """The models the organization may call (models_for_organization), priced for its plan."""
    prices = prices_for_plan(organization.plan_id)
    offers = []
    for alias in models_for_organization(organization):
        price = prices.get(alias.alias)
        offers.append(
            ModelOffer(
                alias=alias.alias,
                display_name=alias.display_name or alias.alias,
                context_length=alias.context_length,
                max_output_tokens=alias.max_tokens_cap,
                input_micros_per_million=price[0] if price else None,
                output_micros_per_million=price[1] if price else None,
            )
        )
    return offers


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
            prepaid=plan.prepaid,
            monthly_price_micros=plan.monthly_price_micros,
        )
    return table


PriceTable = dict[tuple[int | None, str], Price]


def price_table() -> PriceTable:
    """Every price: (plan id, or None for the alias-wide row, alias) -> Price, in one query; the gateway caches it."""
    return {
        (plan_id, alias): Price(input_price, output_price)
        for plan_id, alias, input_price, output_price in ModelPrice.objects.values_list(
            "plan_id", "alias", "input_micros_per_million", "output_micros_per_million"
        )
    }


def price_in(table: PriceTable, plan_id: int | None, alias: str) -> Price | None:
    """The price an organization on `plan_id` pays for `alias`: the plan's own row, else the alias-wide one; None for an
    unpriced alias (a 0/0 row is explicitly free, not unpriced)."""
    if plan_id is not None:
        own = table.get((plan_id, alias))
        if own is not None:
            return own
    return table.get((None, alias))


def model_overrides_table() -> dict[int, dict[str, bool]]:
    """organization id → {alias: allowed} for organizations with exceptions to their plan's list."""
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


# --- The portal's billing page: reads for one organization --------------------------------------------------------------


def plan_record(plan: Plan) -> PlanRecord:
    """One plan's limits as plan_table builds them, without the alias list (the allowance counters do not need it)."""
    return PlanRecord(
        plan_id=plan.pk,
        slug=plan.slug,
        allowed_aliases=None,
        requests_per_minute=plan.requests_per_minute,
        tokens_per_minute=plan.tokens_per_minute,
        concurrent_requests=plan.concurrent_requests,
        window_requests=plan.window_requests,
        window_seconds=plan.window_seconds,
        weekly_requests=plan.weekly_requests,
        prepaid=plan.prepaid,
        monthly_price_micros=plan.monthly_price_micros,
    )


def _generosity(plan: Plan) -> tuple[float, ...]:
    # No limit (None) is the most generous value of a limit.
    def most(value: int | None) -> float:
        return float("inf") if value is None else float(value)

    return (
        plan.requests_per_minute,
        most(plan.tokens_per_minute),
        most(plan.concurrent_requests),
        most(plan.weekly_requests),
        most(plan.window_requests),
        plan.pk,
    )


def plan_next_up(plan: Plan, plans: list[Plan]) -> Plan | None:
    """The least generous of the plans more generous than `plan`: ordered by requests per minute, then tokens per
    minute, concurrency, the weekly and the window allowance (no limit beats any number). None for the top plan."""
    ranked = sorted(plans, key=_generosity)
    above = [p for p in ranked if _generosity(p) > _generosity(plan)]
    return above[0] if above else None


def plans_with_aliases() -> list[Plan]:
    """Every plan with its allow-list, in two queries."""
    return list(Plan.objects.prefetch_related("allowed_aliases").order_by("id"))


def prices_for_plans(plan_ids: list[int]) -> dict[str, dict[int, tuple[int, int]]]:
    """alias → {plan id: (input, output) micro-units per million tokens} as billing charges them: a plan's own
    price, else the alias-wide one. One query."""
    rows = ModelPrice.objects.filter(Q(plan__isnull=True) | Q(plan_id__in=plan_ids)).values_list(
        "alias", "plan_id", "input_micros_per_million", "output_micros_per_million"
    )
    own: dict[tuple[str, int], tuple[int, int]] = {}
    wide: dict[str, tuple[int, int]] = {}
    for alias, plan_id, input_price, output_price in rows:
        if plan_id is None:
            wide[alias] = (input_price, output_price)
        else:
            own[(alias, plan_id)] = (input_price, output_price)
    table: dict[str, dict[int, tuple[int, int]]] = {}
    for alias in sorted({alias for alias, _ in own} | set(wide)):
        for plan_id in plan_ids:
            price = own.get((alias, plan_id)) or wide.get(alias)
            if price is not None:
                table.setdefault(alias, {})[plan_id] = price
    return table


def ledger_with_balance(organization_id: int) -> QuerySet[LedgerEntry]:
    """The organization's ledger, newest first, each entry with `balance_micros`: the balance just after it.

    The running sum is a window function, evaluated over every entry of the organization before LIMIT/OFFSET,
    so any page of it is right without reading the pages before. (created_at, id) is unique: no two entries share
    a place in the order, so the default frame (up to the current row's peers) is exactly "up to this entry".
    """
    return (
        LedgerEntry.objects.filter(organization_id=organization_id)
        .annotate(
            balance_micros=Window(Sum("amount_micros"), order_by=[F("created_at").asc(), F("id").asc()]),
        )
        .order_by("-created_at", "-id")
    )


@dataclass(frozen=True, slots=True)
class LedgerMoney:
    """One organization's ledger as the gateway's prepaid balance holds it: what came in, and what usage was debited."""

    credits_micros: int  # credits and adjustments, signed
    credit_entries: int  # their number: the ledger is append-only, so a larger count is a later snapshot
    debited_micros: int  # what usage cost, positive


def organization_ledger_money(organization_id: int) -> LedgerMoney:
    """One query. The balance is credits_micros - debited_micros (organization_balance)."""
    debit = Q(kind=LedgerEntry.Kind.DEBIT)
    sums = LedgerEntry.objects.filter(organization_id=organization_id).aggregate(
        credits=Coalesce(Sum("amount_micros", filter=~debit), 0),
        entries=Count("id", filter=~debit),
        debits=Coalesce(Sum("amount_micros", filter=debit), 0),
    )
    return LedgerMoney(int(sums["credits"]), int(sums["entries"]), -int(sums["debits"]))
