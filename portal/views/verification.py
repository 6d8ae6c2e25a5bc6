"""The e-mail verification page's actions for someone not signed in yet: send the link again, or fix a mistyped
address. Both act only for the account this session signed up (or tried to sign in) with, which allauth's
verification stage recorded (portal.adapter.SESSION_UNVERIFIED_USER_KEY), and only while it has no confirmed address.
Signing up with an invitation's link goes through here too: the invited address is taken as confirmed."""

from __future__ import annotations

from allauth.account.adapter import get_adapter
from allauth.account.internal.flows.email_verification import send_verification_email_to_address
from allauth.account.models import EmailAddress
from django import forms
from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_GET, require_POST

from accounts.models import Invitation, User
from portal.adapter import SESSION_INVITATION_KEY, SESSION_UNVERIFIED_USER_KEY


class ChangeAddressForm(forms.Form):
    email = forms.EmailField(max_length=254, label="Your e-mail address")


def unverified_account(request: HttpRequest) -> tuple[User, EmailAddress] | None:
    """The account waiting on this session's verification, and the address it waits on; None once confirmed."""
    user_id = request.session.get(SESSION_UNVERIFIED_USER_KEY)
    user = User.objects.filter(pk=user_id, is_active=True).first() if isinstance(user_id, int) else None
    if user is None or EmailAddress.objects.filter(user=user, verified=True).exists():
        return None
    address = EmailAddress.objects.filter(user=user).order_by("-primary", "id").first()
    return (user, address) if address is not None else None


def _back() -> HttpResponse:
    return redirect("account_email_verification_sent")


@require_POST
def verification_resend(request: HttpRequest) -> HttpResponse:
    pending = unverified_account(request)
    if pending is None:
        messages.info(request, "Nothing is waiting for a confirmation here: sign in.")
        return redirect("account_login")
    _, address = pending
    if send_verification_email_to_address(request, address):  # allauth's own rate limit per address; it adds the banner
        return _back()
    messages.warning(request, f"A link went to {address.email} moments ago: give it a minute, then send it again.")
    return _back()


@require_POST
def verification_change_address(request: HttpRequest) -> HttpResponse:
    pending = unverified_account(request)
    if pending is None:
        messages.info(request, "Nothing is waiting for a confirmation here: sign in.")
        return redirect("account_login")
    user, address = pending
    form = ChangeAddressForm(request.POST)
    if not form.is_valid():
        messages.error(request, "That is not an e-mail address: nothing was changed.")
        return _back()
    email = form.cleaned_data["email"].strip().lower()
    if email == address.email.lower():
        return verification_resend(request)
    taken = (
        User.objects.filter(email__iexact=email).exclude(pk=user.pk).exists()
        or EmailAddress.objects.filter(email__iexact=email).exclude(user=user).exists()
    )
    if taken:
        # As at sign-up: the owner of that address is told by mail, and this page says the same as for a free address,
        # so it cannot be used to learn who has an account.
        get_adapter(request).send_account_already_exists_mail(email)
        messages.info(request, f"We sent a message to {email}. Follow its link to finish.")
        return _back()
    with transaction.atomic():
        User.objects.filter(pk=user.pk).update(email=email)
        EmailAddress.objects.filter(user=user).delete()
        new = EmailAddress.objects.create(user=user, email=email, primary=True, verified=False)
    send_verification_email_to_address(request, new)
    return _back()


@require_GET
def invitation_sign_up(request: HttpRequest, token: str) -> HttpResponse:
    """The invitation's "Sign up" button: the sign-up form with the invited address filled in and taken as confirmed
    (the link was mailed to it; allauth's stash of a verified address), and the account joins the organization
    instead of getting a workspace of its own (portal.signals)."""
    found = Invitation.objects.filter(token=token).first()
    if found is None or not found.is_pending or request.user.is_authenticated:
        return redirect("portal:invitation", token=token)
    get_adapter(request).stash_verified_email(request, found.email)
    request.session[SESSION_INVITATION_KEY] = token
    return redirect("account_signup")
