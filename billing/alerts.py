"""Delivering spend alerts: an e-mail to the organization's owners and admins and, when it has a webhook URL, a JSON
event POSTed there, signed with its secret. Deciding what to send is usage/alerts.py's (it reads usage rows).

The signature (docs: README "Spend alerts"): `X-Cortensor-Signature: t=<unix seconds>,v1=<hex>`, where v1 is
HMAC-SHA256 of `<t>.<raw body>` keyed with the organization's `alert_webhook_secret`, as Stripe signs its webhooks.
The secret is never logged, nor is the URL (it may carry a token in its path): log lines name the alert's id.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.mail import send_mail

from accounts.models import Membership, Organization
from billing.models import SpendAlert
from billing.money import format_micros_exact
from billing.services import webhook_url_problem

log = logging.getLogger("billing.alerts")

SIGNATURE_HEADER = "X-Cortensor-Signature"
EVENT_ID_HEADER = "X-Cortensor-Event-Id"
SIGNATURE_TOLERANCE_S = 300  # what verify_signature accepts by default, and what the docs advise receivers


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The header value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    secret: str, body: bytes, header: str, *, now: float | None = None, tolerance_s: int = SIGNATURE_TOLERANCE_S
) -> bool:
    """What a receiver does (the docs' snippet, in Python): the timestamp is recent and one v1 matches."""
    try:
        fields = [part.split("=", 1) for part in header.split(",")]
        timestamp = int(next(value for name, value in fields if name == "t"))
    except (ValueError, StopIteration):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return any(name == "v1" and hmac.compare_digest(value, expected) for name, value in fields)


@dataclass(frozen=True, slots=True)
class AlertSubject:
    """What an alert is about, for its words: the organization, and the key when it is a key's own cap."""

    organization: Organization
    key_name: str = ""
    key_prefix: str = ""


def event_of(alert: SpendAlert, subject: AlertSubject) -> dict[str, object]:
    org = subject.organization
    data: dict[str, object] = {
        "period_start": alert.period_start.isoformat().replace("+00:00", "Z"),
        "threshold_percent": alert.threshold,
    }
    if alert.kind == SpendAlert.Kind.LOW_BALANCE:
        event_type = "balance.low"
        data.update(balance_micros=alert.amount_micros, last_top_up_micros=alert.limit_micros)
    else:
        event_type = "spend_cap.threshold_reached"
        data.update(
            scope="key" if alert.key_id else "organization",
            period=alert.kind,
            spent_micros=alert.amount_micros,
            cap_micros=alert.limit_micros,
        )
        if alert.key_id:
            data["key"] = {"id": alert.key_id, "name": subject.key_name, "prefix": subject.key_prefix}
    return {
        "id": f"alert_{alert.pk}",
        "type": event_type,
        "created": int(alert.created_at.timestamp()),
        "organization": {"id": org.pk, "slug": org.slug, "name": org.name},
        "data": data,
    }


def headline(alert: SpendAlert, subject: AlertSubject) -> str:
    org = subject.organization.name
    if alert.kind == SpendAlert.Kind.LOW_BALANCE:
        return f"{org}'s prepaid balance is low: {format_micros_exact(alert.amount_micros)} left"
    period = "daily" if alert.kind == SpendAlert.Kind.DAILY else "monthly"
    whose = f"key “{subject.key_name}” ({subject.key_prefix}…)" if alert.key_id else org
    reached = "has reached" if alert.threshold >= 100 else f"has used {alert.threshold}% of"
    return f"{whose} {reached} its {period} spend cap"


def email_body(alert: SpendAlert, subject: AlertSubject) -> str:
    billing_url = f"{settings.PORTAL_PUBLIC_BASE_URL}/portal/billing"
    if alert.kind == SpendAlert.Kind.LOW_BALANCE:
        facts = (
            f"Balance: {format_micros_exact(alert.amount_micros)}, below {alert.threshold}% of the last top-up "
            f"({format_micros_exact(alert.limit_micros)}). Requests are refused once it cannot pay for them."
        )
    else:
        day = alert.period_start.strftime("%Y-%m-%d" if alert.kind == SpendAlert.Kind.DAILY else "%B %Y")
        facts = (
            f"Spent {format_micros_exact(alert.amount_micros)} of the {format_micros_exact(alert.limit_micros)} cap "
            f"({day}, UTC). At the cap, requests are refused until the period ends or the cap is raised."
        )
    return f"{headline(alert, subject)}.\n\n{facts}\n\nCaps, balance and alerts: {billing_url}\n"


def recipients(organization: Organization) -> list[str]:
    return sorted(
        Membership.objects.filter(
            organization=organization, role__in=[Membership.Role.OWNER, Membership.Role.ADMIN], user__is_active=True
        ).values_list("user__email", flat=True)
    )


def send_email(alert: SpendAlert, subject: AlertSubject) -> str:
    """The e-mail to owners and admins; its outcome as a short status (never raises)."""
    to = recipients(subject.organization)
    if not to:
        return "no owner or admin"
    try:
        send_mail(f"[Cortensor] {headline(alert, subject)}", email_body(alert, subject), None, to)
    except Exception as exc:
        log.error("spend alert %s: e-mail not sent (%s)", alert.pk, exc.__class__.__name__)
        return f"failed: {exc.__class__.__name__}"
    return f"sent to {len(to)}"


def _resolves_to_private(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False  # the POST fails on its own, and says so
    return any(not ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]).is_global for info in infos)


def send_webhook(alert: SpendAlert, subject: AlertSubject, *, client: httpx.Client | None = None) -> str:
    """POST the signed event to the organization's URL, one attempt within PORTAL_ALERT_WEBHOOK_TIMEOUT_S; its outcome
    as a short status (never raises). No URL: empty status."""
    org = subject.organization
    url, secret = org.alert_webhook_url, org.alert_webhook_secret
    if not url:
        return ""
    if not secret or webhook_url_problem(url) is not None:
        log.warning("spend alert %s: webhook not sent (the URL is not allowed or has no secret)", alert.pk)
        return "refused: URL not allowed"
    host = urlsplit(url).hostname or ""
    if not settings.PORTAL_ALERT_WEBHOOK_ALLOW_INSECURE and _resolves_to_private(host):
        log.warning("spend alert %s: webhook not sent (its host resolves to a private address)", alert.pk)
        return "refused: private address"
    body = json.dumps(event_of(alert, subject), separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Cortensor-Alerts/1",
        EVENT_ID_HEADER: f"alert_{alert.pk}",
        SIGNATURE_HEADER: sign(secret, body, int(time.time())),
    }
    owned = client is None
    http = client or httpx.Client(timeout=settings.PORTAL_ALERT_WEBHOOK_TIMEOUT_S, follow_redirects=False)
    try:
        response = http.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        log.warning("spend alert %s: webhook failed (%s)", alert.pk, exc.__class__.__name__)
        return f"failed: {exc.__class__.__name__}"
    finally:
        if owned:
            http.close()
    if not 200 <= response.status_code < 300:
        log.warning("spend alert %s: webhook answered %d", alert.pk, response.status_code)
        return f"failed: HTTP {response.status_code}"
    return f"delivered: HTTP {response.status_code}"


def alert_deliver(alert: SpendAlert, subject: AlertSubject) -> None:
    """E-mail and webhook; each outcome saved on the alert."""
    alert.email_status = send_email(alert, subject)[:200]
    alert.webhook_status = send_webhook(alert, subject)[:200]
    alert.save(update_fields=["email_status", "webhook_status"])
