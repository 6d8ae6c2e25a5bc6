"""Staff views of plans, subscriptions, prices and the ledger; staff add credits and adjustments here."""

from __future__ import annotations

from typing import Any

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
    StripeEvent,
    UsageDailyRollup,
)
from billing.services import MANUAL_KINDS, ledger_entry_add


def format_micros(micros: int) -> str:
    """12_500_000 -> '12.500000': integer arithmetic, so the admin never shows a float's rounding."""
    sign = "-" if micros < 0 else ""
    units, fraction = divmod(abs(micros), 1_000_000)
    return f"{sign}{units}.{fraction:06d}"


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


@admin.register(PlanSubscription)
class PlanSubscriptionAdmin(admin.ModelAdmin):
    list_display = ["organization", "plan", "started_at", "ended_at"]
    raw_id_fields = ["organization"]


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ["alias", "plan", "input_micros_per_million", "output_micros_per_million", "updated_at"]
    list_filter = ["plan"]
    search_fields = ["alias"]


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
