"""Account pages of the portal: profile and sessions, deleting an account, the organization and its invitations."""

from __future__ import annotations

import smtplib

from allauth.account.models import EmailAddress
from allauth.usersessions.forms import ManageUserSessionsForm
from allauth.usersessions.models import UserSession
from django.contrib import messages
from django.contrib.auth import logout
from django.core.mail import send_mail
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from accounts.forms import DeleteAccountForm, InviteForm, ProfileForm
from accounts.models import Invitation, Membership
from accounts.portal import SESSION_ORG_KEY, PortalContext, client_ip, forbidden, portal_page, render_portal
from accounts.services import (
    InvitationError,
    invitation_cancel,
    invitation_create,
    invitations_accept,
    organizations_solely_owned,
    user_delete,
    user_update_profile,
)
from apikeys.models import ApiKey


@portal_page
def home(request: HttpRequest) -> HttpResponse:
    return redirect("portal:api-keys")


def _sessions(request: HttpRequest) -> list[UserSession]:
    return sorted(UserSession.objects.purge_and_list(request.user), key=lambda s: s.created_at, reverse=True)


def _deletion_impact(ctx: PortalContext) -> list[dict[str, object]]:
    """The organizations left without an owner if this user goes, with the keys that would be revoked."""
    orgs = organizations_solely_owned(user=ctx.user)
    now = timezone.now()
    active = (
        ApiKey.objects.filter(organization__in=orgs, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .values("organization_id")
        .annotate(n=Count("id"))
    )
    counts = {row["organization_id"]: row["n"] for row in active}
    return [{"organization": org, "active_keys": counts.get(org.pk, 0)} for org in orgs]


@portal_page
def profile(request: HttpRequest) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    form = ProfileForm(initial={"name": ctx.user.name})
    if request.method == "POST":
        form = ProfileForm(request.POST)
        if form.is_valid():
            user_update_profile(user=ctx.user, name=form.cleaned_data["name"])
            messages.success(request, "Your name is saved.")
            return redirect("portal:profile")
    return render_portal(
        request,
        "accounts/profile.html",
        {"nav": "profile", "form": form, "sessions": _sessions(request), "impact": _deletion_impact(ctx)},
    )


@require_POST
@portal_page
def sign_out_other_sessions(request: HttpRequest) -> HttpResponse:
    ManageUserSessionsForm(request=request).save(request)
    messages.success(request, "Every other session is signed out. This one stays signed in.")
    return redirect(reverse("portal:profile") + "#sessions")


@portal_page
def delete_account(request: HttpRequest) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    form = DeleteAccountForm(user=ctx.user)
    if request.method == "POST":
        form = DeleteAccountForm(request.POST, user=ctx.user)
        if form.is_valid():
            revoked = user_delete(user=ctx.user, source_ip=client_ip(request))
            logout(request)
            note = f" {revoked} API key{'s' if revoked != 1 else ''} revoked." if revoked else ""
            messages.success(request, f"Your account is deleted.{note}")
            return redirect("account_login")
    return render_portal(request, "accounts/delete_account.html", {"nav": "profile", "form": form, "impact": _deletion_impact(ctx)})


@portal_page
def organization(request: HttpRequest) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    org = ctx.organization
    form = InviteForm()
    if request.method == "POST":
        if not ctx.is_owner:
            return forbidden(request, "Only owners of this organization can invite people.")
        form = InviteForm(request.POST)
        if form.is_valid():
            try:
                invitation = invitation_create(
                    organization=org, email=form.cleaned_data["email"], role=form.cleaned_data["role"], invited_by=ctx.user
                )
            except InvitationError as exc:
                form.add_error("email", str(exc))
            else:
                link = request.build_absolute_uri(reverse("portal:invitation", args=[invitation.token]))
                try:
                    _send_invitation(request, invitation, link)
                except (OSError, smtplib.SMTPException):
                    messages.warning(request, f"The invitation is saved but the email could not be sent; share this link: {link}")
                else:
                    messages.success(request, f"Invitation sent to {invitation.email}.")
                return redirect("portal:organization")
    members = Membership.objects.filter(organization=org).select_related("user").order_by("created_at", "id")
    pending = [i for i in Invitation.objects.filter(organization=org, accepted_at__isnull=True, cancelled_at__isnull=True) if i.is_pending]
    return render_portal(
        request,
        "accounts/organization.html",
        {"nav": "organization", "members": members, "invitations": pending, "form": form},
    )


def _send_invitation(request: HttpRequest, invitation: Invitation, link: str) -> None:
    context = {
        "invitation": invitation,
        "inviter": invitation.invited_by,
        "link": link,
        "signup": request.build_absolute_uri(reverse("account_signup")),
    }
    subject = f"[Cortensor] You are invited to {invitation.organization.name}"
    send_mail(subject, render_to_string("accounts/email/invitation.txt", context), None, [invitation.email])


@require_POST
@portal_page
def invitation_cancel_view(request: HttpRequest, invitation_id: int) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    invitation = Invitation.objects.filter(pk=invitation_id, organization=ctx.organization).first()
    if invitation is None:
        return render_portal(request, "portal/not_found.html", {"what": "invitation"}, status=404)
    if not ctx.is_owner:
        return forbidden(request, "Only owners of this organization can cancel invitations.")
    invitation_cancel(invitation=invitation)
    messages.success(request, f"The invitation to {invitation.email} is cancelled.")
    return redirect("portal:organization")


def invitation(request: HttpRequest, token: str) -> HttpResponse:
    """The link in an invitation email: join now when signed in with that verified address, else how to."""
    found = Invitation.objects.filter(token=token).select_related("organization", "invited_by").first()
    if found is None or not found.is_pending:
        return render(request, "accounts/invitation.html", {"invitation": None}, status=404)
    if request.user.is_authenticated:
        verified = list(EmailAddress.objects.filter(user=request.user, verified=True).values_list("email", flat=True))
        if found.email in {e.lower() for e in verified}:
            invitations_accept(user=request.user, emails=[found.email])
            request.session[SESSION_ORG_KEY] = found.organization_id
            messages.success(request, f"You joined {found.organization.name}.")
            return redirect("portal:organization")
    return render(request, "accounts/invitation.html", {"invitation": found})


@require_POST
@portal_page
def switch_organization(request: HttpRequest) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    wanted = request.POST.get("organization", "")
    chosen = next((m for m in ctx.memberships if str(m.organization_id) == wanted), None)
    if chosen is not None:
        request.session[SESSION_ORG_KEY] = chosen.organization_id
    # Only a path of this site: never a view name (redirect() would try to reverse one: a 500), a scheme, another host
    # or a control character.
    target = request.POST.get("next", "")
    if not (
        target.startswith("/")
        and target.isprintable()
        and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure())
    ):
        target = reverse("portal:home")
    return HttpResponseRedirect(target)
