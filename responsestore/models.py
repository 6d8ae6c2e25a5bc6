"""One row per stored `/v1/responses` answer: the conversation that led to it, its answer, and the response object."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class StoredResponse(models.Model):
    """Customer content, kept for PORTAL_RESPONSES_RETENTION_DAYS and readable only by its organization.

    `conversation` is the whole conversation as the router saw it, the answer included, as compact JSON
    (`[[role, text], ...]`): a continuation reads this one row, never a chain. `body` is the response object
    exactly as it was sent, so `GET /v1/responses/{id}` returns it verbatim. Both are ASCII JSON text (not
    jsonb): written without re-encoding by the batch writer, and no NUL or lone surrogate can reach the column.
    """

    response_id = models.CharField(max_length=64, primary_key=True)
    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey("apikeys.ApiKey", null=True, on_delete=models.SET_NULL, related_name="+")
    request_id = models.CharField(max_length=64)
    model = models.CharField(max_length=100)
    status = models.CharField(max_length=16)
    previous_response_id = models.CharField(max_length=64, blank=True)
    depth = models.PositiveIntegerField(default=1)  # responses in the conversation, this one included
    conversation = models.TextField()
    body = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["created_at"], name="storedresp_created")]
