"""Staff views of plans and subscriptions."""

from __future__ import annotations

from django.contrib import admin

from billing.models import Plan, PlanSubscription


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "requests_per_minute", "tokens_per_minute", "window_requests", "weekly_requests", "is_default"]
    filter_horizontal = ["allowed_aliases"]


@admin.register(PlanSubscription)
class PlanSubscriptionAdmin(admin.ModelAdmin):
    list_display = ["organization", "plan", "started_at", "ended_at"]
    raw_id_fields = ["organization"]
