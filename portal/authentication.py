"""Organization admin keys (cta_…) for the management API: `Authorization: Bearer <admin key>`, acting as the key's
organization only. Failed attempts are rate-limited per client address like the portal sign-in (django-ratelimit)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone
from django_ratelimit import ALL
from django_ratelimit.core import get_usage
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from apikeys.keys import ADMIN_KEY_PREFIX
from apikeys.models import ApiKey
from apikeys.services import apikey_authenticate_admin, apikeys_touch_last_used

FAILURES_GROUP = "portal:admin-key-failures"
BEARER_REALM = 'Bearer realm="portal management API"'


class AdminKeyUser:
    """request.user of a call made with an admin key: authenticated, and nobody in particular (no User row).
    `pk` keys the per-caller rate limits (django-ratelimit's "user" key) to the admin key."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False

    def __init__(self, api_key: ApiKey) -> None:
        self.api_key = api_key
        self.pk = f"admin-key:{api_key.pk}"

    def __str__(self) -> str:
        return f"admin key {self.api_key.masked}"


def presented_admin_key(request: HttpRequest) -> str | None:
    """The Bearer token when it has an admin key's prefix, else None (not ours: the session may authenticate)."""
    scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(f"{ADMIN_KEY_PREFIX}_"):
        return None
    return token


def _failures(request: HttpRequest, *, increment: bool) -> int | None:
    """Counts a failure when `increment`; the seconds until the client's window resets when it is over the limit."""
    usage = get_usage(
        request,
        group=FAILURES_GROUP,
        key="ip",
        rate=settings.PORTAL_RATELIMIT_ADMIN_KEY_FAILURES,
        method=ALL,
        increment=increment,
    )
    # Before a check (no increment) the window is full at `limit` failures; after counting one, past it.
    if usage is None or usage["count"] < usage["limit"] + (1 if increment else 0):
        return None
    return max(1, int(usage["time_left"]))


class AdminKeyAuthentication(BaseAuthentication):
    """DRF authentication by an organization admin key. A request without one is left to the next class (the
    session); a wrong, revoked or expired one is refused, and a client past PORTAL_RATELIMIT_ADMIN_KEY_FAILURES
    failures gets 429 before its key is even looked at."""

    def authenticate(self, request: Request) -> tuple[AdminKeyUser, ApiKey] | None:
        django_request = request._request
        raw = presented_admin_key(django_request)
        if raw is None:
            return None
        wait = _failures(django_request, increment=False)
        if wait is not None:
            raise exceptions.Throttled(wait=wait, detail=f"Too many failed admin key attempts; try again in {wait} seconds.")
        key = apikey_authenticate_admin(raw=raw)
        if key is None:
            _failures(django_request, increment=True)
            raise exceptions.AuthenticationFailed("Invalid admin key.")
        apikeys_touch_last_used(last_used={key.pk: timezone.now()})
        return AdminKeyUser(key), key

    def authenticate_header(self, request: Request) -> str:
        return BEARER_REALM


def admin_key_of(request: Any) -> ApiKey | None:
    """The admin key a DRF request was authenticated with, or None (a session)."""
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, ApiKey) and auth.kind == ApiKey.Kind.ADMIN else None
