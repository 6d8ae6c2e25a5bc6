"""What an organization is entitled to: its plan and the history of its subscriptions."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class Plan(models.Model):
    slug = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    requests_per_minute = models.PositiveIntegerField(default=60)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text="empty: no token limit")
    concurrent_requests = models.PositiveIntegerField(null=True, blank=True, help_text="empty: no limit")
    # The free-plan allowance: a request cap per short reset window, plus a weekly allowance.
    window_requests = models.PositiveIntegerField(null=True, blank=True, help_text="requests per window; empty: none")
    window_seconds = models.PositiveIntegerField(default=3600)
    weekly_requests = models.PositiveIntegerField(null=True, blank=True, help_text="requests per week; empty: none")
    allowed_aliases = models.ManyToManyField(
        "routerpools.ModelAlias", blank=True, related_name="plans", help_text="empty: every enabled alias"
    )
    is_default = models.BooleanField(default=False, help_text="given to new organizations")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.slug


class PlanSubscription(models.Model):
    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="subscriptions")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.organization} on {self.plan}"
