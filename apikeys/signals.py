"""Keeping Unkey's copy of a key's plan in step: a plan change reaches the organization's live Unkey keys.

Unkey applies the `requests` ratelimit written on the key; without this, a customer who upgraded would be
refused by Unkey at the old plan's rate. Runs after the change commits, in the process that made it (the
admin, the portal, manage.py); a failure is logged by unkey_sync_plan and does not undo the change.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_save, pre_save


def _watching() -> bool:
    # Only while Unkey issues keys (its client is configured then); local mode pays no extra query.
    return settings.PORTAL_KEY_ISSUER == "unkey"


def _remember_plan(sender: Any, instance: Any, **kwargs: Any) -> None:
    if kwargs.get("raw") or instance.pk is None or not _watching():
        return
    instance._plan_before_save = sender.objects.filter(pk=instance.pk).values_list("plan_id", flat=True).first()


def _organization_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    if kwargs.get("raw") or created or not hasattr(instance, "_plan_before_save"):
        return
    if instance.__dict__.pop("_plan_before_save") == instance.plan_id:
        return
    _sync_after_commit([instance.pk])


def _remember_rate(sender: Any, instance: Any, **kwargs: Any) -> None:
    if kwargs.get("raw") or instance.pk is None or not _watching():
        return
    instance._rpm_before_save = sender.objects.filter(pk=instance.pk).values_list("requests_per_minute", flat=True).first()


def _plan_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    if kwargs.get("raw") or created or not hasattr(instance, "_rpm_before_save"):
        return
    if instance.__dict__.pop("_rpm_before_save") == instance.requests_per_minute:
        return
    from accounts.models import Organization

    _sync_after_commit(list(Organization.objects.filter(plan=instance).values_list("pk", flat=True)))


def _sync_after_commit(organization_ids: list[int]) -> None:
    from apikeys.models import ApiKey

    if not organization_ids or not ApiKey.objects.filter(
        organization_id__in=organization_ids, issuer=ApiKey.Issuer.UNKEY, revoked_at__isnull=True
    ).exists():
        return

    def sync() -> None:
        from accounts.models import Organization
        from apikeys.issuers import unkey_sync_plan

        for organization in Organization.objects.filter(pk__in=organization_ids).select_related("plan"):
            unkey_sync_plan(organization=organization)

    transaction.on_commit(sync)


def connect_signals() -> None:
    from accounts.models import Organization
    from billing.models import Plan

    pre_save.connect(_remember_plan, sender=Organization, dispatch_uid="unkey-plan-before")
    post_save.connect(_organization_saved, sender=Organization, dispatch_uid="unkey-plan-sync")
    pre_save.connect(_remember_rate, sender=Plan, dispatch_uid="unkey-rate-before")
    post_save.connect(_plan_saved, sender=Plan, dispatch_uid="unkey-rate-sync")
