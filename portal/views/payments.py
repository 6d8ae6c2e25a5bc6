"""Paying through Stripe from the billing page: a credit top-up or a plan upgrade (Stripe Checkout), the Stripe customer
portal, and the webhook endpoint Stripe calls (POST /stripe/webhook, outside /portal).

Each form posts here and is sent on to Stripe's hosted page with a 303; the card never passes through us. What a
payment changes (a credit, a plan) comes only from the verified webhook (billing.payments).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from accounts.models import Organization
from billing.models import Plan, StripeEvent
from billing.money import MICROS_PER_CENT
from billing.payments import (
    NotUpgradable,
    PaymentFailed,
    PaymentsOff,
    TopupOutOfBounds,
    WebhookRefused,
    billing_portal_create,
    checkout_topup_create,
    checkout_upgrade_create,
    payments_enabled,
    stripe_webhook_receive,
)
from portal.context import NotAMember, PortalContext, portal_context, portal_page, rate_limit_usage, render_portal

log = logging.getLogger("portal.payments")

# Stripe's events are a few kilobytes; a body far beyond that is not one of them.
WEBHOOK_MAX_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class PaymentsPanel:
    """What the billing page's payment section shows."""

    enabled: bool
    can_pay: bool
    min_cents: int
    max_cents: int
    upgrade: Plan | None  # the next plan up, when it can be bought online
    notice: str  # after coming back from Stripe
    notice_is_done: bool
    # How to turn payments on (the settings' names) is for the operator: staff, or anyone on a DEBUG laptop (make run);
    # a customer is only told that paying online is not offered here.
    show_setup: bool = False

    @property
    def min_dollars(self) -> str:
        return _dollars(self.min_cents)

    @property
    def max_dollars(self) -> str:
        return _dollars(self.max_cents)

    @property
    def min_micros(self) -> int:
        return self.min_cents * MICROS_PER_CENT

    @property
    def max_micros(self) -> int:
        return self.max_cents * MICROS_PER_CENT


