"""Staff views of plans, subscriptions, prices and the ledger; staff add credits and adjustments here."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.db import models
from django.forms import TypedChoiceField
from django.http import HttpRequest

from billing.models import (
    ClosedBillingDay,
    LedgerEntry,
    ModelAccessOverride,
    ModelPrice,
    Plan,
    PlanSubscription,
    SpendAlert,
    StripeEvent,
    UsageDailyRollup,
)
from billing.money import dollars_to_micros, format_micros_exact, micros_to_dollars
from billing.services import MANUAL_KINDS, MAX_PRICE_PER_MILLION, ledger_entry_add
from routerpools.models import ModelAlias


def format_micros(micros: int) -> str:
    """12_500_000 -> '12.500000': integer arithmetic, so the admin never shows a float's rounding."""
    sign = "-" if micros < 0 else ""
    units, fraction = divmod(abs(micros), 1_000_000)
    return f"{sign}{units}.{fraction:06d}"


class ModelPriceForm(forms.ModelForm):
    """A price edited in dollars per million tokens (six decimals: one micro-unit), stored in micro-units."""

    input_price = forms.DecimalField(
        label="Input ($ per 1M tokens)",
        max_digits=10,
        decimal_places=6,
        min_value=Decimal(0),
        max_value=micros_to_dollars(MAX_PRICE_PER_MILLION),
        help_text="e.g. 0.10; 0 with an output price of 0 makes the model explicitly free",
    )
    output_price = forms.DecimalField(
        label="Output ($ per 1M tokens)",
        max_digits=10,
        decimal_places=6,
        min_value=Decimal(0),
        max_value=micros_to_dollars(MAX_PRICE_PER_MILLION),
    )

    class Meta:
        model = ModelPrice
        fields = ["alias", "plan"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.initial.setdefault("input_price", micros_to_dollars(self.instance.input_micros_per_million))
            self.initial.setdefault("output_price", micros_to_dollars(self.instance.output_micros_per_million))

    def clean_alias(self) -> str:
        alias = self.cleaned_data["alias"].strip()
        # A price for a name no alias has bills nothing; a typo here would leave the real alias on its default.
        if alias != self.instance.alias and not ModelAlias.objects.filter(alias=alias).exists():
            raise forms.ValidationError(f"No model alias is named “{alias}”.")
        return alias

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        # On the instance before the model's validation (after clean): the micro-unit fields are required there.
        for field, name in (("input_price", "input_micros_per_million"), ("output_price", "output_micros_per_million")):
            if cleaned.get(field) is not None:
                setattr(self.instance, name, dollars_to_micros(cleaned[field]))
        alias = cleaned.get("alias")
        plan = cleaned.get("plan")  # in a plan's inline, the plan being edited
        if alias:
            taken = ModelPrice.objects.filter(alias=alias, plan=plan).exclude(pk=self.instance.pk)
            if taken.exists():
                where = f"plan “{plan.slug}”" if plan is not None else "every plan"
                raise forms.ValidationError(f"“{alias}” already has a price for {where}: change that one instead.")
        return cleaned


def per_million(micros: int) -> str:
    return f"{format_micros_exact(micros)} / 1M"


class ModelPriceInline(admin.TabularInline):
    """A plan's own prices: each wins over the alias-wide price for organizations on the plan."""

    model = ModelPrice
    form = ModelPriceForm
    fields = ("alias", "input_price", "output_price")
    extra = 0
    verbose_name = "price for this plan"
    verbose_name_plural = "prices for this plan (override the alias-wide price)"


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = [
        "slug",
        "name",
        "requests_per_minute",
        "tokens_per_minute",
        "window_requests",
        "weekly_requests",
        "is_default",
    ]
    filter_horizontal = ["allowed_aliases"]
    inlines = [ModelPriceInline]


@admin.register(PlanSubscription)
class PlanSubscriptionAdmin(admin.ModelAdmin):
    list_display = ["organization", "plan", "started_at", "ended_at"]
    raw_id_fields = ["organization"]


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Alias-wide prices (plan empty) and per-plan overrides; every alias gets a default one when it is created."""

    form = ModelPriceForm
    fields = ("alias", "plan", "input_price", "output_price")
    list_display = ["alias", "for_plan", "input_per_million", "output_per_million", "updated_at"]
    list_filter = ["plan"]
    list_select_related = ["plan"]
    search_fields = ["alias"]

    @admin.display(description="plan", ordering="plan__slug")
    def for_plan(self, price: ModelPrice) -> str:
        return price.plan.slug if price.plan is not None else "every plan"

    @admin.display(description="input", ordering="input_micros_per_million")
    def input_per_million(self, price: ModelPrice) -> str:
        return per_million(price.input_micros_per_million)

    @admin.display(description="output", ordering="output_micros_per_million")
    def output_per_million(self, price: ModelPrice) -> str:
        return per_million(price.output_micros_per_million)


# Tuples rather than lists: the admin stubs type fields as an invariant list of a wider element, which a tuple fits.
ADD_FIELDS = ("organization", "kind", "amount_micros", "memo")
ENTRY_FIELDS = (
    "organization",
    "kind",
    "amount_micros",
    "memo",
    "request_id",
    "alias",
    "input_tokens",
    "output_tokens",
    "created_by",
    "created_at",
)


@admin.register(LedgerEntry)
class LedgerEntryAdmin(admin.ModelAdmin):
    """Append-only: staff add credits and adjustments; nothing, debits least of all, is edited or deleted.
    A wrong entry is reversed by an adjustment, so the history stays whole."""

    list_display = [
        "created_at",
        "organization",
        "kind",
        "amount",
        "alias",
        "input_tokens",
        "output_tokens",
        "request_id",
        "created_by",
    ]
    list_filter = ["kind"]
    list_select_related = ["organization", "created_by"]
    search_fields = ["request_id", "organization__slug", "memo"]
    raw_id_fields = ["organization"]
    show_full_result_count = False  # the ledger grows with every request; skip the extra COUNT(*)

    @admin.display(description="amount", ordering="amount_micros")
    def amount(self, entry: LedgerEntry) -> str:
        return format_micros(entry.amount_micros)

    def get_fields(self, request: HttpRequest, obj: LedgerEntry | None = None) -> tuple[str, ...]:
        return ADD_FIELDS if obj is None else ENTRY_FIELDS

    def get_readonly_fields(self, request: HttpRequest, obj: LedgerEntry | None = None) -> tuple[str, ...]:
        return () if obj is None else ENTRY_FIELDS

    def formfield_for_choice_field(self, db_field: models.Field, request: HttpRequest, **kwargs: Any) -> TypedChoiceField | None:
        if db_field.name == "kind":
            kwargs["choices"] = [(kind.value, kind.label) for kind in MANUAL_KINDS]
        return super().formfield_for_choice_field(db_field, request, **kwargs)

    def has_change_permission(self, request: HttpRequest, obj: LedgerEntry | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: LedgerEntry | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: LedgerEntry, form: Any, change: bool) -> None:
        # The entry is written by the service, so the admin and every other door keep one rule for manual entries;
        # the form's instance takes the saved row's identity for the admin's log entry and redirect.
        entry = ledger_entry_add(
            organization=obj.organization,
            kind=obj.kind,
            amount_micros=obj.amount_micros,
            memo=obj.memo,
            created_by=request.user,
        )
        obj.pk, obj.created_by, obj.created_at = entry.pk, entry.created_by, entry.created_at


@admin.register(UsageDailyRollup)
class UsageDailyRollupAdmin(admin.ModelAdmin):
    """Written by close_billing_period only."""

    list_display = [
        "day",
        "organization",
        "alias",
        "requests",
        "ok_requests",
        "error_requests",
        "cancelled_requests",
        "total_tokens",
        "cost",
    ]
    list_filter = ["day"]
    list_select_related = ["organization"]
    search_fields = ["organization__slug", "alias"]

    @admin.display(description="cost", ordering="cost_micros")
    def cost(self, rollup: UsageDailyRollup) -> str:
        return format_micros(rollup.cost_micros)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: UsageDailyRollup | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: UsageDailyRollup | None = None) -> bool:
        return False


@admin.register(ClosedBillingDay)
class ClosedBillingDayAdmin(admin.ModelAdmin):
    list_display = ["day", "closed_at", "rollup_rows"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ClosedBillingDay | None = None) -> bool:
        return False


@admin.register(ModelAccessOverride)
class ModelAccessOverrideAdmin(admin.ModelAdmin):
    list_display = ["organization", "alias", "allowed"]
    list_filter = ["allowed", "alias"]
    raw_id_fields = ["organization"]


@admin.register(StripeEvent)
class StripeEventAdmin(admin.ModelAdmin):
    """Stripe's webhook events as they were taken in: read-only, the record a replay is checked against."""

    list_display = ["received_at", "type", "event_id", "organization", "outcome", "detail"]
    list_filter = ["outcome", "type"]
    search_fields = ["event_id", "object_id", "organization__slug"]
    raw_id_fields = ["organization"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: StripeEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: StripeEvent | None = None) -> bool:
        return False


ALLOWANCE_KINDS = frozenset({SpendAlert.Kind.WINDOW, SpendAlert.Kind.WEEKLY})  # counted in requests, not micros


@admin.register(SpendAlert)
class SpendAlertAdmin(admin.ModelAdmin):
    """Written by usage.alerts and portal.limit_mail only: what was sent, and how each delivery went."""

    list_display = [
        "created_at",
        "organization",
        "key_id",
        "kind",
        "threshold",
        "period_start",
        "amount",
        "limit",
        "email_status",
        "webhook_status",
    ]
    list_filter = ["kind", "threshold"]
    list_select_related = ["organization"]
    search_fields = ["organization__slug"]
    show_full_result_count = False

    @admin.display(description="spent, balance or requests", ordering="amount_micros")
    def amount(self, alert: SpendAlert) -> str:
        if alert.kind in ALLOWANCE_KINDS:
            return f"{alert.amount_micros} requests"
        return format_micros_exact(alert.amount_micros)

    @admin.display(description="cap, top-up or allowance", ordering="limit_micros")
    def limit(self, alert: SpendAlert) -> str:
        if alert.kind in ALLOWANCE_KINDS:
            return f"{alert.limit_micros} requests"
        return format_micros_exact(alert.limit_micros)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: SpendAlert | None = None) -> bool:
        return False
