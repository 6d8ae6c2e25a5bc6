"""Router pools: where a public model alias is actually served."""

from __future__ import annotations

from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from portal_project.redact import mask_url_credentials


class RouterPool(models.Model):
    name = models.CharField(max_length=100, unique=True)
    enabled = models.BooleanField(default=True)
    draining = models.BooleanField(default=False, help_text="finish in-flight requests, take no new ones")
    env_managed = models.BooleanField(default=False, help_text="written by sync_router_pools from the environment")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name


class RouterEndpoint(models.Model):
    pool = models.ForeignKey(RouterPool, on_delete=models.CASCADE, related_name="endpoints")
    base_url = models.URLField(max_length=500)
    auth_key = models.CharField(max_length=500, blank=True, help_text="used for sessions without a key of their own")
    weight = models.PositiveIntegerField(default=1)
    enabled = models.BooleanField(default=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["pool", "base_url"], name="uniq_pool_endpoint")]

    def __str__(self) -> str:  # the admin's lists, logs and tracebacks: never the credentials a URL may carry
        return mask_url_credentials(self.base_url)


class RouterSession(models.Model):
    pool = models.ForeignKey(RouterPool, on_delete=models.CASCADE, related_name="sessions")
    session_id = models.PositiveBigIntegerField()
    auth_key = models.CharField(max_length=500, blank=True, help_text="wins over the endpoint's key")
    enabled = models.BooleanField(default=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["pool", "session_id"], name="uniq_pool_session")]

    def __str__(self) -> str:
        return f"{self.pool} session {self.session_id}"


class ModelAlias(models.Model):
    class PromptFormat(models.TextChoices):
        CHATML = "chatml", "ChatML"
        PLAIN = "plain", "Plain"

    alias = models.CharField(max_length=100, unique=True)
    display_name = models.CharField(max_length=200, blank=True)
    pool = models.ForeignKey(RouterPool, on_delete=models.PROTECT, related_name="aliases")
    prompt_format = models.CharField(max_length=16, choices=PromptFormat.choices, default=PromptFormat.CHATML)
    # One number for both: the most a request may ask for, and what a request that names no max_tokens gets. A
    # smaller hidden default surprised clients that rely on the provider's own (answers cut short without a reason).
    max_tokens_cap = models.PositiveIntegerField(
        "max output tokens",
        default=4096,
        validators=[MinValueValidator(1)],
        help_text="the most tokens an answer may have; also what a request without max_tokens gets. "
        "Shown in /v1/models (max_output_tokens; Anthropic: max_tokens)",
    )
    context_length = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="the context window of the model behind the alias, in tokens, as its routers serve it; "
        "shown in /v1/models (context_length; Anthropic: max_input_tokens). Informational: the gateway "
        "does not check prompts against it. Empty: not stated",
    )
    upstream_timeout_s = models.PositiveIntegerField(default=120)
    prompt_type = models.IntegerField(null=True, blank=True)
    prompt_template = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    env_managed = models.BooleanField(default=False)
    # Set when sync_router_pools disabled the alias because it left the environment, so its return
    # re-enables it; an alias staff disabled stays disabled across restarts.
    disabled_by_env = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "model aliases"
        ordering = ["alias"]

    def __str__(self) -> str:
        return self.alias
