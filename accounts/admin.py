"""Staff views of users, organizations, memberships and (read-only) invitations and membership audit."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.http import HttpRequest
from django.utils import timezone

from accounts.models import Invitation, Membership, MembershipEvent, Organization, User


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
    # The alert webhook's signing secret is the customer's: shown to its owners and admins on the billing page only.
    exclude = ["alert_webhook_secret"]

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


# A tuple rather than a list: the admin stubs type fields as an invariant list of a wider element, which a tuple fits.
INVITATION_FIELDS = (
    "organization",
    "email",
    "role",
    "invited_by",
    "created_at",
    "expires_at",
    "accepted_at",
    "accepted_by",
    "cancelled_at",
    "declined_at",
)


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    """Read-only: invitations are made, accepted and cancelled by owners in the portal, where the mail goes out.
    The token (the link's path) is left out: staff have no use for it, and a screen of links is one leak away."""

    list_display = ["email", "organization", "role", "state", "invited_by", "created_at", "expires_at"]
    list_filter = ["role"]
    list_select_related = ["organization", "invited_by"]
    search_fields = ["email", "organization__slug"]
    fields = INVITATION_FIELDS
    readonly_fields = INVITATION_FIELDS

    @admin.display(description="state")
    def state(self, invitation: Invitation) -> str:
        if invitation.accepted_at is not None:
            return "accepted"
        if invitation.cancelled_at is not None:
            return "cancelled"
        if invitation.declined_at is not None:
            return "declined"
        return "expired" if invitation.expires_at <= timezone.now() else "pending"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Invitation | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Invitation | None = None) -> bool:
        return False


MEMBERSHIP_EVENT_FIELDS = (
    "organization",
    "email",
    "user",
    "action",
    "old_role",
    "new_role",
    "actor",
    "actor_label",
    "source_ip",
    "created_at",
)


@admin.register(MembershipEvent)
class MembershipEventAdmin(admin.ModelAdmin):
    """Read-only audit of joins, removals, departures and role changes, written by accounts.services."""

    list_display = ["created_at", "organization", "email", "action", "old_role", "new_role", "actor", "source_ip"]
    list_filter = ["action"]
    list_select_related = ["organization", "actor"]
    search_fields = ["email", "organization__slug"]
    fields = MEMBERSHIP_EVENT_FIELDS
    readonly_fields = MEMBERSHIP_EVENT_FIELDS

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: MembershipEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: MembershipEvent | None = None) -> bool:
        return False
