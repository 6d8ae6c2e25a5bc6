"""Staff views of users, organizations and memberships."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from accounts.models import Membership, Organization, User


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "name", "is_staff", "is_active", "date_joined"]
    search_fields = ["email", "name"]
    fieldsets = (
        (None, {"fields": ("email", "password", "name")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "status", "plan", "created_at"]
    list_filter = ["status", "plan"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]
    actions = ["suspend", "activate"]

    @admin.action(description="Suspend selected organizations")
    def suspend(self, request, queryset) -> None:  # noqa: ANN001
        for org in queryset:  # save() rather than update() so gateway caches are invalidated
            org.status = Organization.Status.SUSPENDED
            org.save(update_fields=["status"])

    @admin.action(description="Activate selected organizations")
    def activate(self, request, queryset) -> None:  # noqa: ANN001
        for org in queryset:
            org.status = Organization.Status.ACTIVE
            org.save(update_fields=["status"])
