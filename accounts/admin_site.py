"""The Django admin's door: staff sign in through allauth's form (its per-IP limit and per-account lockout) and,
when PORTAL_ADMIN_REQUIRE_MFA is on, only sessions that passed TOTP two-factor get in."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from allauth.account.authentication import get_authentication_records
from allauth.mfa.models import Authenticator
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache

SETUP, AUTHENTICATE = "setup", "authenticate"


def admin_second_factor_missing(request: HttpRequest) -> str | None:
    """What a staff session still lacks for the admin: SETUP (no TOTP yet), AUTHENTICATE (this session did not pass
    it), or None. Always None while PORTAL_ADMIN_REQUIRE_MFA is off."""
    if not settings.PORTAL_ADMIN_REQUIRE_MFA:
        return None
    user = request.user
    # allauth records each factor this session passed (sign-in code, reauthentication): a password alone is not enough.
    if any(record.get("method") == "mfa" for record in get_authentication_records(request, user)):
        return None
    if not Authenticator.objects.filter(user=user, type=Authenticator.Type.TOTP).exists():
        return SETUP
    return AUTHENTICATE


class PortalAdminSite(admin.AdminSite):
    site_header = "Cortensor administration"
    site_title = "Cortensor admin"

    def has_permission(self, request: HttpRequest) -> bool:
        return super().has_permission(request) and admin_second_factor_missing(request) is None

    @method_decorator(never_cache)
    @login_not_required
    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """No password form of its own: where the admin sends whoever may not see it yet."""
        target = request.GET.get(REDIRECT_FIELD_NAME) or ""
        index = reverse("admin:index")
        if not target.startswith(index) or not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
            target = index
        user = request.user
        if not user.is_authenticated:
            return HttpResponseRedirect(f"{reverse('account_login')}?{urlencode({REDIRECT_FIELD_NAME: target})}")
        if not (user.is_active and user.is_staff):
            # Not a sign-in form: sending a signed-in customer back to sign-in would loop.
            return render(request, "portal/forbidden.html", {"message": "This account has no access to the admin."}, status=403)
        missing = admin_second_factor_missing(request)
        if missing == SETUP:
            messages.info(
                request, "The admin needs two-factor authentication: set up an authenticator app, then open the admin again."
            )
            return HttpResponseRedirect(reverse("mfa_activate_totp"))
        if missing == AUTHENTICATE:
            return HttpResponseRedirect(f"{reverse('mfa_reauthenticate')}?{urlencode({REDIRECT_FIELD_NAME: target})}")
        return HttpResponseRedirect(target)
