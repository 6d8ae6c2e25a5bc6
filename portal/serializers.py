"""The management API's shapes of a key: listed (masked), created (with the raw key, once), and the create request."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone
from rest_framework import serializers

from apikeys.models import ApiKey
from apikeys.services import expiry_in_days


class ApiKeySerializer(serializers.ModelSerializer):
    masked = serializers.CharField(read_only=True, help_text="prefix and last four characters, e.g. ctr_ab12cd34ef56_…x9Qz")
    status = serializers.ChoiceField(choices=["active", "expired", "revoked"], read_only=True)
    kind = serializers.ChoiceField(
        choices=[ApiKey.Kind.STANDARD, ApiKey.Kind.ADMIN],
        read_only=True,
        help_text="standard: an API key for /v1; admin: an admin key for this management API",
    )

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "masked",
            "status",
            "created_at",
            "last_used_at",
            "expires_at",
            "revoked_at",
            "kind",
        ]
        read_only_fields = fields


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="the raw key: shown in this response only, never again")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, trim_whitespace=True)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, help_text="when the key stops working")
    expires_in_days = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=3650)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        at, days = attrs.get("expires_at"), attrs.get("expires_in_days")
        if at is not None and days is not None:
            raise serializers.ValidationError("give expires_at or expires_in_days, not both")
        expires: datetime | None = at if at is not None else expiry_in_days(days)
        if expires is not None and expires <= timezone.now():
            raise serializers.ValidationError({"expires_at": "the expiry must be in the future"})
        return {"name": attrs["name"], "expires_at": expires}


class ApiKeyListQuerySerializer(serializers.Serializer):
    """The list's paging, newest first: `limit` keys (at most context["max_limit"], which is also the default) from
    `offset`. Both bounded, so one listing costs the same however many keys an organization piles up."""

    limit = serializers.IntegerField(required=False, min_value=1, help_text="at most this many keys (default and maximum: 500)")
    offset = serializers.IntegerField(required=False, min_value=0, max_value=1_000_000, help_text="skip this many (default 0)")

    def validate_limit(self, value: int) -> int:
        most = self.context["max_limit"]
        if value > most:
            raise serializers.ValidationError(f"Ensure this value is less than or equal to {most}.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return {"limit": attrs.get("limit", self.context["max_limit"]), "offset": attrs.get("offset", 0)}
