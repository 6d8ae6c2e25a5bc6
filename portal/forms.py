"""Forms of the portal's account pages, and allauth's sign-in and sign-up forms with a per-IP rate limit."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from allauth.account.forms import LoginForm, SignupForm
from allauth.core import context
from allauth.core.exceptions import ImmediateHttpResponse
from django import forms
from django.conf import settings
from django.core.validators import URLValidator
from django.http import HttpRequest

from accounts.models import Membership
from accounts.time_zones import time_zone_names
from billing.money import dollars_to_micros, micros_to_dollars
from billing.services import MAX_SPEND_CAP_MICROS, webhook_url_problem
from portal.context import rate_limit_usage, too_many_requests


def _limit(request: HttpRequest | None, group: str, rate: str) -> None:
    # clean() runs on every POST, valid or not, so every attempt is counted; allauth turns the
    # ImmediateHttpResponse into the response (its views and its middleware both handle it).
    if request is None:
        return
    retry_after = rate_limit_usage(request, group=group, rate=rate)
    if retry_after is not None:
        raise ImmediateHttpResponse(too_many_requests(request, retry_after))


class PortalLoginForm(LoginForm):
    def clean(self) -> dict[str, Any]:
        _limit(self.request or context.request, "portal:signin", settings.PORTAL_RATELIMIT_SIGNIN)
        return super().clean()


class PortalSignupForm(SignupForm):
    def clean(self) -> dict[str, Any]:
        _limit(context.request, "portal:signup", settings.PORTAL_RATELIMIT_SIGNUP)
        return super().clean()


def _time_zone_choices() -> list[tuple[str, str]]:
    return [(name, name.replace("_", " ")) for name in time_zone_names()]


class ProfileForm(forms.Form):
    name = forms.CharField(max_length=150, required=False, label="Name")
    # Every name zoneinfo knows, and only those: a ChoiceField refuses anything else with a form error.
    time_zone = forms.ChoiceField(
        choices=_time_zone_choices,
        required=False,  # left out: the zone stays as it is
        initial="UTC",
        label="Time zone",
        help_text="Usage times and days are shown in it.",
    )


class InviteForm(forms.Form):
    email = forms.EmailField(label="Email address")
    role = forms.ChoiceField(
        choices=[
            (Membership.Role.MEMBER, "Member: sees keys and usage"),
            (Membership.Role.ADMIN, "Admin: also creates and revokes keys"),
        ],
        initial=Membership.Role.MEMBER,
    )


class DeleteAccountForm(forms.Form):
    password = forms.CharField(label="Your password", widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        self.user = user
        super().__init__(*args, **kwargs)

    def clean_password(self) -> str:
        password = self.cleaned_data["password"]
        if not self.user.check_password(password):
            raise forms.ValidationError("That is not your password.")
        return password


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)


class TransferForm(forms.Form):
    member = forms.ModelChoiceField(queryset=Membership.objects.none(), label="New owner", empty_label=None)
    step_down = forms.BooleanField(required=False, label="Step down to admin myself")

    def __init__(self, *args: Any, members: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        member = self.fields["member"]
        assert isinstance(member, forms.ModelChoiceField)  # declared above; the stubs know only a Field
        member.queryset = members
        # Replaced on this instance, which the field calls like any attribute; the stubs see a method (parameter `obj`).
        member.label_from_instance = lambda m: (  # type: ignore[method-assign, assignment]
            f"{m.user.name or m.user.email} ({m.user.email}, {m.get_role_display().lower()})"
        )


class SpendSettingsForm(forms.Form):
    """The billing page's spend caps (dollars, exact to the micro-unit; empty: no cap) and alert webhook URL."""

    daily_cap = forms.DecimalField(
        label="Daily spend cap ($)",
        required=False,
        min_value=Decimal(0),
        max_value=micros_to_dollars(MAX_SPEND_CAP_MICROS),
        max_digits=13,
        decimal_places=6,
        help_text="per UTC day; empty: no cap",
    )
    monthly_cap = forms.DecimalField(
        label="Monthly spend cap ($)",
        required=False,
        min_value=Decimal(0),
        max_value=micros_to_dollars(MAX_SPEND_CAP_MICROS),
        max_digits=13,
        decimal_places=6,
        help_text="per calendar month (UTC); empty: no cap",
    )
    alert_webhook_url = forms.CharField(
        label="Alert webhook URL",
        required=False,
        max_length=500,
        validators=[URLValidator(schemes=["http", "https"])],
        help_text="we POST a signed JSON event here at 50%, 80% and 100% of a cap and on a low balance; empty: e-mail only",
    )

    def clean_alert_webhook_url(self) -> str:
        url = self.cleaned_data["alert_webhook_url"].strip()
        if url and (problem := webhook_url_problem(url)):
            raise forms.ValidationError(problem)
        return url

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        daily, monthly = cleaned.get("daily_cap"), cleaned.get("monthly_cap")
        if daily is not None and monthly is not None and daily > monthly:
            self.add_error("daily_cap", "A daily cap above the monthly cap would never be reached.")
        return cleaned

    def micros(self, field: str) -> int | None:
        value = self.cleaned_data.get(field)
        return None if value is None else dollars_to_micros(value)
