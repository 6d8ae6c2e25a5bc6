"""Account pages of the portal: profile and sessions, deleting an account, the organization and its invitations."""

from __future__ import annotations

import smtplib
from datetime import timedelta

from allauth.account.forms import ChangePasswordForm
from allauth.account.internal import flows
from allauth.account.models import EmailAddress
from allauth.decorators import rate_limit
from allauth.usersessions.forms import ManageUserSessionsForm
from allauth.usersessions.models import UserSession
from django.conf import settings
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
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from accounts.models import Invitation, Membership
from accounts.services import (
    InvitationError,
    LastOwner,
    MembershipError,
    NotAnOwner,
    invitation_accept,
    invitation_cancel,
    invitation_create,
    invitation_decline,
    membership_change_role,
    membership_leave,
    membership_remove,
    organization_transfer_ownership,
    user_deletion_impact,
    user_update_profile,
)
from apikeys.models import ApiKey
from apikeys.services import user_delete
from portal.context import SESSION_ORG_KEY, PortalContext, forbidden, portal_page, render_portal
from portal.forms import DeleteAccountForm, InviteForm, ProfileForm, RoleForm, TransferForm
from portal_project.proxies import client_ip
from usage.models import UsageEvent
from usage.selectors import read_snapshot, usage_feed_cursor

# How long after its first request an organization still lands on the first-run checklist (with every step ticked
# and the next steps) before /portal/ goes to its usage.
CHECKLIST_AFTER_FIRST_REQUEST = timedelta(days=1)


@portal_page
def home(request: HttpRequest) -> HttpResponse:
    """A new organization's first run: a checklist (address confirmed, first key, first request, ticked live over the
    usage feed when it lands), then the next steps; an organization that is under way goes to its usage."""
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    org = ctx.organization
    customer_keys = ApiKey.objects.filter(organization=org, kind=ApiKey.Kind.STANDARD)
    # Any request made with a key counts, as the live feed that ticks the step sees it (the playground's too).
    requests = UsageEvent.objects.filter(organization=org, api_key__isnull=False)
    with read_snapshot():
        cursor = usage_feed_cursor()
        first = requests.order_by("created_at", "id").only("request_id", "created_at", "alias", "route", "http_status").first()
    if first is not None and first.created_at < timezone.now() - CHECKLIST_AFTER_FIRST_REQUEST:
        return redirect("portal:usage")
    plan = org.plan
    return render_portal(
        request,
        "portal/home.html",
        {
            "nav": "home",
            "email_confirmed": EmailAddress.objects.filter(user=ctx.user, verified=True).exists(),
            "first_key": customer_keys.order_by("created_at", "id").first(),
            "first_request": first,
            "live_cursor": str(cursor),
            "plan": plan,
            "base_url": settings.PORTAL_PUBLIC_BASE_URL,
            "model": settings.PORTAL_DEFAULT_MODEL or "oss-20b",
        },
    )


def _sessions(request: HttpRequest) -> list[UserSession]:
    return sorted(UserSession.objects.purge_and_list(request.user), key=lambda s: s.created_at, reverse=True)


