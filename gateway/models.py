"""The change log every gateway process follows to keep its caches of keys, organizations, plans and pools fresh."""

from __future__ import annotations

from django.db import models


class CacheChange(models.Model):
    """One change to something a gateway caches, inserted in the writer's own transaction (gateway/invalidation.py).

    Append-only: writers never update a shared row, so a burst of sign-ups does not queue on one lock. Rows are
    pruned after PORTAL_CACHE_RETENTION_S, the newest always kept (it is where every caught-up process stands).
    """

    class Scope(models.TextChoices):
        KEY = "key"  # ident: the key's public id
        UNKEY = "unkey"  # ident: Unkey's keyId of an Unkey-issued key
        ORG = "org"  # ident: the organization id
        ROUTES = "routes"  # the routing table (pools, endpoints, sessions, aliases)
        PLANS = "plans"  # plans, their alias lists and the per-organization model overrides

    id = models.BigAutoField(primary_key=True)
    scope = models.CharField(max_length=8, choices=Scope.choices)
    ident = models.CharField(max_length=128, blank=True, default="")
    created = models.DateTimeField(auto_now_add=True, db_index=True)
