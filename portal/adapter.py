"""allauth hooks: a personal organization at sign-up (or the invitation's organization), the profile after a password
change, staff sign-in, and what the e-mail verification page needs to offer a resend."""

from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.models import EmailAddress
from allauth.account.stages import EmailVerificationStage
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.urls import reverse

from accounts.models import Invitation, User
from portal.services import personal_organization_create
from portal_project.proxies import client_ip

# The invitation a visitor followed to sign up (portal.views.accounts.invitation_sign_up): its address is stashed as
# verified (allauth's own mechanism: the link was mailed to it), and the new account joins it instead of getting a
# personal workspace (portal.signals.join_invitation_at_sign_up).
SESSION_INVITATION_KEY = "portal_invitation_token"
# The account that signed up, or tried to sign in, with an address not yet confirmed: the verification page's resend
# and change-address forms act for it (portal.views.verification). Only this session's own attempt puts it there.
SESSION_UNVERIFIED_USER_KEY = "portal_unverified_user_id"


def invitation_in_session(request: HttpRequest) -> Invitation | None:
    token = request.session.get(SESSION_INVITATION_KEY)
    if not token:
        return None
    found = Invitation.objects.filter(token=token).select_related("organization").first()
    return found if found is not None and found.is_pending else None


class PortalAccountAdapter(DefaultAccountAdapter):
    # Invitations are not joined here: a pending invitation to a verified address waits on the portal for the
    # user's Accept or Decline (portal.views.accounts.invitation_answer), so signing in never switches organizations.
    # The one exception is signing up through the invitation's own link, which is the answer.

    def save_user(self, request: HttpRequest, user: User, form: Any, commit: bool = True) -> User:
        invitation = invitation_in_session(request)
        if invitation is not None and (form.cleaned_data.get("email") or "").strip().lower() != invitation.email.lower():
            # Signing up with another address: that address is confirmed by mail as usual, and the invited one is
            # not added to the account on the strength of a link it did not use.
            request.session["account_verified_email"] = None
            request.session.pop(SESSION_INVITATION_KEY, None)
            invitation = None
        user = super().save_user(request, user, form, commit)
        if commit and invitation is None:
            personal_organization_create(user=user)
        return user

    def get_password_change_redirect_url(self, request: HttpRequest) -> str:
        return reverse("portal:profile")

    # A new account lands on the first-run checklist (portal:home); signing in later still goes to LOGIN_REDIRECT_URL.
    def get_signup_redirect_url(self, request: HttpRequest) -> str:
        return reverse("portal:home")

    def get_email_verification_redirect_url(self, email_address: EmailAddress) -> str:
        return reverse("portal:home")

    def get_login_stages(self) -> list[str]:
        return [STAFF_AWARE_EMAIL_STAGE if stage == ALLAUTH_EMAIL_STAGE else stage for stage in super().get_login_stages()]

    def respond_email_verification_sent(self, request: HttpRequest, user: Any) -> HttpResponseBase:
        if user is not None and user.pk is not None:
            request.session[SESSION_UNVERIFIED_USER_KEY] = user.pk
        return super().respond_email_verification_sent(request, user)

    def add_message(self, request: HttpRequest, level: int, message_template: str = "", *args: Any, **kwargs: Any) -> None:
        # Joining through an invitation says "You joined …" once; "Successfully signed in" on top of it is noise.
        if message_template == "account/messages/logged_in.txt" and getattr(request, "portal_joined", False):
            return
        super().add_message(request, level, message_template, *args, **kwargs)

    def get_client_ip(self, request: HttpRequest) -> str:
        # The address our trusted proxies vouch for (portal_project.proxies), as every audit row records it.
        return client_ip(request) or ""


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
