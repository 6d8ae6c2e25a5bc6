"""Writes for plans and subscriptions (and an organization with its subscription), usage debits and staff credits on the
ledger. The daily usage rollups read usage rows: they are usage.services' (billing_days_close)."""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Organization, User
from accounts.services import organization_insert
from billing.models import LedgerEntry, ModelPrice, Plan, PlanSubscription
from portal_project.bulk import insert_ignoring_conflicts

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
def organization_create(*, slug: str, name: str, plan_slug: str | None = None, owner: User | None = None) -> Organization:
    """An organization on a plan (the named one, else the default) with its subscription started, and its owner.

    Here rather than in accounts: the organization's plan and subscription are billing's, and accounts imports no
    app above it (docs/ARCHITECTURE.md). UnknownPlan for a plan slug that does not exist, OrganizationExists for a
    taken slug."""
    plan = plan_get_default(slug=plan_slug)
    org = organization_insert(slug=slug, name=name, plan_id=plan.pk if plan is not None else None, owner=owner)
    if plan is not None:
        subscription_start(organization=org, plan=plan)
    return org


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
MAX_PRICE_PER_MILLION = 1_000_000_000  # $1,000 per million tokens: above it a price is a typo (the admin refuses it)


def default_price() -> tuple[int, int]:
    """(input, output) micro-units per million tokens that a new alias is given (PORTAL_DEFAULT_*_PRICE_PER_MILLION)."""
    return settings.PORTAL_DEFAULT_INPUT_PRICE_PER_MILLION, settings.PORTAL_DEFAULT_OUTPUT_PRICE_PER_MILLION


FREE_PLAN_SLUG = "free"  # DEFAULT_PLANS' free tier: its models cost nothing (a 0/0 price row of its own per alias)


def price_ensure_default(*, alias: str, price_model: type[ModelPrice] = ModelPrice) -> bool:
    """Give `alias` the default alias-wide price unless it has one; True when one was written. The free plan (slug
    FREE_PLAN_SLUG, when it exists) also gets a 0/0 price of its own for the alias unless it has one: the free tier
    is free, bounded by its allowance, and its ledger is not a debt that grows with every request.

    Every alias is priced from its creation on: an alias with no price row is refused for paid plans (MONEY), so one
    that appears (sync_router_pools, the admin, a rename) must not wait for staff to notice. A price row that exists
    (staff's, or explicitly free at 0/0) is never touched. Idempotent across processes: the rows are unique, and a
    lost race is a no-op.
    """
    if not alias:
        return False
    _free_plan_price_ensure(alias=alias, price_model=price_model)
    if price_model.objects.filter(alias=alias, plan__isnull=True).exists():
        return False
    input_price, output_price = default_price()
    try:
        with transaction.atomic():
            price_model.objects.create(
                alias=alias, plan=None, input_micros_per_million=input_price, output_micros_per_million=output_price
            )
    except IntegrityError:
        return False  # another process priced it a moment ago
    return True


def _free_plan_price_ensure(*, alias: str, price_model: type[ModelPrice]) -> None:
    plan_model = price_model._meta.get_field("plan").related_model
    free = plan_model.objects.filter(slug=FREE_PLAN_SLUG).first()  # type: ignore[attr-defined]
    if free is None or price_model.objects.filter(alias=alias, plan=free).exists():
        return
    try:
        with transaction.atomic():
            price_model.objects.create(alias=alias, plan=free, input_micros_per_million=0, output_micros_per_million=0)
    except IntegrityError:
        pass  # another process made it a moment ago


# usage.models.UsageEvent.Status values, spelled out: billing sits below usage and does not import it
# (tests/test_billing.py holds the two to the same values).
BILLABLE_STATUSES = frozenset({"ok", "cancelled"})
ERROR_STATUS = "error"


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
    cost_micros: int  # priced once, by the gateway, when the row was made (usage_cost_micros)


@dataclass(frozen=True, slots=True)
class Price:
    input_micros_per_million: int
    output_micros_per_million: int


def usage_is_billable(*, organization_id: int | None, status: str, total_tokens: int, completion_tokens: int) -> bool:
    """A cancelled stream pays for what it used. A failed request pays for what it delivered: a stream that broke (or
    ran into its deadline) after tokens went out is billed them, prompt included; one that delivered no token, and
    every refusal, costs nothing."""
    if organization_id is None or total_tokens <= 0:
        return False
    return status in BILLABLE_STATUSES or (status == ERROR_STATUS and completion_tokens > 0)


def usage_cost_micros(
    *,
    organization_id: int | None,
    status: str,
    prompt_tokens: int,
    completion_tokens: int,
    price: Price | None,
    total_tokens: int | None = None,
) -> int:
    """What one usage row is billed: its final tokens at its price when billable (usage_is_billable, on the row's own
    total, as the debit decides), else 0; an unpriced alias (price None) costs 0. The gateway calls this once per
    request; the debit is exactly this."""
    if price is None or not usage_is_billable(
        organization_id=organization_id,
        status=status,
        total_tokens=prompt_tokens + completion_tokens if total_tokens is None else total_tokens,
        completion_tokens=completion_tokens,
    ):
        return 0
    return request_cost_micros(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        input_micros_per_million=price.input_micros_per_million,
        output_micros_per_million=price.output_micros_per_million,
    )


def _is_billable(row: BillableUsage) -> bool:
    return usage_is_billable(
        organization_id=row.organization_id,
        status=row.status,
        total_tokens=row.total_tokens,
        completion_tokens=row.completion_tokens,
    )


DEBIT_COLUMNS = (
    "organization_id",
    "kind",
    "amount_micros",
    "request_id",
    "alias",
    "input_tokens",
    "output_tokens",
    "created_at",
    "memo",
    "created_by_id",
)


