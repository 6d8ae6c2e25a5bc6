"""What an organization is entitled to and what it owes: plans, subscriptions, prices, the ledger, daily rollups."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Plan(models.Model):
    slug = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    requests_per_minute = models.PositiveIntegerField(default=60)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text="empty: no token limit")
    concurrent_requests = models.PositiveIntegerField(null=True, blank=True, help_text="empty: no limit")
    # The free-plan allowance: a request cap per short reset window, plus a weekly allowance.
    window_requests = models.PositiveIntegerField(null=True, blank=True, help_text="requests per window; empty: none")
    window_seconds = models.PositiveIntegerField(default=3600)
    weekly_requests = models.PositiveIntegerField(null=True, blank=True, help_text="requests per week; empty: none")
    allowed_aliases = models.ManyToManyField(
        "routerpools.ModelAlias", blank=True, related_name="plans", help_text="empty: every enabled alias"
    )
    is_default = models.BooleanField(default=False, help_text="given to new organizations")
    prepaid = models.BooleanField(
        default=False, help_text="pay as you go: a request is served only while the prepaid balance can pay for it"
    )
    monthly_price_micros = models.PositiveBigIntegerField(default=0, help_text="the subscription's price per month; 0: free")
    stripe_price_id = models.CharField(max_length=100, blank=True, help_text="the Stripe Price an upgrade subscribes to")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.slug


class PlanSubscription(models.Model):
    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="subscriptions")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.organization} on {self.plan}"


class ModelAccessOverride(models.Model):
    """Per-organization exception to its plan's model list: grant an alias the plan lacks, or withhold one it has."""

    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="model_overrides")
    alias = models.ForeignKey("routerpools.ModelAlias", on_delete=models.CASCADE, related_name="access_overrides")
    allowed = models.BooleanField(default=True, help_text="checked: granted; unchecked: withheld")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "alias"], name="uniq_model_override")]

    def __str__(self) -> str:
        return f"{self.organization} {'+' if self.allowed else '-'}{self.alias}"


class ModelPrice(models.Model):
    """What a million tokens of one alias cost, in micro-units (1e-6 of the currency).

    A row with a plan overrides the alias-wide row (plan empty) for organizations on that plan.
    The alias is kept by name, not by foreign key: env-managed alias rows are deleted and
    re-created by sync_router_pools, and a price must outlive that.
    """

    plan = models.ForeignKey(
        Plan, null=True, blank=True, on_delete=models.CASCADE, related_name="prices", help_text="empty: every plan"
    )
    alias = models.CharField(max_length=100, help_text="the public model alias name, as clients send it")
    input_micros_per_million = models.PositiveBigIntegerField(help_text="micro-units per million prompt tokens")
    output_micros_per_million = models.PositiveBigIntegerField(help_text="micro-units per million completion tokens")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["alias", "plan_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["alias", "plan"], name="uniq_price_alias_plan", condition=models.Q(plan__isnull=False)
            ),
            models.UniqueConstraint(fields=["alias"], name="uniq_price_alias_wide", condition=models.Q(plan__isnull=True)),
        ]

    def __str__(self) -> str:
        return f"{self.alias} ({self.plan or 'every plan'})"


class LedgerEntry(models.Model):
    """One movement of an organization's money, in signed micro-units; the balance is their sum.

    Append-only: a wrong entry is corrected by an adjustment, never by an edit.
    """

    class Kind(models.TextChoices):
        DEBIT = "debit", "Debit (usage)"
        CREDIT = "credit", "Credit"
        ADJUSTMENT = "adjustment", "Adjustment"

    # PROTECT: money history outlives nothing by accident; suspend an organization instead of deleting it.
    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="ledger_entries")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount_micros = models.BigIntegerField(help_text="micro-units; debits negative, credits positive")
    request_id = models.CharField(max_length=64, blank=True, help_text="the usage event a debit bills")
    alias = models.CharField(max_length=100, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    memo = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "ledger entries"
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "created_at"], name="ledger_org_created"),
            models.Index(fields=["created_at"], name="ledger_created"),
        ]
        constraints = [
            # A retried or duplicated usage batch must never bill a request twice.
            models.UniqueConstraint(fields=["request_id"], condition=models.Q(kind="debit"), name="uniq_ledger_debit_request"),
            models.CheckConstraint(
                condition=(
                    models.Q(kind="debit", amount_micros__lte=0)
                    | models.Q(kind="credit", amount_micros__gt=0)
                    | (models.Q(kind="adjustment") & ~models.Q(amount_micros=0))
                ),
                name="ledger_amount_sign",
                violation_error_message="Debits are zero or negative, credits positive, adjustments non-zero.",
            ),
            models.CheckConstraint(
                condition=~models.Q(kind="debit") | ~models.Q(request_id=""),
                name="ledger_debit_has_request",
                violation_error_message="A debit names the request it bills.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount_micros} for {self.organization_id}"


class UsageDailyRollup(models.Model):
    """Usage of one organization on one alias over one UTC day, closed by close_billing_period."""

    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="usage_rollups")
    day = models.DateField()
    alias = models.CharField(max_length=100)
    requests = models.PositiveIntegerField(default=0)
    ok_requests = models.PositiveIntegerField(default=0)
    error_requests = models.PositiveIntegerField(default=0)
    cancelled_requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    total_tokens = models.PositiveBigIntegerField(default=0)
    cost_micros = models.BigIntegerField(default=0, help_text="what the ledger debited, as a positive number")
    computed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["day", "organization_id", "alias"]
        constraints = [models.UniqueConstraint(fields=["organization", "day", "alias"], name="uniq_rollup_org_day_alias")]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.alias} on {self.day}"


