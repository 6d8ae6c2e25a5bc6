"""The portal's billing page: the plan, its allowances as the limiter counts them, the ledger, and the next plan up.

Allowances are the plan's request caps over fixed windows: the short window (`window_requests` per
`window_seconds`, aligned to multiples of `window_seconds` since the epoch) and the week (from Monday 00:00 UTC).
The windows, their resets and the counter keys come from the limiter itself (gateway.limits.allowance_counters),
so "resets at" is the instant enforcement starts over. What is counted is what the limiter admitted: with Redis,
the organization's own counters, read without touching them; without Redis (or when it does not answer), the
organization's usage rows in the window, less the rows of requests the limiter refused, since an admitted request
leaves exactly one usage row whatever became of it (ok, error or cancelled) and a refused one leaves a 429/503 row.
The counters are per organization, so everyone in it sees the same numbers.

Percentages are whole numbers rounded down (79.9% reads 79%), and the warning shows from exactly 80% (used × 100 ≥
80 × limit, in integers). Money comes from integer micro-units; the rules are in billing.money.

This module reads the limiter's counters and its refusal codes from `gateway`, against the rule that nothing
imports it: the windows and keys must be the limiter's own, not a copy that drifts (as the playground does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.http import urlencode

from accounts.portal import PortalContext, portal_page, render_portal
from billing.models import Plan
from billing.money import MICROS_PER_CENT, format_micros_exact
from billing.selectors import (
    admitted_requests,
    ledger_with_balance,
    organization_balance,
    period_totals,
    plan_next_up,
    plan_record,
    plans_with_aliases,
    prices_for_plans,
)
from gateway.errors import LimitsUnavailable, QuotaExceeded, RateLimited
from gateway.limits import WEEKLY, AllowanceCounter, allowance_counters

LEDGER_PAGE_SIZE = 50
WARN_AT_PERCENT = 80
# The usage rows of requests the limiter refused carry one of these codes; they never counted against an allowance.
REFUSED_BY_LIMITER = frozenset(
    code for code in (RateLimited.openai_code, QuotaExceeded.openai_code, LimitsUnavailable.openai_code) if code
)


def window_words(seconds: int) -> str:
    """'3 hours', 'hour', '30 minutes', '90 seconds': the short window as a sentence names it."""
    for unit, name in ((3600, "hour"), (60, "minute"), (1, "second")):
        if seconds % unit == 0:
            count = seconds // unit
            return name if count == 1 else f"{count} {name}s"
    return f"{seconds} seconds"  # unreachable: every whole number of seconds divides by 1


def window_adjective(seconds: int) -> str:
    """'3-hour', '30-minute', '90-second', as the limiter's refusals name the window."""
    for unit, name in ((3600, "hour"), (60, "minute"), (1, "second")):
        if seconds % unit == 0:
            return f"{seconds // unit}-{name}"
    return f"{seconds}-second"  # unreachable: every whole number of seconds divides by 1


def duration_words(seconds: int) -> str:
    """'4 d 11 h', '2 h 5 min', '7 min', '42 s': the two largest units, rounded down."""
    seconds = max(0, seconds)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


@dataclass(frozen=True, slots=True)
class Allowance:
    """One request allowance of the plan, what was used of it, and when it starts over."""

    kind: str
    title: str  # "3-hour window", "This week"
    name: str  # "3-hour request allowance", "weekly request allowance"
    used: int
    limit: int
    starts_at: datetime
    resets_at: datetime
    resets_in: str
    counted_by: str  # "limiter": its Redis counters; "usage": the usage rows

    @property
    def percent(self) -> int:
        """Whole percent, rounded down; an allowance of 0 is always fully used."""
        return 100 if self.limit == 0 else self.used * 100 // self.limit

    @property
    def bar_percent(self) -> int:
        return min(100, self.percent)

    @property
    def is_reached(self) -> bool:
        return self.used >= self.limit

    @property
    def is_near(self) -> bool:
        return self.used * 100 >= WARN_AT_PERCENT * self.limit


