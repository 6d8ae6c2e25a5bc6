"""Keeping Unkey's copy of a key's plan in step: a plan change reaches the organization's live Unkey keys.

Unkey applies the `requests` ratelimit written on the key; without this, a customer who upgraded would be
refused by Unkey at the old plan's rate. Runs after the change commits, in the process that made it (the
admin, the portal, manage.py); a failure is logged by unkey_sync_plan and does not undo the change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_save, pre_save


def _watching() -> bool:
    # Only while Unkey issues keys (its client is configured then); local mode pays no extra query.
    return settings.PORTAL_KEY_ISSUER == "unkey"


def _watch_field(model: Any, field: str, organizations: Callable[[Any], Any]) -> None:
    """When a saved `model` row's `field` changed, sync the Unkey keys of `organizations(row)` (a queryset)."""
    attname = model._meta.get_field(field).attname
    marker = f"_unkey_{attname}_before_save"

    def before(sender: Any, instance: Any, **kwargs: Any) -> None:
        if kwargs.get("raw") or instance.pk is None or not _watching():
            return
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and field not in update_fields:
            return
        setattr(instance, marker, sender.objects.filter(pk=instance.pk).values_list(attname, flat=True).first())

    def after(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
        if kwargs.get("raw") or created or marker not in instance.__dict__:
            return
        if instance.__dict__.pop(marker) != getattr(instance, attname):
            _sync_after_commit(organizations(instance))

    # weak=False: the receivers are closures, held by nothing else.
    pre_save.connect(before, sender=model, weak=False, dispatch_uid=f"unkey-sync-before-{model.__name__}-{attname}")
    post_save.connect(after, sender=model, weak=False, dispatch_uid=f"unkey-sync-after-{model.__name__}-{attname}")


def _sync_after_commit(organizations: Any) -> None:
    """After commit, bring the live Unkey keys of these organizations (a queryset) to their current plan."""

    def sync() -> None:
        from apikeys.issuers import unkey_sync_plan

        for organization in organizations.select_related("plan"):
            unkey_sync_plan(organization=organization)

    transaction.on_commit(sync)


def connect_signals() -> None:
    from accounts.models import Organization
    from billing.models import Plan

    _watch_field(Organization, "plan", lambda organization: Organization.objects.filter(pk=organization.pk))
    _watch_field(Plan, "requests_per_minute", lambda plan: Organization.objects.filter(plan=plan))
