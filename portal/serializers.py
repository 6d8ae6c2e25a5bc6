"""The management API's shapes of a key: listed (masked), created or rotated (with the raw key, once), and the requests
that create, change and rotate one. Spend caps are exact integer micro-units (1 000 000 = $1)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone
from rest_framework import serializers

from apikeys.models import ApiKey
from apikeys.services import MAX_ROTATION_GRACE_S, expiry_in_days

MAX_CAP_MICROS = 10**15  # a billion dollars: a bound on input, not a policy
MAX_ALLOWED_MODELS = 200


class ApiKeySerializer(serializers.ModelSerializer):
    masked = serializers.CharField(read_only=True, help_text="prefix and last four characters, e.g. ctr_ab12cd34ef56_…x9Qz")
    status = serializers.ChoiceField(choices=["active", "expired", "revoked"], read_only=True)
    kind = serializers.ChoiceField(
        choices=[ApiKey.Kind.STANDARD, ApiKey.Kind.ADMIN],
        read_only=True,
        help_text="standard: an API key for /v1 (ctr_…); admin: an admin key for this management API (cta_…)",
    )
    allowed_models = serializers.ListField(
        source="allowed_aliases",
        child=serializers.CharField(),
        read_only=True,
        help_text="the models this key may call; empty: every model the organization may use",
    )
    requests_per_minute = serializers.IntegerField(read_only=True, allow_null=True, help_text="null: the plan's")
    spend_cap_daily_micros = serializers.IntegerField(
        read_only=True, allow_null=True, help_text="micro-units per UTC day; null: no cap of its own"
    )
    spend_cap_monthly_micros = serializers.IntegerField(
        read_only=True, allow_null=True, help_text="micro-units per calendar month (UTC); null: no cap of its own"
    )
    rotated_from: serializers.PrimaryKeyRelatedField = serializers.PrimaryKeyRelatedField(
        read_only=True, help_text="the id of the key this one replaced"
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
            "allowed_models",
            "requests_per_minute",
            "spend_cap_daily_micros",
            "spend_cap_monthly_micros",
            "rotated_from",
        ]
        read_only_fields = fields


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="the raw key: shown in this response only, never again")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


class ApiKeyRotatedSerializer(ApiKeyCreatedSerializer):
    old_key = ApiKeySerializer(read_only=True, help_text="the key it replaces, working until its expires_at")

    class Meta(ApiKeyCreatedSerializer.Meta):
        fields = [*ApiKeyCreatedSerializer.Meta.fields, "old_key"]
        read_only_fields = fields


class KeyControlsSerializer(serializers.Serializer):
    """A key's own controls, each within its organization's (checked by apikeys.services.apikey_settings_clean)."""

    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=100),
        required=False,
        max_length=MAX_ALLOWED_MODELS,
        help_text="models this key may call, a subset of the organization's; empty: all of them",
    )
    requests_per_minute = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, help_text="at most the plan's; null: the plan's"
    )
    spend_cap_daily_micros = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=MAX_CAP_MICROS,
        help_text="micro-units per UTC day, at most the organization's daily cap; null: none of its own",
    )
    spend_cap_monthly_micros = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=MAX_CAP_MICROS,
        help_text="micro-units per month, at most the organization's monthly cap; null: none of its own",
    )


class ApiKeyCreateSerializer(KeyControlsSerializer):
    name = serializers.CharField(max_length=100, trim_whitespace=True)
    kind = serializers.ChoiceField(
        choices=[ApiKey.Kind.STANDARD, ApiKey.Kind.ADMIN],
        default=ApiKey.Kind.STANDARD,
        help_text="admin: an admin key (signed-in owners and admins only; an admin key cannot make one)",
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True, help_text="when the key stops working")
    expires_in_days = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=3650)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        at, days = attrs.pop("expires_at", None), attrs.pop("expires_in_days", None)
        if at is not None and days is not None:
            raise serializers.ValidationError("give expires_at or expires_in_days, not both")
        expires: datetime | None = at if at is not None else expiry_in_days(days)
        if expires is not None and expires <= timezone.now():
            raise serializers.ValidationError({"expires_at": "the expiry must be in the future"})
        return {**attrs, "expires_at": expires}


class ApiKeyUpdateSerializer(KeyControlsSerializer):
    """Only the fields sent change; null clears a control (back to the organization's) or the expiry (never)."""

    name = serializers.CharField(max_length=100, trim_whitespace=True, required=False)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, help_text="null: never")


class ApiKeyRotateSerializer(serializers.Serializer):
    grace_seconds = serializers.IntegerField(
        min_value=0,
        max_value=MAX_ROTATION_GRACE_S,
        help_text="how long the old key keeps working, 0 (stops now) to 604800 (7 days)",
    )


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
