"""allauth hooks: a personal organization at sign-up, the profile after a password change, staff sign-in."""

from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.models import EmailAddress
from allauth.account.stages import EmailVerificationStage
from django.http import HttpRequest
from django.urls import reverse

from accounts.models import User
from portal.services import personal_organization_create


class PortalAccountAdapter(DefaultAccountAdapter):
    # Invitations are not joined here: a pending invitation to a verified address waits on the portal for the
    # user's Accept or Decline (portal.views.accounts.invitation_answer), so signing in never switches organizations.

    def save_user(self, request: HttpRequest, user: User, form: Any, commit: bool = True) -> User:
        user = super().save_user(request, user, form, commit)
        if commit:
            personal_organization_create(user=user)
        return user

    def get_password_change_redirect_url(self, request: HttpRequest) -> str:
        return reverse("portal:profile")

    def get_login_stages(self) -> list[str]:
        return [STAFF_AWARE_EMAIL_STAGE if stage == ALLAUTH_EMAIL_STAGE else stage for stage in super().get_login_stages()]


ALLAUTH_EMAIL_STAGE = "allauth.account.stages.EmailVerificationStage"
STAFF_AWARE_EMAIL_STAGE = "portal.adapter.StaffAwareEmailVerificationStage"


class StaffAwareEmailVerificationStage(EmailVerificationStage):
    """allauth's "confirm your address first", except for staff accounts the operator made (createsuperuser, the
    admin), which have no address record to confirm: the admin signs in through this form. Nothing is marked
    verified, so such an address still claims no invitation."""

    def handle(self) -> tuple[Any, bool]:
        user = self.login.user
        if user is not None and user.is_staff and not EmailAddress.objects.filter(user=user).exists():
            return None, True
        return super().handle()
