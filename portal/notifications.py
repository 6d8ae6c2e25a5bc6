"""Notices by mail, plain text: a new API key was created, a member joined, a request allowance is used up.
(Password and address changes are allauth's own notices, ACCOUNT_EMAIL_NOTIFICATIONS.)

The first two hang off the audit rows (ApiKeyEvent, MembershipEvent), so every door that makes one (the portal, its
API, manage.py) tells the owners, and are sent once the row's transaction commits. The used-up allowance notice goes
to the owners and admins, from portal/limit_mail.py's thread. A mail server that fails is logged, never an error for
the action it reports. They carry names, masked keys and addresses: never a secret."""

from __future__ import annotations

import logging
import smtplib
from datetime import UTC
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string

from accounts.models import Membership, MembershipEvent, Organization
from apikeys.models import ApiKey, ApiKeyEvent

if TYPE_CHECKING:
    from portal.allowances import Allowance

log = logging.getLogger("portal.notifications")
SUBJECT_PREFIX = "[Cortensor] "


def owner_addresses(organization: Organization, *, besides: tuple[str, ...] = ()) -> list[str]:
    owners = Membership.objects.filter(organization=organization, role=Membership.Role.OWNER).select_related("user")
    found = sorted({m.user.email.lower() for m in owners if m.user.email})
    return [*found, *sorted({b.lower() for b in besides if b} - set(found))]


def owner_and_admin_addresses(organization: Organization) -> list[str]:
    """The active owners' and admins' addresses, as spend alerts reach them (billing.alerts.recipients)."""
    managers = Membership.objects.filter(
        organization=organization, role__in=[Membership.Role.OWNER, Membership.Role.ADMIN], user__is_active=True
    ).values_list("user__email", flat=True)
    return sorted({address.lower() for address in managers if address})


def _send(subject: str, template: str, context: dict[str, Any], to: list[str]) -> int:
    """One mail per address; how many the mail server took (a failure is logged, never raised)."""
    if not to:
        return 0
    body = render_to_string(
        template, {**context, "base_url": settings.PORTAL_PUBLIC_BASE_URL, "support_email": settings.PORTAL_SUPPORT_EMAIL}
    )
    sent = 0
    for address in to:  # one mail each: owners do not learn each other's addresses from the header
        try:
            send_mail(SUBJECT_PREFIX + subject, body, None, [address])
        except (OSError, smtplib.SMTPException):
            log.warning("notice %r to %s not sent: the mail server failed", subject, address, exc_info=True)
        else:
            sent += 1
    return sent


def notify_key_created(event: ApiKeyEvent) -> None:
    if event.action != ApiKeyEvent.Action.CREATE or event.api_key.kind == ApiKey.Kind.PLAYGROUND:
        return  # the playground's internal key is the portal's, not a customer's
    key = event.api_key
    organization = key.organization
    creator = event.actor
    _send(
        f"A new API key for {organization.name}",
        "portal/email/key_created.txt",
        {"key": key, "organization": organization, "creator": creator, "event": event},
        owner_addresses(organization, besides=(creator.email,) if creator is not None else ()),
    )


def notify_member_joined(event: MembershipEvent) -> None:
    if event.action != MembershipEvent.Action.JOINED:
        return
    organization = event.organization
    owners = [a for a in owner_addresses(organization) if a != event.email.lower()]
    _send(
        f"{event.email} joined {organization.name}",
        "portal/email/member_joined.txt",
        {"event": event, "organization": organization},
        owners,
    )


def notify_allowance_used_up(organization: Organization, allowance: Allowance) -> str:
    """The used-up notice of one allowance to the owners and admins; its outcome as a short status (never raises on
    a mail server's failure)."""
    to = owner_and_admin_addresses(organization)
    if not to:
        return "no owner or admin"
    sent = _send(
        f"{organization.name}'s {allowance.name} is used up",
        "portal/email/allowance_used_up.txt",
        {
            "organization": organization,
            "allowance": allowance,
            "resets_at": allowance.resets_at.astimezone(UTC).strftime("%a %Y-%m-%d %H:%M"),
        },
        to,
    )
    return f"sent to {sent}" if sent == len(to) else f"sent to {sent} of {len(to)}"


def _on_key_event(sender: Any, instance: ApiKeyEvent, created: bool, **kwargs: Any) -> None:
    if created and instance.action == ApiKeyEvent.Action.CREATE:
        transaction.on_commit(lambda: notify_key_created(instance))


def _on_membership_event(sender: Any, instance: MembershipEvent, created: bool, **kwargs: Any) -> None:
    if created and instance.action == MembershipEvent.Action.JOINED:
        transaction.on_commit(lambda: notify_member_joined(instance))


def connect_signals() -> None:
    from django.db.models.signals import post_save

    post_save.connect(_on_key_event, sender=ApiKeyEvent, dispatch_uid="portal.notifications.key_created")
    post_save.connect(_on_membership_event, sender=MembershipEvent, dispatch_uid="portal.notifications.member_joined")
