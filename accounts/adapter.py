"""allauth hooks: a personal organization at sign-up, invitations honoured once an address is verified."""

from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.models import EmailAddress
from django.contrib import messages
from django.http import HttpRequest
from django.urls import reverse

from accounts.models import Membership, User
from accounts.portal import SESSION_ORG_KEY
from accounts.services import invitations_accept, personal_organization_create


class PortalAccountAdapter(DefaultAccountAdapter):
    def save_user(self, request: HttpRequest, user: User, form: Any, commit: bool = True) -> User:
        user = super().save_user(request, user, form, commit)
        if commit:
            personal_organization_create(user=user)
        return user

    def confirm_email(self, request: HttpRequest, email_address: EmailAddress) -> bool:
        confirmed = super().confirm_email(request, email_address)
        if confirmed:
            # Only a verified address may claim an invitation: the invitation names an address, not a person.
            _joined(request, invitations_accept(user=email_address.user, emails=[email_address.email]))
        return confirmed

    def login(self, request: HttpRequest, user: User) -> None:
        super().login(request, user)
        verified = list(EmailAddress.objects.filter(user=user, verified=True).values_list("email", flat=True))
        _joined(request, invitations_accept(user=user, emails=verified))

    def get_password_change_redirect_url(self, request: HttpRequest) -> str:
        return reverse("portal:profile")


def _joined(request: HttpRequest, memberships: list[Membership]) -> None:
    """Open the portal on the organization just joined, and say so."""
    if not memberships:
        return
    request.session[SESSION_ORG_KEY] = memberships[-1].organization_id
    messages.success(request, f"You joined {', '.join(m.organization.name for m in memberships)}.")
