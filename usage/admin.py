"""Read-only staff views of usage events and request logs."""

from __future__ import annotations

from django.contrib import admin

from usage.models import RequestLog, UsageEvent


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:  # noqa: ANN001
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin):
    list_display = [
        "request_id",
        "organization",
        "alias",
        "route",
        "status",
        "http_status",
        "total_tokens",
        "estimated",
        "duration_ms",
        "created_at",
    ]
    list_filter = ["status", "route", "alias", "streamed"]
    search_fields = ["request_id"]
    date_hierarchy = "created_at"


@admin.register(RequestLog)
class RequestLogAdmin(ReadOnlyAdmin):
    list_display = ["request_id", "method", "path", "status", "duration_ms", "client_ip", "created_at"]
    search_fields = ["request_id", "client_request_id"]
    date_hierarchy = "created_at"
