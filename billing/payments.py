"""Payments through Stripe: Checkout sessions for credit top-ups and plan upgrades, the customer portal, and the
webhook events that credit the ledger or change the plan.

No card data touches our servers: customers pay on Stripe's hosted pages. What we learn of a payment comes from a
webhook event, verified with the SDK's signature check (`stripe.Webhook.construct_event`) and recorded as a
billing.StripeEvent in the same transaction as its effect, so a replay finds the record and changes nothing.
Subscription events that arrive older than the last one applied to their subscription are ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction

from accounts.models import Organization, User
from billing.models import LedgerEntry, Plan, StripeEvent
from billing.money import MICROS_PER_CENT, format_micros_cents
from billing.services import ledger_entry_add, plan_get_default, subscription_start

log = logging.getLogger("billing.payments")

CURRENCY = "usd"  # balances are dollars (billing.money)
TOPUP_PURPOSE = "topup"
UPGRADE_PURPOSE = "upgrade"
# Stripe's default: a signed event older than this is refused, so a captured one cannot be replayed later.
WEBHOOK_TOLERANCE_S = 300
# Subscription states in which the organization keeps the plan it pays for (past_due: Stripe is still retrying).
PAYING_STATES = frozenset({"active", "trialing", "past_due"})
ENDED_STATES = frozenset({"canceled", "unpaid", "incomplete_expired", "paused"})


class PaymentsOff(RuntimeError):
    """PORTAL_STRIPE_SECRET_KEY is not set."""


class PaymentFailed(RuntimeError):
    """Stripe could not be reached or refused the call; the message is fit for a customer (no detail of ours)."""


class TopupOutOfBounds(ValueError):
    pass


class NotUpgradable(ValueError):
    pass


class WebhookRefused(ValueError):
    """Not a genuine, fresh Stripe event: answered 400, so Stripe shows the failure on the endpoint."""


def payments_enabled() -> bool:
    return bool(settings.PORTAL_STRIPE_SECRET_KEY)


@lru_cache(maxsize=4)
def _client(secret_key: str, api_base: str, timeout_s: float) -> stripe.StripeClient:
    # httpx (already ours) rather than the SDK's pick of whatever is installed; two retries, each with the SDK's
    # idempotency key, so a dropped answer cannot create a second session or customer.
    return stripe.StripeClient(
        secret_key,
        base_addresses={"api": api_base},
        http_client=stripe.HTTPXClient(timeout=timeout_s, allow_sync_methods=True),
        max_network_retries=2,
    )


def stripe_client() -> stripe.StripeClient:
    if not payments_enabled():
        raise PaymentsOff("payments are off: PORTAL_STRIPE_SECRET_KEY is not set")
    return _client(settings.PORTAL_STRIPE_SECRET_KEY, settings.PORTAL_STRIPE_API_BASE, settings.PORTAL_STRIPE_TIMEOUT_S)


def _stripe_failed(exc: stripe.StripeError, doing: str) -> PaymentFailed:
    # The SDK's message names the request id and Stripe's reason, never the key: for the log, not the customer.
    log.error("stripe call failed while %s: %s %s", doing, exc.__class__.__name__, exc.user_message or exc)
    return PaymentFailed("Stripe could not be reached just now; nothing was charged. Please try again in a minute.")


def stripe_customer_ensure(*, organization: Organization, email: str) -> str:
    """The organization's Stripe customer id, created on first use and kept in Organization.stripe_customer_id.

    Two first uses at once: the idempotency key (the organization and what is sent) makes Stripe answer both with
    one customer, and the conditional update keeps whichever id was stored first."""
    if organization.stripe_customer_id:
        return organization.stripe_customer_id
    params: dict[str, Any] = {
        "name": organization.name,
        "email": email,
        "metadata": {"organization_id": str(organization.pk), "organization_slug": organization.slug},
    }
    key = "org-customer-" + hashlib.sha256(json.dumps([organization.pk, params], sort_keys=True).encode()).hexdigest()[:32]
    try:
        customer = stripe_client().v1.customers.create(params=params, options={"idempotency_key": key})  # type: ignore[arg-type]
    except stripe.StripeError as exc:
        raise _stripe_failed(exc, "creating a customer") from exc
    Organization.objects.filter(pk=organization.pk, stripe_customer_id="").update(stripe_customer_id=customer.id)
    organization.stripe_customer_id = Organization.objects.values_list("stripe_customer_id", flat=True).get(pk=organization.pk)
    return organization.stripe_customer_id


def _session_url(params: dict[str, Any], doing: str) -> str:
    try:
        session = stripe_client().v1.checkout.sessions.create(params=params)  # type: ignore[arg-type]
    except stripe.StripeError as exc:
        raise _stripe_failed(exc, doing) from exc
    if not session.url:
        raise PaymentFailed("Stripe did not return a payment page; nothing was charged. Please try again.")
    return session.url


def checkout_topup_create(*, organization: Organization, user: User, amount_cents: int, success_url: str, cancel_url: str) -> str:
    """A Checkout session (mode payment) for `amount_cents` of credit; returns the URL of Stripe's payment page."""
    low, high = settings.PORTAL_TOPUP_MIN_CENTS, settings.PORTAL_TOPUP_MAX_CENTS
    if not low <= amount_cents <= high:
        raise TopupOutOfBounds(
            f"A top-up is from {format_micros_cents(low * MICROS_PER_CENT)} to {format_micros_cents(high * MICROS_PER_CENT)}."
        )
    customer = stripe_customer_ensure(organization=organization, email=user.email)
    metadata = {"organization_id": str(organization.pk), "purpose": TOPUP_PURPOSE, "user_id": str(user.pk)}
    return _session_url(
        {
            "mode": "payment",
            "customer": customer,
            "client_reference_id": str(organization.pk),
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata, "description": f"Cortensor credit for {organization.slug}"},
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": CURRENCY,
                        "unit_amount": amount_cents,
                        "product_data": {"name": "Cortensor API credit"},
                    },
                }
            ],
            "success_url": success_url,
            "cancel_url": cancel_url,
        },
        "creating a top-up session",
    )


