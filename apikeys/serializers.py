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
    internal = serializers.SerializerMethodField(help_text="the portal playground's own key")

    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "masked", "status", "created_at", "last_used_at", "expires_at", "revoked_at", "internal"]
        read_only_fields = fields

    def get_internal(self, key: ApiKey) -> bool:
        return bool(getattr(key, "is_playground", False))


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

