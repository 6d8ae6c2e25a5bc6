"""API key metadata: a public prefix and a keyed hash; the raw key is never stored."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class ApiKey(models.Model):
    class Issuer(models.TextChoices):
        LOCAL = "local", "Local"
        UNKEY = "unkey", "Unkey"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    public_id = models.CharField(max_length=32, unique=True, help_text="the lookup part of the key")
    prefix = models.CharField(max_length=48, help_text="shown to users, e.g. ctr_ab12cd34ef56")
    key_hash = models.CharField(max_length=64, help_text="HMAC-SHA256 of the whole key with the pepper")
    last_four = models.CharField(max_length=4)

    class Kind(models.TextChoices):
        STANDARD = "standard", "API key"
        ADMIN = "admin", "Admin key"  # the management API only; never accepted by /v1
        PLAYGROUND = "playground", "Playground (internal)"  # the portal's own; not listed, not revocable by customers

    issuer = models.CharField(max_length=8, choices=Issuer.choices, default=Issuer.LOCAL)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.STANDARD, db_default=Kind.STANDARD)
    # Per-key controls, each at most the organization's own; empty: the organization's.
    allowed_aliases = models.JSONField(default=list, blank=True, help_text="alias names this key may use; empty: all")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text="empty: the plan's")
    spend_cap_daily_micros = models.PositiveBigIntegerField(null=True, blank=True, help_text="micro-units per UTC day")
    spend_cap_monthly_micros = models.PositiveBigIntegerField(null=True, blank=True, help_text="micro-units per month")
    rotated_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", help_text="the key this one replaced"
    )
    external_id = models.CharField(max_length=100, blank=True, db_index=True, help_text="the issuer's key id (Unkey)")
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}…{self.last_four}"

    @property
    def masked(self) -> str:
        return f"{self.prefix}_…{self.last_four}"

    @property
    def status(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= timezone.now():
            return "expired"
        return "active"


class ApiKeyEvent(models.Model):
    class Action(models.TextChoices):
        CREATE = "create", "Created"
        REVOKE = "revoke", "Revoked"
        UPDATE = "update", "Settings changed"
        ROTATE = "rotate", "Rotated"  # on the old key; its replacement gets its own "create"

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="events")
    action = models.CharField(max_length=16, choices=Action.choices)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_label = models.CharField(max_length=200, blank=True, help_text="e.g. 'manage.py issue_key' when no user")
    detail = models.CharField(max_length=500, blank=True, help_text="what changed, e.g. the rotation's replacement and grace")
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
