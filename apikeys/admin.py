"""Staff views of key metadata; hashes are never shown and keys are revoked through the service."""

from __future__ import annotations

from django.contrib import admin

from apikeys.models import ApiKey, ApiKeyEvent
from apikeys.services import apikey_revoke
from portal_project.proxies import client_ip


class ApiKeyEventInline(admin.TabularInline):
    model = ApiKeyEvent
    extra = 0
    can_delete = False
    readonly_fields = ["action", "actor", "actor_label", "source_ip", "created_at"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "organization", "issuer", "created_at", "last_used_at", "expires_at", "revoked_at"]
    list_filter = ["issuer"]
    search_fields = ["prefix", "name", "organization__slug"]
    exclude = ["key_hash"]
    readonly_fields = [
        "public_id",
        "prefix",
        "last_four",
        "issuer",
        "external_id",
        "created_at",
        "last_used_at",
        "revoked_at",
        "created_by",
    ]
    inlines = [ApiKeyEventInline]
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:  # noqa: ANN001
        return False  # keys are created where the raw key can be shown once: portal or manage.py

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset) -> None:  # noqa: ANN001
        for key in queryset:
            apikey_revoke(api_key=key, actor=request.user, source_ip=client_ip(request))
