"""The one row every gateway process polls to learn that keys, organizations or pools changed."""

from __future__ import annotations

from django.db import models


class CacheEpoch(models.Model):
    # A single row (id=1); bumped on every change that a gateway cache holds.
    value = models.BigIntegerField(default=0)
