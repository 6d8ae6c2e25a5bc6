"""The portal's view of a request: who is signed in, which organization they act for, and with what role."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.db.models import Exists
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django_ratelimit import ALL
from django_ratelimit.core import get_usage
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework.exceptions import NotFound
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from accounts.models import Invitation, Membership, Organization, User
from accounts.selectors import invitations_pending, invitations_pending_for
from apikeys.models import ApiKey
from portal.services import personal_organization_create

SESSION_ORG_KEY = "portal_org_id"
KEY_MANAGER_ROLES = frozenset({Membership.Role.OWNER, Membership.Role.ADMIN})


@dataclass(frozen=True, slots=True)
class PortalContext:
    user: User
    membership: Membership
    memberships: tuple[Membership, ...]
    # The organization this session was working in is no longer the user's: `membership` is a fallback.
    lost_organization: bool = False

    def pending_invitations(self) -> list[Invitation]:
        """Invitations waiting for this user's answer; templates read it once, with {% with %}. The memberships query
        already said whether there are any, so the usual page (none) costs no query for the banner."""
        if not getattr(self.membership, "has_pending_invitations", True):
            return []
        return invitations_pending_for(user=self.user)

    @property
    def organization(self) -> Organization:
        return self.membership.organization

    @property
    def role(self) -> str:
        return self.membership.role

    @property
    def can_manage_keys(self) -> bool:
        return self.membership.role in KEY_MANAGER_ROLES

    @property
    def is_owner(self) -> bool:
        return self.membership.role == Membership.Role.OWNER


class NotAMember(LookupError):
    """The organization asked for is not one of the user's: answered as not found, never as forbidden."""


def user_memberships(user: User) -> list[Membership]:
    return list(
        Membership.objects.filter(user=user)
        .select_related("organization__plan")
        .annotate(has_pending_invitations=Exists(invitations_pending(user=user)))
        .order_by("created_at", "id")
    )


def portal_context(request: HttpRequest, *, org: str | None = None) -> PortalContext:
    """The signed-in user's memberships and the one in use: `org` (slug or id) when given, else the session's choice.

    Raises NotAMember when `org` names an organization the user does not belong to.
    """
    user = request.user
    if not isinstance(user, User):
        # An admin key (portal.authentication) is no member: DRF views reach its organization through
        # PortalAPIView.portal(), and anything that asks this instead answers "not found" rather than failing.
        raise NotAMember("no signed-in member")
    memberships = user_memberships(user)
    if not memberships:
        # Users made in the admin, or whose last organization went away: never a dead end.
        personal_organization_create(user=user)
        memberships = user_memberships(user)
    if org:
        chosen = next((m for m in memberships if m.organization.slug == org or str(m.organization_id) == org), None)
        if chosen is None:
            raise NotAMember(org)
        return PortalContext(user=user, membership=chosen, memberships=tuple(memberships))
    # Memberships are read on every request, so a member removed a moment ago acts for nothing of that
    # organization's from their next request on: the session's choice falls back to one they still have.
    wanted = request.session.get(SESSION_ORG_KEY)
    chosen = next((m for m in memberships if m.organization_id == wanted), None)
    lost = chosen is None and wanted is not None
    if chosen is None:
        chosen = memberships[0]
    if lost:
        request.session[SESSION_ORG_KEY] = chosen.organization_id
    return PortalContext(user=user, membership=chosen, memberships=tuple(memberships), lost_organization=lost)


def portal_page(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A signed-in page: anonymous visitors go to sign-in; the view finds `request.portal` set."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        ctx = request.portal = portal_context(request)  # type: ignore[attr-defined]
        if ctx.lost_organization:
            messages.warning(
                request, f"You are no longer a member of the organization you were working in; this is {ctx.organization.name}."
            )
        return view(request, *args, **kwargs)

    return wrapped


def render_portal(
    request: HttpRequest, template: str, context: dict[str, Any] | None = None, *, status: int = 200
) -> HttpResponse:
    return render(request, template, {"portal": request.portal, **(context or {})}, status=status)  # type: ignore[attr-defined]


def forbidden(request: HttpRequest, message: str) -> HttpResponse:
    return render_portal(request, "portal/forbidden.html", {"message": message}, status=403)


def rate_limit_usage(request: HttpRequest, *, group: str, rate: str, key: str = "ip") -> int | None:
    """Count one attempt; the seconds until the window resets when over the limit, else None."""
    usage = get_usage(request, group=group, key=key, rate=rate, method=ALL, increment=True)
    if usage is None or not usage["should_limit"]:
        return None
    return max(1, int(usage["time_left"]))


def too_many_requests(request: HttpRequest, retry_after: int) -> HttpResponse:
    response = render(request, "429.html", {"retry_after": retry_after}, status=429)
    response["Retry-After"] = str(retry_after)
    return response


# --- The management API's base ----------------------------------------------------------------------

ORG_PARAMETER = OpenApiParameter(
    "org",
    OpenApiTypes.STR,
    OpenApiParameter.QUERY,
    required=False,
    description="organization slug or id; default: the one selected in the portal (else your first)",
)


@dataclass(frozen=True, slots=True)
class ApiCaller:
    """Who calls the management API: a signed-in member (by session) or an organization admin key, and for which
    organization. An admin key acts as its own organization only, with an admin's rights over API keys, except that it
    cannot make or manage admin keys (least privilege: a leaked admin key cannot mint itself successors)."""

    organization: Organization
    user: User | None  # None: an admin key
    role: str  # the member's role; "admin" for an admin key
    admin_key: ApiKey | None = None

    @property
    def can_manage_keys(self) -> bool:
        return self.admin_key is not None or self.role in KEY_MANAGER_ROLES

    @property
    def can_manage_admin_keys(self) -> bool:
        return self.admin_key is None and self.role in KEY_MANAGER_ROLES

    def actor_label(self, door: str) -> str:
        """Who did it, for a key's audit events: the door, and the admin key when one was used."""
        return f"{door} (admin key {self.admin_key.prefix})" if self.admin_key is not None else door


class PortalAPIView(APIView):
    """JSON for a signed-in session (CSRF checked on writes) or an organization admin key (portal.authentication);
    an organization the caller is not in is not found."""

    renderer_classes = [JSONRenderer]

    def get_authenticate_header(self, request: Request) -> str:  # the stubs say str; DRF's own returns None too
        # A refused admin key is a 401 with a Bearer challenge; a caller with neither key nor session keeps the 403 the
        # session class gives (it has no challenge to offer).
        from portal.authentication import BEARER_REALM, presented_admin_key

        if presented_admin_key(request._request) is not None:
            return BEARER_REALM
        return super().get_authenticate_header(request)

    def portal(self, request: Request) -> ApiCaller:
        org = request.query_params.get("org") or None
        auth = request.auth
        if isinstance(auth, ApiKey):
            organization = auth.organization
            if org is not None and org not in (organization.slug, str(organization.pk)):
                raise NotFound("No such organization.")
            return ApiCaller(organization=organization, user=None, role=Membership.Role.ADMIN, admin_key=auth)
        try:
            ctx = portal_context(request, org=org)
        except NotAMember:
            raise NotFound("No such organization.") from None
        return ApiCaller(organization=ctx.organization, user=ctx.user, role=ctx.role)