def _dollars(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def payments_panel(request: HttpRequest, ctx: PortalContext, upgraded: Plan | None) -> PaymentsPanel:
    """The billing page's payment section for this organization and user (one query, only after a payment)."""
    notice, done = "", False
    returned = request.GET.get("checkout", "")
    if returned == "topup":
        session_id = request.GET.get("session_id", "")
        done = (
            bool(session_id)
            and "\x00" not in session_id
            and StripeEvent.objects.filter(
                object_id=session_id[:255], organization=ctx.organization, outcome=StripeEvent.Outcome.APPLIED
            ).exists()
        )
        notice = (
            "Thank you: your payment is credited below."
            if done
            else "Thank you: Stripe took your payment. The credit appears here as soon as Stripe confirms it; reload in a moment."
        )
    elif returned == "upgrade":
        notice = "Thank you: your plan changes as soon as Stripe confirms the subscription; reload in a moment."
    elif returned == "cancelled":
        notice = "Payment cancelled: nothing was charged."
    return PaymentsPanel(
        enabled=payments_enabled(),
        can_pay=ctx.can_manage_keys,
        min_cents=settings.PORTAL_TOPUP_MIN_CENTS,
        max_cents=settings.PORTAL_TOPUP_MAX_CENTS,
        upgrade=upgraded if upgraded is not None and upgraded.stripe_price_id else None,
        notice=notice,
        notice_is_done=done,
        show_setup=settings.DEBUG or bool(getattr(request.user, "is_staff", False)),
    )


_AMOUNT = re.compile(r"\d{1,9}(?:\.\d{1,2})?")


def parse_amount_cents(raw: str) -> int | None:
    """A dollar amount as typed ("10", "10.5", "$1,000.00") in whole cents; None when it is not one."""
    text = raw.strip().replace(",", "").removeprefix("$")
    if not _AMOUNT.fullmatch(text):
        return None
    dollars, _, cents = text.partition(".")
    return int(dollars) * 100 + int(cents.ljust(2, "0") or 0)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _paying_context(request: HttpRequest) -> PortalContext:
    """The organization the form names (the billing page may show another than the session's), for an owner or admin."""
    if not payments_enabled():
        raise _Refused(404, "Online payments are not enabled on this portal.")
    try:
        ctx = portal_context(request, org=request.POST.get("org", "").strip()[:100] or None)
    except NotAMember:
        raise _Refused(404, "No such organization among yours.") from None
    request.portal = ctx  # type: ignore[attr-defined]
    if not ctx.can_manage_keys:
        raise _Refused(403, f"Only owners and admins of {ctx.organization.name} pay for it.")
    if rate_limit_usage(request, group="stripe-checkout", rate=settings.PORTAL_RATELIMIT_CHECKOUT, key="user") is not None:
        raise _Refused(429, "Too many payment attempts; please wait a while and try again.")
    return ctx


def _billing_url(request: HttpRequest, org: Organization, **query: str) -> str:
    return request.build_absolute_uri(reverse("portal:billing")) + "?" + urlencode({"org": org.slug, **query})


def _to_stripe(url: str) -> HttpResponse:
    response = HttpResponseRedirect(url)
    response.status_code = 303  # after a POST: the browser GETs Stripe's page
    return response


def _refused(request: HttpRequest, status: int, message: str) -> HttpResponse:
    if not hasattr(request, "portal"):
        request.portal = portal_context(request)  # type: ignore[attr-defined]
    return render_portal(request, "billing/payment_refused.html", {"nav": "billing", "message": message}, status=status)


def _paying(view: Callable[[HttpRequest, PortalContext], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    """A payment form's POST: signed in, an owner or admin of the organization it names, refusals as pages."""

    @require_POST
    @portal_page
    @functools.wraps(view)
    def wrapped(request: HttpRequest) -> HttpResponse:
        try:
            ctx = _paying_context(request)
            return view(request, ctx)
        except _Refused as refusal:
            return _refused(request, refusal.status, refusal.message)
        except (TopupOutOfBounds, NotUpgradable) as exc:
            return _refused(request, 400, str(exc))
        except PaymentFailed as exc:
            return _refused(request, 502, str(exc))
        except PaymentsOff:
            return _refused(request, 404, "Online payments are not enabled on this portal.")

    return wrapped


@_paying
def topup(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    """POST amount (dollars): a Checkout session for that much credit."""
    cents = parse_amount_cents(request.POST.get("amount", ""))
    if cents is None:
        raise _Refused(400, "The amount must be a number of dollars, with at most two decimals (e.g. 10 or 12.50).")
    org = ctx.organization
    url = checkout_topup_create(
        organization=org,
        user=ctx.user,
        amount_cents=cents,
        success_url=_billing_url(request, org, checkout="topup") + "&session_id={CHECKOUT_SESSION_ID}",
        cancel_url=_billing_url(request, org, checkout="cancelled"),
    )
    return _to_stripe(url)


@_paying
def upgrade(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    """POST plan (slug): a Checkout subscription to that plan's Stripe price."""
    plan = Plan.objects.filter(slug=request.POST.get("plan", "").strip()[:32]).first()
    if plan is None:
        raise _Refused(400, "No such plan.")
    org = ctx.organization
    url = checkout_upgrade_create(
        organization=org,
        user=ctx.user,
        plan=plan,
        success_url=_billing_url(request, org, checkout="upgrade"),
        cancel_url=_billing_url(request, org, checkout="cancelled"),
    )
    return _to_stripe(url)


@_paying
def manage(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    """The Stripe customer portal: cards, invoices, the subscription."""
    org = ctx.organization
    return _to_stripe(billing_portal_create(organization=org, user=ctx.user, return_url=_billing_url(request, org)))


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Stripe's event deliveries: 200 for an event taken in (applied, ignored or already seen), 400 for one that is not
    genuine or not fresh, 404 while payments are off. A failure of ours is a 5xx, which Stripe retries."""
    if not settings.PORTAL_STRIPE_WEBHOOK_SECRET:
        return JsonResponse({"error": "payments are not enabled"}, status=404)
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    if declared > WEBHOOK_MAX_BYTES:
        return JsonResponse({"error": f"the body is larger than {WEBHOOK_MAX_BYTES} bytes"}, status=413)
    try:
        payload = request.body
    except RequestDataTooBig:
        return JsonResponse({"error": f"the body is larger than {WEBHOOK_MAX_BYTES} bytes"}, status=413)
    if len(payload) > WEBHOOK_MAX_BYTES:
        return JsonResponse({"error": f"the body is larger than {WEBHOOK_MAX_BYTES} bytes"}, status=413)
    try:
        result = stripe_webhook_receive(payload=payload, signature=request.headers.get("Stripe-Signature", ""))
    except WebhookRefused as exc:
        log.warning("stripe webhook refused: %s", exc)
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"received": True, "id": result.event_id, "outcome": result.outcome})