def _instant(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def allowances_for(organization_id: int, plan: Plan | None, *, now: datetime) -> list[Allowance]:
    """The plan's allowances in the windows the limiter enforces at `now`, counted as the module docstring says."""
    if plan is None:
        return []
    epoch = now.timestamp()
    counters: list[AllowanceCounter] = allowance_counters(organization_id, plan_record(plan), now=epoch)
    unread = [c for c in counters if c.used is None]
    from_rows = dict(
        zip(
            [c.kind for c in unread],
            admitted_requests(
                organization_id,
                [(_instant(c.starts_at), _instant(c.resets_at)) for c in unread],
                refused_codes=REFUSED_BY_LIMITER,
            ),
            strict=True,
        )
    )
    allowances = []
    for counter in counters:
        weekly = counter.kind == WEEKLY
        allowances.append(
            Allowance(
                kind=counter.kind,
                title="This week" if weekly else f"{window_adjective(counter.window_s)} window",
                name="weekly request allowance" if weekly else f"{window_adjective(counter.window_s)} request allowance",
                used=counter.used if counter.used is not None else from_rows[counter.kind],
                limit=counter.limit,
                starts_at=_instant(counter.starts_at),
                resets_at=_instant(counter.resets_at),
                resets_in=duration_words(math.ceil(counter.resets_at - epoch)),
                counted_by="usage" if counter.used is None else "limiter",
            )
        )
    return allowances


@dataclass(frozen=True, slots=True)
class PlanRow:
    """One line of the plan comparison."""

    label: str
    current: str
    upgraded: str

    @property
    def changes(self) -> bool:
        return self.current != self.upgraded


def _limit(value: int | None) -> str:
    return "No limit" if value is None else f"{value:,}"


def _models(plan: Plan) -> str:
    aliases = sorted(alias.alias for alias in plan.allowed_aliases.all())  # prefetched
    return ", ".join(aliases) if aliases else "Every model"


def _price(price: tuple[int, int] | None) -> str:
    if price is None:
        return "Not priced"
    return f"{format_micros_exact(price[0])} in · {format_micros_exact(price[1])} out"


def plan_rows(current: Plan, upgraded: Plan) -> list[PlanRow]:
    """The limits, allowances, models and prices of two plans, side by side."""

    def window(plan: Plan) -> str:
        if plan.window_requests is None or plan.window_seconds <= 0:
            return "No cap"
        return f"{plan.window_requests:,} per {window_words(plan.window_seconds)}"

    rows = [
        PlanRow("Requests per minute", _limit(current.requests_per_minute), _limit(upgraded.requests_per_minute)),
        PlanRow("Tokens per minute", _limit(current.tokens_per_minute), _limit(upgraded.tokens_per_minute)),
        PlanRow("Concurrent requests", _limit(current.concurrent_requests), _limit(upgraded.concurrent_requests)),
        PlanRow("Request allowance", window(current), window(upgraded)),
        PlanRow(
            "Weekly allowance",
            "No cap" if current.weekly_requests is None else f"{current.weekly_requests:,} requests",
            "No cap" if upgraded.weekly_requests is None else f"{upgraded.weekly_requests:,} requests",
        ),
        PlanRow("Models", _models(current), _models(upgraded)),
    ]
    for alias, by_plan in prices_for_plans([current.pk, upgraded.pk]).items():
        rows.append(PlanRow(f"{alias} per 1M tokens", _price(by_plan.get(current.pk)), _price(by_plan.get(upgraded.pk))))
    return rows


def month_bounds(now: datetime) -> tuple[date, date]:
    """The UTC calendar month holding `now`: its first day and the next month's."""
    today = now.astimezone(UTC).date()
    start = today.replace(day=1)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def _for_org(ctx: PortalContext, org: str) -> PortalContext | None:
    """The context of `org` (slug or id) when the user belongs to it; None otherwise."""
    chosen = next((m for m in ctx.memberships if m.organization.slug == org or str(m.organization_id) == org), None)
    return None if chosen is None else PortalContext(user=ctx.user, membership=chosen, memberships=ctx.memberships)


@portal_page
def billing_page(request: HttpRequest) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    org_param = request.GET.get("org", "").strip()
    if org_param:
        chosen = _for_org(ctx, org_param)
        if chosen is None:
            return render_portal(request, "billing/not_found.html", {"nav": "billing"}, status=404)
        ctx = request.portal = chosen  # type: ignore[attr-defined]
    org = ctx.organization
    plan = org.plan
    now = timezone.now()

    plans = plans_with_aliases()
    current = next((p for p in plans if plan is not None and p.pk == plan.pk), None)
    upgraded = plan_next_up(current, plans) if current is not None else None
    month_start, month_end = month_bounds(now)
    ledger = Paginator(ledger_with_balance(org.pk), LEDGER_PAGE_SIZE).get_page(request.GET.get("page"))
    allowances = allowances_for(org.pk, current, now=now)
    balance = organization_balance(org.pk)
    month = period_totals(org.pk, month_start, month_end)
    return render_portal(
        request,
        "billing/billing.html",
        {
            "nav": "billing",
            "now": now,
            "plan": current,
            "upgraded": upgraded,
            "plan_rows": plan_rows(current, upgraded) if current is not None and upgraded is not None else [],
            "allowances": allowances,
            "warnings": [a for a in allowances if a.is_near],
            "balance": balance,
            "balance_is_whole_cents": balance % MICROS_PER_CENT == 0,
            "month": month,
            "month_usage": -month.debits_micros,
            "month_usage_is_whole_cents": month.debits_micros % MICROS_PER_CENT == 0,
            "month_credits": month.credits_micros + month.adjustments_micros,
            "month_start": month_start,
            "ledger": ledger,
            "org_query": f"{urlencode({'org': org_param})}&" if org_param else "",
        },
    )
