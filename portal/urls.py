"""The customer portal under /portal/: pages for browsers, the JSON management API, its OpenAPI schema, assets."""

from __future__ import annotations

from django.conf import settings
from django.urls import path
from django.views.decorators.cache import cache_control
from drf_spectacular.views import SpectacularAPIView

from portal import playground
from portal.views import accounts, apikeys, billing, payments, usage, verification
from portal_project.security import serve_asset

app_name = "portal"

urlpatterns = [
    # The account, the organization and invitations.
    path("", accounts.home, name="home"),
    path("profile", accounts.profile, name="profile"),
    path("profile/password", accounts.change_password, name="change-password"),
    path("profile/sessions/sign-out-others", accounts.sign_out_other_sessions, name="sign-out-others"),
    path("profile/delete", accounts.delete_account, name="delete-account"),
    path("organization", accounts.organization, name="organization"),
    path("organization/switch", accounts.switch_organization, name="switch-organization"),
    path("organization/invitations/<int:invitation_id>/cancel", accounts.invitation_cancel_view, name="invitation-cancel"),
    path("organization/members/<int:membership_id>/remove", accounts.member_remove, name="member-remove"),
    path("organization/members/<int:membership_id>/role", accounts.member_role, name="member-role"),
    path("organization/transfer", accounts.transfer_ownership, name="organization-transfer"),
    path("organization/leave", accounts.leave_organization, name="organization-leave"),
    path("invitations/<int:invitation_id>/accept", accounts.invitation_accept_view, name="invitation-accept"),
    path("invitations/<int:invitation_id>/decline", accounts.invitation_decline_view, name="invitation-decline"),
    path("invitations/<str:token>", accounts.invitation, name="invitation"),
    path("invitations/<str:token>/sign-up", verification.invitation_sign_up, name="invitation-sign-up"),
    # The e-mail verification page's forms, for someone not signed in yet (portal.views.verification).
    path("verify-email/resend", verification.verification_resend, name="verification-resend"),
    path("verify-email/change-address", verification.verification_change_address, name="verification-change-address"),
    # API keys (pages and the management API) and the quickstart.
    path("api-keys", apikeys.ApiKeyCollection.as_view(), name="api-keys"),
    path("api-keys/<int:key_id>", apikeys.ApiKeyDetail.as_view(), name="api-key"),
    path("api-keys/<int:key_id>/revoke", apikeys.api_key_revoke_page, name="api-key-revoke"),
    path("api-keys/<int:key_id>/edit", apikeys.api_key_edit_page, name="api-key-edit"),
    path("api-keys/<int:key_id>/rotate", apikeys.ApiKeyRotate.as_view(), name="api-key-rotate"),
    path("docs", apikeys.docs_page, name="docs"),
    # Usage and billing.
    path("usage", usage.usage_page, name="usage"),
    path("usage-summary", usage.UsageSummaryAPI.as_view(), name="usage-summary"),
    path("usage/export", usage.UsageExportAPI.as_view(), name="usage-export"),
    path("billing", billing.billing_page, name="billing"),
    # Paying through Stripe (portal/views/payments.py); Stripe's webhook is outside /portal (portal_project/urls.py).
    path("billing/top-up", payments.topup, name="billing-topup"),
    path("billing/upgrade", payments.upgrade, name="billing-upgrade"),
    path("billing/manage", payments.manage, name="billing-manage"),
    path("billing/spend-settings", billing.spend_settings, name="spend-settings"),
    path("billing/webhook-secret/rotate", billing.webhook_secret_rotate, name="webhook-secret-rotate"),
    path("playground", playground.playground_page, name="playground"),
    path("playground/chat/completions", playground.playground_completion, name="playground-completion"),
    path("api/schema", SpectacularAPIView.as_view(), name="api-schema"),
    # The portal's CSS and JS, served by the app itself so one daphne process is a whole deployment; the pages
    # link them with a content hash (portal_tags.asset), so they may be cached for good.
    path(
        "assets/<path:path>",
        cache_control(public=True, max_age=31_536_000, immutable=True)(serve_asset),
        {"document_root": settings.BASE_DIR / "static" / "portal"},
        name="asset",
    ),
]
