"""One row per gateway request that reached the model pipeline, and one per request seen at all."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class UsageEvent(models.Model):
    class Status(models.TextChoices):
        OK = "ok", "OK"
        ERROR = "error", "Error"
        CANCELLED = "cancelled", "Cancelled"

    request_id = models.CharField(max_length=64, unique=True)
    organization = models.ForeignKey("accounts.Organization", null=True, on_delete=models.SET_NULL, related_name="+")
    api_key = models.ForeignKey("apikeys.ApiKey", null=True, on_delete=models.SET_NULL, related_name="+")
    alias = models.CharField(max_length=100)
    pool = models.CharField(max_length=100, blank=True)
    endpoint_url = models.CharField(max_length=500, blank=True)
    session_id = models.BigIntegerField(null=True, blank=True)
    route = models.CharField(max_length=64)
    streamed = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    estimated = models.BooleanField(default=False)
    cost_micros = models.BigIntegerField(default=0, db_default=0, help_text="what this request was billed, micro-units")
    status = models.CharField(max_length=16, choices=Status.choices)
    http_status = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64, blank=True)
    upstream_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    ttfb_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    # The customer's own id for their end user (OpenAI `user` or `safety_identifier`, Anthropic `metadata.user_id`),
    # for their attribution; blank when none was sent. The database default lets a process that predates the column
    # keep writing during a rolling deploy.
    end_user = models.CharField(max_length=256, blank=True, default="", db_default="")

    class Meta:
        indexes = [
            models.Index(fields=["organization", "created_at"], name="usage_org_created"),
            models.Index(fields=["api_key", "created_at"], name="usage_key_created"),
            models.Index(fields=["created_at"], name="usage_created"),
            # The usage page's filters (usage.selectors.UsageFilters), each within an organization's range: by model;
            # failed and cancelled requests (a few of all, so a small partial index); a request id's beginning (LIKE
            # 'req_3f%' needs the pattern operators under a database collation other than C).
            models.Index(fields=["organization", "alias", "created_at"], name="usage_org_alias_created"),
            models.Index(fields=["organization", "created_at"], condition=~models.Q(status="ok"), name="usage_org_notok_created"),
            models.Index(fields=["request_id"], opclasses=["varchar_pattern_ops"], name="usage_request_id_prefix"),
        ]


class RequestLog(models.Model):
    request_id = models.CharField(max_length=64, unique=True)
    organization = models.ForeignKey("accounts.Organization", null=True, on_delete=models.SET_NULL, related_name="+")
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=300)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    status = models.PositiveSmallIntegerField()
    duration_ms = models.PositiveIntegerField(default=0)
    client_request_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["created_at"], name="reqlog_created")]