def checkout_upgrade_create(*, organization: Organization, user: User, plan: Plan, success_url: str, cancel_url: str) -> str:
    """A Checkout session (mode subscription) for the plan's Stripe price; returns the URL of Stripe's page."""
    if not plan.stripe_price_id:
        raise NotUpgradable(f"{plan.name} cannot be bought online.")
    if organization.plan_id == plan.pk:
        raise NotUpgradable(f"{organization.name} is already on {plan.name}.")
    current = organization.plan
    if current is not None and current.stripe_price_id:
        # A second Checkout would start a second subscription beside the one already billed.
        raise NotUpgradable(f"{organization.name} pays for {current.name} already: change plans under Manage cards and invoices.")
    customer = stripe_customer_ensure(organization=organization, email=user.email)
    metadata = {"organization_id": str(organization.pk), "purpose": UPGRADE_PURPOSE, "plan": plan.slug, "user_id": str(user.pk)}
    return _session_url(
        {
            "mode": "subscription",
            "customer": customer,
            "client_reference_id": str(organization.pk),
            "metadata": metadata,
            "subscription_data": {"metadata": metadata},
            "line_items": [{"price": plan.stripe_price_id, "quantity": 1}],
            "success_url": success_url,
            "cancel_url": cancel_url,
        },
        "creating an upgrade session",
    )


def billing_portal_create(*, organization: Organization, user: User, return_url: str) -> str:
    """A Stripe customer portal session (cards, invoices, the subscription); returns its URL."""
    customer = stripe_customer_ensure(organization=organization, email=user.email)
    try:
        session = stripe_client().v1.billing_portal.sessions.create(params={"customer": customer, "return_url": return_url})
    except stripe.StripeError as exc:
        raise _stripe_failed(exc, "opening the customer portal") from exc
    return session.url


# --- Webhooks ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookResult:
    event_id: str
    type: str
    outcome: str  # a StripeEvent.Outcome, or "duplicate" for an event already taken in
    detail: str


@dataclass(frozen=True, slots=True)
class _Effect:
    outcome: str
    detail: str
    organization: Organization | None = None
    object_id: str = ""


def _ignored(detail: str, organization: Organization | None = None, object_id: str = "") -> _Effect:
    return _Effect(StripeEvent.Outcome.IGNORED, detail, organization, object_id)


