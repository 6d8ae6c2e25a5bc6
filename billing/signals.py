"""Billing's reactions to other apps' writes: a model alias is priced the moment it exists."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save


def _alias_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    from billing.services import price_ensure_default

    if kwargs.get("raw"):  # loaddata: fixtures bring their own prices
        return
    # On every save, not only creation: a renamed alias is a new name to price (the price is kept by name).
    price_ensure_default(alias=instance.alias)


def connect_signals() -> None:
    from routerpools.models import ModelAlias

    post_save.connect(_alias_saved, sender=ModelAlias, dispatch_uid="billing-price-new-alias")
