"""The portal's billing page: the plan, its allowances as the limiter counts them (portal.allowances), the ledger,
and the next plan up.

Money comes from integer micro-units; the rules are in billing.money.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from urllib.parse import quote

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.http import urlencode

from accounts.models import Organization
from billing.models import Plan
from billing.money import MICROS_PER_CENT, format_micros_exact, micros_to_dollars
from billing.selectors import (
    ledger_with_balance,
    model_offers,
    organization_balance,
    period_totals,
    plan_next_up,
    plans_with_aliases,
    prices_for_plans,
)
from billing.services import organization_spend_settings_update, organization_webhook_secret_rotate
from portal.allowances import allowances_for, window_words
from portal.context import PortalContext, forbidden, portal_page, render_portal
from portal.forms import SpendSettingsForm
from portal.views.payments import payments_panel
from usage.alerts import spend_alert_worker
from usage.selectors import spend_since

LEDGER_PAGE_SIZE = 50
MANAGERS_ONLY = "Only owners and admins of this organization can change its spend caps and alerts."


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


def _window(plan: Plan) -> str:
    if plan.window_requests is None or plan.window_seconds <= 0:
        return "No cap"
    return f"{plan.window_requests:,} per {window_words(plan.window_seconds)}"


def _weekly(plan: Plan) -> str:
    return "No cap" if plan.weekly_requests is None else f"{plan.weekly_requests:,} requests"


def plan_limits(plan: Plan) -> list[tuple[str, str]]:
    """One plan's limits as (label, value), for the docs and billing pages."""
    return [
        ("Requests per minute", _limit(plan.requests_per_minute)),
        ("Tokens per minute", _limit(plan.tokens_per_minute)),
        ("Concurrent requests", _limit(plan.concurrent_requests)),
        ("Request allowance", _window(plan)),
        ("Weekly allowance", _weekly(plan)),
        ("Billing", "Prepaid balance: requests are served while it can pay for them" if plan.prepaid else "Usage is billed"),
    ]


def plan_rows(current: Plan, upgraded: Plan) -> list[PlanRow]:
    """The limits, allowances, models and prices of two plans, side by side."""
    window = _window

    rows = [
        PlanRow("Requests per minute", _limit(current.requests_per_minute), _limit(upgraded.requests_per_minute)),
        PlanRow("Tokens per minute", _limit(current.tokens_per_minute), _limit(upgraded.tokens_per_minute)),
        PlanRow("Concurrent requests", _limit(current.concurrent_requests), _limit(upgraded.concurrent_requests)),
        PlanRow("Request allowance", window(current), window(upgraded)),
        PlanRow("Weekly allowance", _weekly(current), _weekly(upgraded)),
        PlanRow("Models", _models(current), _models(upgraded)),
    ]
    for alias, by_plan in prices_for_plans([current.pk, upgraded.pk]).items():
        rows.append(PlanRow(f"{alias} per 1M tokens", _price(by_plan.get(current.pk)), _price(by_plan.get(upgraded.pk))))
    return rows