def _deletion_impact(ctx: PortalContext) -> dict[str, list[dict[str, object]]]:
    """The organizations this user alone owns: those closed with the account (their active keys revoked), and those
    that block the deletion because other members would be left without an owner."""
    impact = user_deletion_impact(user=ctx.user)
    now = timezone.now()
    active = (
        ApiKey.objects.filter(organization__in=impact.closing, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .values("organization_id")
        .annotate(n=Count("id"))
    )
    counts = {row["organization_id"]: row["n"] for row in active}
    return {
        "closing": [{"organization": org, "active_keys": counts.get(org.pk, 0)} for org in impact.closing],
        "blocking": [{"organization": org, "members": org.members} for org in impact.blocking],
    }


@portal_page
def profile(request: HttpRequest) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    form = ProfileForm(initial={"name": ctx.user.name, "time_zone": ctx.user.time_zone})
    if request.method == "POST":
        form = ProfileForm(request.POST)
        if form.is_valid():
            time_zone = form.cleaned_data["time_zone"] or None
            user_update_profile(user=ctx.user, name=form.cleaned_data["name"], time_zone=time_zone)
            messages.success(request, "Your details are saved.")
            return redirect("portal:profile")
    return _profile_page(request, ctx, form=form)


def _profile_page(
    request: HttpRequest, ctx: PortalContext, *, form: ProfileForm, password_form: ChangePasswordForm | None = None
) -> HttpResponse:
    return render_portal(
        request,
        "accounts/profile.html",
        {
            "nav": "profile",
            "form": form,
            "password_form": password_form,
            "sessions": _sessions(request),
            "impact": _deletion_impact(ctx),
        },
        status=400 if password_form is not None or (form.is_bound and form.errors) else 200,
    )


@require_POST
@sensitive_post_parameters("oldpassword", "password1", "password2")
@rate_limit(action="change_password")
@portal_page
def change_password(request: HttpRequest) -> HttpResponse:
    """The profile page's password form. A wrong current password, or a new one the validators refuse, comes back on
    the profile page with the error under its field (allauth's own page is another look and loses the context)."""
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    if not ctx.user.has_usable_password():
        return redirect("account_set_password")
    form = ChangePasswordForm(data=request.POST, user=ctx.user)
    if not form.is_valid():
        return _profile_page(request, ctx, form=ProfileForm(initial={"name": ctx.user.name}), password_form=form)
    form.save()
    # allauth's own ending: other sessions out, "Password successfully changed.", the security mail, the signal.
    flows.password_change.finalize_password_change(request, ctx.user)
    return redirect(reverse("portal:profile") + "#password")


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
            try:
                revoked = user_delete(user=ctx.user, source_ip=client_ip(request))
            except LastOwner as exc:
                form.add_error(None, str(exc))
                return render_portal(
                    request, "accounts/delete_account.html", {"nav": "profile", "form": form, "impact": _deletion_impact(ctx)}
                )
            logout(request)
            note = f" {revoked} API key{'s' if revoked != 1 else ''} revoked." if revoked else ""
            messages.success(request, f"Your account is deleted.{note}")
            return redirect("account_login")
    return render_portal(
        request, "accounts/delete_account.html", {"nav": "profile", "form": form, "impact": _deletion_impact(ctx)}
    )


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
    members = list(Membership.objects.filter(organization=org).select_related("user").order_by("created_at", "id"))
    pending = [
        i
        for i in Invitation.objects.filter(organization=org, accepted_at__isnull=True, cancelled_at__isnull=True)
        if i.is_pending
    ]
    owners = sum(1 for m in members if m.role == Membership.Role.OWNER)
    return render_portal(
        request,
        "accounts/organization.html",
        {
            "nav": "organization",
            "members": members,
            "invitations": pending,
            "form": form,
            "roles": Membership.Role.choices,
            "last_owner": ctx.is_owner and owners == 1,
            "others": [m for m in members if m.user_id != ctx.user.pk],
        },
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
    """The link in an invitation email: Accept and Decline for the invitee signed in with that verified address,
    else how to get there. Nothing is joined by opening it."""
    found = Invitation.objects.filter(token=token).select_related("organization", "invited_by").first()
    if found is None or not found.is_pending:
        return render(request, "accounts/invitation.html", {"invitation": None}, status=404)
    answerable = (
        request.user.is_authenticated
        and EmailAddress.objects.filter(user=request.user, email__iexact=found.email, verified=True).exists()
    )
    return render(request, "accounts/invitation.html", {"invitation": found, "answerable": answerable})


def _answer(request: HttpRequest, invitation_id: int, accept: bool) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    # Only invitations to this user's verified addresses exist for them: ids are guessable, addresses are not shown.
    found = next((i for i in ctx.pending_invitations() if i.pk == invitation_id), None)
    if found is None:
        return render_portal(request, "portal/not_found.html", {"what": "invitation"}, status=404)
    try:
        if accept:
            membership = invitation_accept(invitation=found, user=ctx.user, source_ip=client_ip(request))
        else:
            invitation_decline(invitation=found, user=ctx.user)
    except InvitationError as exc:
        messages.error(request, str(exc))
        return redirect("portal:organization")
    if not accept:
        messages.success(request, f"You declined the invitation to {found.organization.name}.")
        return redirect(_safe_next(request))
    request.session[SESSION_ORG_KEY] = membership.organization_id
    messages.success(request, f"You joined {found.organization.name} as {membership.get_role_display().lower()}.")
    return redirect("portal:organization")


@require_POST
@portal_page
def invitation_accept_view(request: HttpRequest, invitation_id: int) -> HttpResponse:
    return _answer(request, invitation_id, accept=True)


@require_POST
@portal_page
def invitation_decline_view(request: HttpRequest, invitation_id: int) -> HttpResponse:
    return _answer(request, invitation_id, accept=False)


def _safe_next(request: HttpRequest) -> str:
    target = request.POST.get("next") or reverse("portal:home")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        target = reverse("portal:home")
    return target


# --- Members: remove, change role, hand over, leave ---------------------------------------------------------------


def _member(ctx: PortalContext, membership_id: int) -> Membership | None:
    return (
        Membership.objects.filter(pk=membership_id, organization=ctx.organization).select_related("user", "organization").first()
    )


def _membership_refused(request: HttpRequest, exc: MembershipError) -> HttpResponse:
    if isinstance(exc, NotAnOwner):
        return forbidden(request, str(exc))
    messages.error(request, str(exc))
    return redirect(reverse("portal:organization") + "#members")


@portal_page
def member_remove(request: HttpRequest, membership_id: int) -> HttpResponse:
    """GET: what removing this member does, to confirm. POST: remove them."""
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    member = _member(ctx, membership_id)
    if member is None:
        return render_portal(request, "portal/not_found.html", {"what": "member"}, status=404)
    if not ctx.is_owner:
        return forbidden(request, "Only owners of this organization can remove members.")
    if member.user_id == ctx.user.pk:
        return redirect("portal:organization-leave")
    if request.method == "POST":
        try:
            membership_remove(membership=member, actor=ctx.user, source_ip=client_ip(request))
        except MembershipError as exc:
            return _membership_refused(request, exc)
        messages.success(request, f"{member.user.email} is no longer a member of {ctx.organization.name}.")
        return redirect(reverse("portal:organization") + "#members")
    return render_portal(request, "accounts/member_remove.html", {"nav": "organization", "member": member})


@require_POST
@portal_page
def member_role(request: HttpRequest, membership_id: int) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    member = _member(ctx, membership_id)
    if member is None:
        return render_portal(request, "portal/not_found.html", {"what": "member"}, status=404)
    if not ctx.is_owner:
        return forbidden(request, "Only owners of this organization can change roles.")
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose owner, admin or member.")
        return redirect(reverse("portal:organization") + "#members")
    try:
        changed = membership_change_role(
            membership=member, role=form.cleaned_data["role"], actor=ctx.user, source_ip=client_ip(request)
        )
    except MembershipError as exc:
        return _membership_refused(request, exc)
    messages.success(request, f"{member.user.email} is now {changed.get_role_display().lower()}.")
    return redirect(reverse("portal:organization") + "#members")


@portal_page
def transfer_ownership(request: HttpRequest) -> HttpResponse:
    """GET: choose the member to make owner. POST: make them owner, and step down to admin if asked."""
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    if not ctx.is_owner:
        return forbidden(request, "Only owners of this organization can hand it over.")
    others = (
        Membership.objects.filter(organization=ctx.organization)
        .exclude(user=ctx.user)
        .select_related("user")
        .order_by("created_at", "id")
    )
    form = TransferForm(members=others)
    if request.method == "POST":
        form = TransferForm(request.POST, members=others)
        if form.is_valid():
            try:
                target = organization_transfer_ownership(
                    organization=ctx.organization,
                    to_membership=form.cleaned_data["member"],
                    actor=ctx.user,
                    step_down=form.cleaned_data["step_down"],
                    source_ip=client_ip(request),
                )
            except MembershipError as exc:
                return _membership_refused(request, exc)
            note = " You are an admin now." if form.cleaned_data["step_down"] else ""
            messages.success(request, f"{target.user.email} is an owner of {ctx.organization.name}.{note}")
            return redirect(reverse("portal:organization") + "#members")
    return render_portal(
        request, "accounts/transfer_ownership.html", {"nav": "organization", "form": form, "has_others": others.exists()}
    )


@portal_page
def leave_organization(request: HttpRequest) -> HttpResponse:
    """GET: what leaving does, to confirm. POST: leave the organization the portal is showing."""
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    sole_owner = (
        ctx.is_owner
        and not Membership.objects.filter(organization=ctx.organization, role=Membership.Role.OWNER)
        .exclude(pk=ctx.membership.pk)
        .exists()
    )
    if request.method == "POST":
        try:
            membership_leave(membership=ctx.membership, source_ip=client_ip(request))
        except MembershipError as exc:
            return _membership_refused(request, exc)
        request.session.pop(SESSION_ORG_KEY, None)
        messages.success(request, f"You left {ctx.organization.name}.")
        return redirect("portal:home")
    return render_portal(request, "accounts/leave_organization.html", {"nav": "organization", "sole_owner": sole_owner})


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
