"""allauth hooks: a personal organization at sign-up, the profile after a password change."""

from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from django.http import HttpRequest
from django.urls import reverse

from accounts.models import User
from accounts.services import personal_organization_create


class PortalAccountAdapter(DefaultAccountAdapter):
    # Invitations are not joined here: a pending invitation to a verified address waits on the portal for the
    # user's Accept or Decline (accounts.views.invitation_answer), so signing in never switches organizations.

    def save_user(self, request: HttpRequest, user: User, form: Any, commit: bool = True) -> User:
        user = super().save_user(request, user, form, commit)
        if commit:
            personal_organization_create(user=user)
        return user

    def get_password_change_redirect_url(self, request: HttpRequest) -> str:
        return reverse("portal:profile")

