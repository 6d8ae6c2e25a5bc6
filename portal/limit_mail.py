"""A used-up request allowance by mail: once per allowance and window, to the organization's owners and admins.

The banners (templates/portal/_limit_banners.html) tell whoever looks; this tells whoever does not. Off the request
path: after a usage batch holding the limiter's refusals commits, usage.signals.limit_refusals_recorded names their
organizations, and this module's worker (usage.alerts' SpendAlertWorker running `limit_mails_check`: coalesced, at
most one round per PORTAL_SPEND_ALERT_INTERVAL_S, its own database connection) reads their allowances as the pages
do (portal.allowances) and mails each one that is used up.

Once per window, whoever checks: each mail claims a billing.SpendAlert row first (kind "window" or "weekly",
threshold 100, period_start the window's start, key_id 0; amount and limit in requests), whose unique constraint
lets one process in; the next window's start is a new row, so the next window that runs dry mails again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Organization
from billing.models import SpendAlert
from gateway.limits import WEEKLY, WINDOW
from portal.allowances import Allowance, allowances_for
from portal.notifications import notify_allowance_used_up
from usage.alerts import SpendAlertWorker
from usage.signals import limit_refusals_recorded

log = logging.getLogger("portal.limit_mail")

KINDS = {WINDOW: SpendAlert.Kind.WINDOW, WEEKLY: SpendAlert.Kind.WEEKLY}


def _claim(organization: Organization, allowance: Allowance) -> SpendAlert | None:
    """The notice's row, inserted by this process; None when another one (or an earlier check) has it."""
    try:
        with transaction.atomic():
            return SpendAlert.objects.create(
                organization=organization,
                key_id=0,
                kind=KINDS[allowance.kind],
                threshold=100,
                period_start=allowance.starts_at,
                amount_micros=allowance.used,
                limit_micros=allowance.limit,
            )
    except IntegrityError:
        return None


def limit_mails_check(*, organization_ids: Iterable[int], now: datetime | None = None) -> list[SpendAlert]:
    """Mail the owners and admins of each of the organizations' allowances used up at `now` and not yet announced in
    its window; returns the rows this call claimed (and sent)."""
    ids = {i for i in organization_ids if i}
    if not ids:
        return []
    now = now or timezone.now()
    sent: list[SpendAlert] = []
    for organization in Organization.objects.filter(pk__in=ids).select_related("plan").order_by("pk"):
        for allowance in allowances_for(organization.pk, organization.plan, now=now):
            if not allowance.is_reached or allowance.kind not in KINDS:
                continue
            alert = _claim(organization, allowance)
            if alert is None:
                continue
            try:
                alert.email_status = notify_allowance_used_up(organization, allowance)[:200]
            except Exception as exc:  # a template or backend that fails otherwise: recorded, the round goes on
                log.error("allowance notice %s: e-mail not sent (%s)", alert.pk, exc.__class__.__name__)
                alert.email_status = f"failed: {exc.__class__.__name__}"
            alert.save(update_fields=["email_status"])
            sent.append(alert)
    return sent


limit_mail_worker = SpendAlertWorker(lambda **kwargs: limit_mails_check(**kwargs), name="limit mail")


def _on_limit_refusals(sender: Any, organization_ids: Iterable[int], **kwargs: Any) -> None:
    limit_mail_worker.notify(organization_ids)


def connect_signals() -> None:
    limit_refusals_recorded.connect(_on_limit_refusals, dispatch_uid="portal.limit_mail.refusals")