def stripe_webhook_receive(*, payload: bytes, signature: str) -> WebhookResult:
    """Verify one webhook delivery and apply it once. WebhookRefused for a forged, stale or malformed one."""
    secret = settings.PORTAL_STRIPE_WEBHOOK_SECRET
    if not secret:
        raise PaymentsOff("payments are off: PORTAL_STRIPE_WEBHOOK_SECRET is not set")
    try:
        event = stripe.Webhook.construct_event(payload, signature, secret, tolerance=WEBHOOK_TOLERANCE_S)
        body = event.to_dict()
    except stripe.SignatureVerificationError:
        raise WebhookRefused("The signature does not verify (or is older than the tolerance).") from None
    except (ValueError, TypeError, AttributeError):  # not JSON (UnicodeDecodeError too), or not an object
        raise WebhookRefused("The body is not a Stripe event.") from None
    event_id, event_type, created = body.get("id"), body.get("type"), body.get("created")
    obj = (body.get("data") or {}).get("object") if isinstance(body.get("data"), dict) else None
    if not (isinstance(event_id, str) and event_id and isinstance(event_type, str) and isinstance(obj, dict)):
        raise WebhookRefused("The body is not a Stripe event.")
    if not isinstance(created, int) or isinstance(created, bool) or created < 0:
        raise WebhookRefused("The event has no creation time.")
    created_at = datetime.fromtimestamp(created, tz=UTC)
    try:
        with transaction.atomic():
            # Recorded first: a second delivery of the same event, running at the same moment, waits on this row's
            # unique key and then fails on it, its transaction (and effect) rolled back.
            record = StripeEvent.objects.create(
                event_id=event_id[:255], type=event_type[:100], created=created_at, outcome=StripeEvent.Outcome.IGNORED
            )
            handler = _HANDLERS.get(event_type)
            effect = handler(obj, record) if handler else _ignored("not an event the portal acts on", object_id=_id(obj))
            record.outcome, record.detail = effect.outcome, effect.detail[:300]
            record.organization, record.object_id = effect.organization, effect.object_id[:255]
            record.save(update_fields=["outcome", "detail", "organization", "object_id"])
    except IntegrityError:
        if not StripeEvent.objects.filter(event_id=event_id[:255]).exists():
            raise
        return WebhookResult(event_id, event_type, "duplicate", "already received")
    log.info("stripe event %s %s: %s (%s)", event_type, event_id, effect.outcome, effect.detail)
    return WebhookResult(event_id, event_type, effect.outcome, effect.detail)


def _id(obj: dict[str, Any]) -> str:
    value = obj.get("id")
    return value if isinstance(value, str) else ""


