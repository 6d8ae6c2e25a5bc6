"""allauth's signals as the portal answers them: an invitee who signed up through the invitation's link joins it."""

from __future__ import annotations

from typing import Any

from allauth.account.signals import user_signed_up
from django.contrib import messages
from django.http import HttpRequest

from accounts.models import User
from accounts.services import InvitationError, invitation_accept
from portal.adapter import SESSION_INVITATION_KEY, invitation_in_session
from portal.context import SESSION_ORG_KEY
from portal.services import personal_organization_create
from portal_project.proxies import client_ip


def join_invitation_at_sign_up(sender: Any, request: HttpRequest | None, user: User, **kwargs: Any) -> None:
    """Signing up from an invitation's link with its address answers it: the account joins that organization and gets
    no personal workspace (PortalAccountAdapter.save_user made none). The address was stashed as verified, so allauth
    recorded it confirmed and sends no verification mail."""
    if request is None:
        return
    invitation = invitation_in_session(request)
    request.session.pop(SESSION_INVITATION_KEY, None)
    if invitation is None or invitation.email.lower() != user.email.lower():
        return
    try:
        membership = invitation_accept(invitation=invitation, user=user, source_ip=client_ip(request))
    except InvitationError:
        # Expired or cancelled between the link and the form: a workspace of their own, as any sign-up gets.
        personal_organization_create(user=user)
        return
    request.session[SESSION_ORG_KEY] = membership.organization_id
    request.portal_joined = True  # type: ignore[attr-defined]  # PortalAccountAdapter.add_message: one banner
    messages.success(
        request, f"Welcome to {invitation.organization.name}: you joined as {membership.get_role_display().lower()}."
    )


def connect_signals() -> None:
    from portal import notifications

    user_signed_up.connect(join_invitation_at_sign_up, dispatch_uid="portal.join_invitation_at_sign_up")
    notifications.connect_signals()