class ClosedBillingDay(models.Model):
    """A UTC day whose rollups have been written; the default close run skips it."""

    day = models.DateField(unique=True)
    closed_at = models.DateTimeField(default=timezone.now)
    rollup_rows = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-day"]

    def __str__(self) -> str:
        return str(self.day)


class StripeEvent(models.Model):
    """A Stripe webhook event taken in, once: written in the transaction of its effect, so a replay finds it and
    changes nothing. `created` is the event's own time (Stripe's), by which out-of-order subscription events are told
    from fresh ones; `object_id` the Checkout session or subscription it is about."""

    class Outcome(models.TextChoices):
        APPLIED = "applied", "Applied"
        IGNORED = "ignored", "Ignored"

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    created = models.DateTimeField(help_text="when Stripe created the event")
    object_id = models.CharField(max_length=255, blank=True, db_index=True, help_text="the session or subscription")
    organization = models.ForeignKey(
        "accounts.Organization", null=True, blank=True, on_delete=models.SET_NULL, related_name="stripe_events"
    )
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    detail = models.CharField(max_length=300, blank=True, help_text="what was done, or why nothing was")
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-received_at", "-id"]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id} ({self.outcome})"


class SpendAlert(models.Model):
    """One alert sent (or being sent): a spend cap's threshold crossed in a period, a prepaid balance run low, or a
    request allowance used up in its window.

    The unique constraint is what makes an alert go out once: every process that sees the crossing tries to insert
    the row, one wins and sends, the others find it there (usage/alerts.py).
    """

    class Kind(models.TextChoices):
        DAILY = "daily", "Daily spend cap"
        MONTHLY = "monthly", "Monthly spend cap"
        LOW_BALANCE = "low_balance", "Low prepaid balance"
        # A request allowance used up (portal/limit_mail.py): threshold 100, period_start the window's start, and
        # amount/limit in requests, not micros.
        WINDOW = "window", "Window request allowance used up"
        WEEKLY = "weekly", "Weekly request allowance used up"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="spend_alerts")
    # An id, not a foreign key: billing sits below apikeys (docs/ARCHITECTURE.md), and 0 keeps the constraint simple
    # where NULLs would be distinct.
    key_id = models.PositiveBigIntegerField(default=0, help_text="the API key whose own cap this is; 0: the organization's")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    threshold = models.PositiveSmallIntegerField(
        help_text="percent of the cap reached (50, 80, 100); low balance: percent of the last top-up it fell below"
    )
    period_start = models.DateTimeField(help_text="the UTC day or month of a cap; the last top-up of a low balance")
    amount_micros = models.BigIntegerField(help_text="spent in the period (a cap), or the balance (low balance)")
    limit_micros = models.BigIntegerField(help_text="the cap, or the last top-up")
    created_at = models.DateTimeField(default=timezone.now)
    # What was delivered: empty while unsent.
    email_status = models.CharField(max_length=200, blank=True)
    webhook_status = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "key_id", "kind", "threshold", "period_start"], name="uniq_spend_alert_once"
            )
        ]

    def __str__(self) -> str:
        scope = f"key {self.key_id}" if self.key_id else "organization"
        return f"{self.organization_id} {scope} {self.kind} {self.threshold}% from {self.period_start:%Y-%m-%d %H:%M}"
