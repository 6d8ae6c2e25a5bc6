"""Cross-process cache invalidation: any change to what the gateway caches bumps one counter row."""

from __future__ import annotations

import time
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.signals import m2m_changed, post_delete, post_save

from gateway.models import CacheEpoch


def bump_epoch() -> None:
    """Tell every gateway process (they poll the row) to drop cached keys, organizations and pools."""
    if CacheEpoch.objects.filter(pk=1).update(value=F("value") + 1):
        return
    try:
        with transaction.atomic():
            # Start from the clock, not 1: a re-created row (an emptied database) must never
            # repeat a value some process already holds.
            CacheEpoch.objects.create(pk=1, value=time.time_ns() // 1000)
    except IntegrityError:  # another process created it first
        CacheEpoch.objects.filter(pk=1).update(value=F("value") + 1)


def read_epoch() -> int:
    row = CacheEpoch.objects.filter(pk=1).values_list("value", flat=True).first()
    return int(row or 0)


def _on_change(sender: Any, **kwargs: Any) -> None:
    if kwargs.get("raw"):  # loaddata
        return
    bump_epoch()


def connect_signals() -> None:
    from accounts.models import Membership, Organization
    from apikeys.models import ApiKey
    from billing.models import ModelAccessOverride, Plan, PlanSubscription
    from routerpools.models import ModelAlias, RouterEndpoint, RouterPool, RouterSession

    watched = (Organization, Membership, ApiKey, Plan, PlanSubscription, ModelAccessOverride, RouterPool, RouterEndpoint, RouterSession, ModelAlias)
    for model in watched:
        post_save.connect(_on_change, sender=model, dispatch_uid=f"epoch-save-{model.__name__}")
        post_delete.connect(_on_change, sender=model, dispatch_uid=f"epoch-delete-{model.__name__}")
    m2m_changed.connect(_on_change, sender=Plan.allowed_aliases.through, dispatch_uid="epoch-plan-aliases")