@dataclass(frozen=True, slots=True)
class CapStatus:
    """One of the organization's spend caps against what its period has cost so far (what the gateway counts)."""

    period: str  # "daily" | "monthly"
    cap_micros: int
    spent_micros: int
    resets_at: datetime

    @property
    def percent(self) -> int:
        return 100 if self.cap_micros <= 0 else min(100, self.spent_micros * 100 // self.cap_micros)

    @property
    def is_reached(self) -> bool:
        return self.spent_micros >= self.cap_micros

    @property
    def when(self) -> str:
        return "today (UTC)" if self.period == "daily" else "this month (UTC)"


def cap_statuses(org: Organization, now: datetime) -> list[CapStatus]:
    """The organization's daily and monthly caps, each with its period's spend (one query a cap that is set)."""
    moment = now.astimezone(UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    month_start, month_end = month_bounds(now)
    periods = (
        ("daily", org.spend_cap_daily_micros, day, day + timedelta(days=1)),
        (
            "monthly",
            org.spend_cap_monthly_micros,
            datetime.combine(month_start, time.min, tzinfo=UTC),
            datetime.combine(month_end, time.min, tzinfo=UTC),
        ),
    )
    return [
        CapStatus(period, cap, spend_since(organization_id=org.pk, since=start), resets_at)
        for period, cap, start, resets_at in periods
        if cap is not None
    ]


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


def _chosen(request: HttpRequest) -> tuple[PortalContext | None, str]:
    """The organization the page is about: `?org=` (slug or id) when given, else the session's; None: not the user's."""
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    org_param = request.GET.get("org", "").strip()
    if org_param:
        chosen = _for_org(ctx, org_param)
        if chosen is None:
            return None, org_param
        ctx = request.portal = chosen  # type: ignore[attr-defined]
    return ctx, org_param


def _not_found(request: HttpRequest) -> HttpResponse:
    return render_portal(request, "billing/not_found.html", {"nav": "billing"}, status=404)


def _back_to_billing(org_param: str, anchor: str = "alerts") -> HttpResponse:
    query = f"?{urlencode({'org': org_param})}" if org_param else ""
    return redirect(f"{reverse('portal:billing')}{query}#{anchor}")


def spend_settings_initial(org: Organization) -> dict[str, object]:
    def dollars(micros: int | None) -> Decimal | None:
        # Whole cents read as such ("25.00"); anything finer keeps every micro-dollar ("0.000001").
        if micros is None:
            return None
        exact = micros_to_dollars(micros)
        return exact.quantize(Decimal("0.01")) if micros % MICROS_PER_CENT == 0 else exact.normalize()

    return {
        "daily_cap": dollars(org.spend_cap_daily_micros),
        "monthly_cap": dollars(org.spend_cap_monthly_micros),
        "alert_webhook_url": org.alert_webhook_url,
    }


@portal_page
def billing_page(request: HttpRequest) -> HttpResponse:
    ctx, org_param = _chosen(request)
    if ctx is None:
        return _not_found(request)
    return _render_billing(request, ctx, org_param)


@portal_page
def spend_settings(request: HttpRequest) -> HttpResponse:
    """POST: the organization's spend caps and alert webhook URL; owners and admins only."""
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "POST"})
    ctx, org_param = _chosen(request)
    if ctx is None:
        return _not_found(request)
    if not ctx.can_manage_keys:
        return forbidden(request, MANAGERS_ONLY)
    form = SpendSettingsForm(request.POST)
    if not form.is_valid():
        return _render_billing(request, ctx, org_param, spend_form=form, status=400)
    organization_spend_settings_update(
        organization=ctx.organization,
        spend_cap_daily_micros=form.micros("daily_cap"),
        spend_cap_monthly_micros=form.micros("monthly_cap"),
        alert_webhook_url=form.cleaned_data["alert_webhook_url"],
    )
    # A cap lowered below what was spent is crossed without a request: check now, in the alerts' own thread.
    org_id = ctx.organization.pk
    transaction.on_commit(lambda: spend_alert_worker.notify([org_id]))
    messages.success(request, "Spend caps and alerts are saved. The gateway applies the caps within a second.")
    return _back_to_billing(org_param)


@portal_page
def webhook_secret_rotate(request: HttpRequest) -> HttpResponse:
    """POST: a new signing secret for the organization's alert webhooks; owners and admins only."""
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "POST"})
    ctx, org_param = _chosen(request)
    if ctx is None:
        return _not_found(request)
    if not ctx.can_manage_keys:
        return forbidden(request, MANAGERS_ONLY)
    organization_webhook_secret_rotate(organization=ctx.organization)
    messages.success(request, "A new signing secret is in place: webhooks from now on are signed with it, not the old one.")
    return _back_to_billing(org_param)


def _upgrade_mailto(org: Organization, upgraded: Plan | None) -> str:
    """Where a customer asks for the next plan up when it is not sold online: PORTAL_SUPPORT_EMAIL, subject filled in."""
    if upgraded is None or not settings.PORTAL_SUPPORT_EMAIL:
        return ""
    return f"mailto:{settings.PORTAL_SUPPORT_EMAIL}?subject={quote(f'Upgrade {org.slug} to {upgraded.name}')}"


def _render_billing(
    request: HttpRequest, ctx: PortalContext, org_param: str, *, spend_form: SpendSettingsForm | None = None, status: int = 200
) -> HttpResponse:
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
    response = render_portal(
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
            "offers": model_offers(org),
            "caps": cap_statuses(org, now),
            "spend_form": spend_form or SpendSettingsForm(initial=spend_settings_initial(org)),
            "org_query": f"{urlencode({'org': org_param})}&" if org_param else "",
            "payments": payments_panel(request, ctx, upgraded),
            "upgrade_mailto": _upgrade_mailto(org, upgraded),
            "org_param": org_param,
        },
        status=status,
    )
    if ctx.can_manage_keys and org.alert_webhook_secret:
        add_never_cache_headers(response)  # it carries the webhook signing secret
    return response