def _metadata(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _locked_organization(organization_id: object) -> Organization | None:
    """The organization named by an event, its row locked until the transaction ends: events of one organization
    apply one at a time."""
    if not (isinstance(organization_id, str) and organization_id.isdigit()):
        return None
    return Organization.objects.select_for_update(of=("self",)).filter(pk=int(organization_id)).select_related("plan").first()


def _checkout_paid(session: dict[str, Any], record: StripeEvent) -> _Effect:
    """checkout.session.completed (or async_payment_succeeded) of a paid top-up: one credit per session."""
    session_id = _id(session)
    metadata = _metadata(session)
    if session.get("mode") != "payment" or metadata.get("purpose") != TOPUP_PURPOSE:
        return _ignored("not a top-up (a subscription's own events change the plan)", object_id=session_id)
    if session.get("payment_status") != "paid":
        return _ignored(f"not paid yet (payment_status {session.get('payment_status')})", object_id=session_id)
    organization_id = metadata.get("organization_id")
    if session.get("client_reference_id") != organization_id:
        log.error("stripe session %s: metadata and client_reference_id name different organizations", session_id)
        return _ignored("metadata and client_reference_id disagree", object_id=session_id)
    organization = _locked_organization(organization_id)
    if organization is None:
        log.error("stripe session %s was paid for organization %r, which does not exist", session_id, organization_id)
        return _ignored("the organization does not exist", object_id=session_id)
    customer = session.get("customer")
    if isinstance(customer, str) and customer and customer != organization.stripe_customer_id:
        log.error("stripe session %s: customer %s is not organization %s's", session_id, customer, organization.pk)
        return _ignored("the customer is not the organization's", object_id=session_id)
    amount, currency = session.get("amount_total"), session.get("currency")
    if currency != CURRENCY or not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        log.error("stripe session %s: amount %r %r is not a positive amount in %s", session_id, amount, currency, CURRENCY)
        return _ignored(f"amount {amount!r} {currency!r} is not a positive amount in {CURRENCY}", organization, session_id)
    applied = StripeEvent.objects.filter(object_id=session_id, outcome=StripeEvent.Outcome.APPLIED).exclude(pk=record.pk)
    if applied.exists():
        return _ignored("this session was credited already", organization, session_id)
    payer = User.objects.filter(pk=int(metadata["user_id"])).first() if str(metadata.get("user_id", "")).isdigit() else None
    entry = ledger_entry_add(
        organization=organization,
        kind=LedgerEntry.Kind.CREDIT,
        amount_micros=amount * MICROS_PER_CENT,  # cents to micro-units, exactly
        memo=f"Stripe top-up, Checkout session {session_id}",
        created_by=payer,
    )
    return _Effect(StripeEvent.Outcome.APPLIED, f"credited {entry.amount_micros} micro-units", organization, session_id)


def _subscription_changed(subscription: dict[str, Any], record: StripeEvent) -> _Effect:
    """customer.subscription.created/updated/deleted: the organization's plan follows the subscription's state."""
    subscription_id = _id(subscription)
    organization = _subscription_organization(subscription)
    if organization is None:
        log.error("stripe subscription %s names no organization of ours", subscription_id)
        return _ignored("no organization of ours", object_id=subscription_id)
    last = (
        StripeEvent.objects.filter(object_id=subscription_id, outcome=StripeEvent.Outcome.APPLIED)
        .exclude(pk=record.pk)
        .order_by("-created", "-id")
        .first()
    )
    if last is not None:
        # Stripe's times have one-second resolution: a `created` event is the subscription's first, so one that is
        # not newer than an applied event is late; a deleted subscription has no later state.
        stale = record.created < last.created or (
            record.type == "customer.subscription.created" and record.created <= last.created
        )
        if stale or last.type == "customer.subscription.deleted":
            return _ignored(f"older than {last.event_id}, already applied", organization, subscription_id)
    status = subscription.get("status")
    price_id = _price_id(subscription)
    current = organization.plan
    if record.type == "customer.subscription.deleted" or status in ENDED_STATES:
        if current is None or not current.stripe_price_id or current.stripe_price_id != price_id:
            return _Effect(
                StripeEvent.Outcome.APPLIED, f"ended ({status}); the plan was not this one", organization, subscription_id
            )
        fallback = plan_get_default()
        if fallback is None or fallback.pk == current.pk:
            return _Effect(StripeEvent.Outcome.APPLIED, f"ended ({status}); no default plan", organization, subscription_id)
        subscription_start(organization=organization, plan=fallback)
        return _Effect(StripeEvent.Outcome.APPLIED, f"ended ({status}): back to {fallback.slug}", organization, subscription_id)
    if status not in PAYING_STATES:
        return _Effect(StripeEvent.Outcome.APPLIED, f"no change while {status}", organization, subscription_id)
    plan = Plan.objects.filter(stripe_price_id=price_id).first() if price_id else None
    if plan is None:
        log.error("stripe subscription %s is for price %r, which no plan sells", subscription_id, price_id)
        return _ignored(f"no plan sells price {price_id!r}", organization, subscription_id)
    if current is None or current.pk != plan.pk:
        subscription_start(organization=organization, plan=plan)
        return _Effect(StripeEvent.Outcome.APPLIED, f"plan {plan.slug} ({status})", organization, subscription_id)
    return _Effect(StripeEvent.Outcome.APPLIED, f"already on {plan.slug} ({status})", organization, subscription_id)


def _subscription_organization(subscription: dict[str, Any]) -> Organization | None:
    """By the metadata our Checkout session gave the subscription, else by its customer; locked. The metadata's
    organization must own the customer (ours are created before any session): otherwise neither."""
    by_metadata = _locked_organization(_metadata(subscription).get("organization_id"))
    customer = subscription.get("customer")
    if by_metadata is not None:
        if isinstance(customer, str) and customer and customer != by_metadata.stripe_customer_id:
            return None
        return by_metadata
    if not (isinstance(customer, str) and customer):
        return None
    found = Organization.objects.filter(stripe_customer_id=customer).values_list("pk", flat=True).first()
    return _locked_organization(str(found)) if found is not None else None


def _price_id(subscription: dict[str, Any]) -> str:
    items = subscription.get("items")
    data = items.get("data") if isinstance(items, dict) else None
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return ""
    price = data[0].get("price")
    if isinstance(price, dict):
        return _id(price)
    return price if isinstance(price, str) else ""


_HANDLERS = {
    "checkout.session.completed": _checkout_paid,
    "checkout.session.async_payment_succeeded": _checkout_paid,
    "customer.subscription.created": _subscription_changed,
    "customer.subscription.updated": _subscription_changed,
    "customer.subscription.deleted": _subscription_changed,
}