def ledger_debits_for_usage(*, rows: Iterable[BillableUsage]) -> int:
    """Write one debit per billable usage row (`_is_billable`) of exactly the row's cost_micros, skipping requests
    already debited; returns the debits offered.

    No pricing here: the gateway priced the row once (what its response header said), and the debit must equal it
    whatever changed in the price table since. Called inside the usage batch's transaction, so an event and its
    debit commit together. One query per batch whatever its size (the organizations that still exist), then the
    insert.
    """
    billable = {row.request_id: row for row in rows if _is_billable(row)}
    if not billable:
        return 0
    existing = set(
        Organization.objects.filter(pk__in={row.organization_id for row in billable.values()}).values_list("pk", flat=True)
    )
    debits: list[tuple[object, ...]] = []
    # Sorted: concurrent writers take the unique-index locks in one order and cannot deadlock on them.
    for request_id in sorted(billable):
        row = billable[request_id]
        if row.organization_id not in existing:
            continue  # the organization was deleted while the row waited: nobody left to bill
        debits.append(
            (
                row.organization_id,
                LedgerEntry.Kind.DEBIT.value,
                -max(0, int(row.cost_micros)),
                request_id,
                row.alias,
                row.prompt_tokens,
                row.completion_tokens,
                row.created_at,
                "",
                None,
            )
        )
    insert_ignoring_conflicts(LedgerEntry, DEBIT_COLUMNS, debits)
    return len(debits)


# --- spend caps and the alert webhook of an organization ---------------------------------------------------------

MAX_SPEND_CAP_MICROS = 1_000_000 * 1_000_000  # $1,000,000: a bound on a typo, far above any real cap
WEBHOOK_SECRET_PREFIX = "whsec_"


def webhook_secret_new() -> str:
    """A fresh signing secret for alert webhooks: 192 random bits, 54 characters (the field holds 64)."""
    return WEBHOOK_SECRET_PREFIX + secrets.token_hex(24)


def webhook_url_problem(url: str) -> str | None:
    """Why `url` cannot receive alert webhooks, or None. Plain http and addresses on our own networks only where
    PORTAL_ALERT_WEBHOOK_ALLOW_INSECURE is on (DEBUG's default): in production an https URL on the public internet,
    so a customer's URL cannot make our servers call into our own network. billing.alerts checks the address again
    when it sends (a name may resolve elsewhere by then)."""
    parts = urlsplit(url)
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        return "Enter an https:// URL."
    if parts.username or parts.password:
        return "A webhook URL cannot carry a user name or password; verify our signature instead."
    if settings.PORTAL_ALERT_WEBHOOK_ALLOW_INSECURE:
        return None
    if parts.scheme != "https":
        return "Webhooks are sent to https:// URLs only."
    if host_is_private(parts.hostname):
        return "Webhooks are sent to addresses on the public internet only."
    return None


def host_is_private(host: str) -> bool:
    """True for a loopback, private, link-local or otherwise non-public IP literal, and for localhost names."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # a name: checked when it is resolved, at sending time
    return not address.is_global


class SpendSettingsInvalid(ValueError):
    pass


def organization_spend_settings_update(
    *,
    organization: Organization,
    spend_cap_daily_micros: int | None,
    spend_cap_monthly_micros: int | None,
    alert_webhook_url: str,
) -> Organization:
    """Set the organization's spend caps (None: no cap) and alert webhook URL (empty: e-mail only).

    The first URL gets a signing secret. Saved with Organization.save, so the gateway's cache-change signal tells
    every gateway process the new caps once this commits (gateway/invalidation.py)."""
    for cap in (spend_cap_daily_micros, spend_cap_monthly_micros):
        if cap is not None and not 0 <= cap <= MAX_SPEND_CAP_MICROS:
            raise SpendSettingsInvalid(f"a spend cap is between $0 and $1,000,000, not {cap} micro-units")
    url = alert_webhook_url.strip()
    if url and (problem := webhook_url_problem(url)):
        raise SpendSettingsInvalid(problem)
    organization.spend_cap_daily_micros = spend_cap_daily_micros
    organization.spend_cap_monthly_micros = spend_cap_monthly_micros
    organization.alert_webhook_url = url
    fields = ["spend_cap_daily_micros", "spend_cap_monthly_micros", "alert_webhook_url"]
    if url and not organization.alert_webhook_secret:
        organization.alert_webhook_secret = webhook_secret_new()
        fields.append("alert_webhook_secret")
    organization.save(update_fields=fields)
    return organization


def organization_webhook_secret_rotate(*, organization: Organization) -> str:
    """A new signing secret; webhooks are signed with it from the next one on (the old one stops verifying)."""
    organization.alert_webhook_secret = webhook_secret_new()
    organization.save(update_fields=["alert_webhook_secret"])
    return organization.alert_webhook_secret


class NotAManualEntry(ValueError):
    pass


# What staff may add by hand (the admin offers only these); debits come from usage only.
MANUAL_KINDS = (LedgerEntry.Kind.CREDIT, LedgerEntry.Kind.ADJUSTMENT)


def ledger_entry_add(
    *, organization: Organization, kind: str, amount_micros: int, memo: str = "", created_by: Any | None = None
) -> LedgerEntry:
    """A staff credit or adjustment (the admin's door); debits come from usage only."""
    if kind not in MANUAL_KINDS:
        raise NotAManualEntry(f"only credits and adjustments are added by hand, not {kind!r}")
    entry = LedgerEntry(organization=organization, kind=kind, amount_micros=amount_micros, memo=memo, created_by=created_by)
    entry.full_clean()
    entry.save()
    return entry
