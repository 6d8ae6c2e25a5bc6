"""The management API's OpenAPI extras: the admin-key security scheme and an example of every call's request and answer."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiExample


class AdminKeyScheme(OpenApiAuthenticationExtension):
    """Registered by being defined: drf-spectacular finds the extension of portal.authentication.AdminKeyAuthentication."""

    target_class = "portal.authentication.AdminKeyAuthentication"
    name = "adminKey"
    priority = 1

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "cta_<12 hex>_<43 characters>",
            "description": "An organization admin key, made by an owner or admin on the portal's API keys page or by "
            "`manage.py issue_key --kind admin`. It acts as its organization only, manages its API keys (not admin keys) "
            "and reads its usage; /v1 never accepts it.",
        }


_KEY = {
    "id": 42,
    "name": "production backend",
    "prefix": "ctr_3f2a9c0d1e4b",
    "masked": "ctr_3f2a9c0d1e4b_…x9Qz",
    "status": "active",
    "created_at": "2026-12-01T09:30:00Z",
    "last_used_at": "2026-12-06T14:02:11Z",
    "expires_at": None,
    "revoked_at": None,
    "kind": "standard",
    "allowed_models": ["oss-20b"],
    "requests_per_minute": 30,
    "spend_cap_daily_micros": 5_000_000,
    "spend_cap_monthly_micros": 100_000_000,
    "rotated_from": None,
}
_RAW = "ctr_3f2a9c0d1e4b_Zq0dW6Yl2bT8nR4mK1vH9sXeA7cJ5uP3gLfN0yQ2x9Qz"

LIST_EXAMPLE = OpenApiExample("The organization's keys", value=[_KEY], response_only=True)
KEY_EXAMPLE = OpenApiExample("One key", value=_KEY, response_only=True)
CREATE_REQUEST_EXAMPLE = OpenApiExample(
    "A key for one model, 30 requests a minute, $5 a day",
    value={
        "name": "production backend",
        "expires_in_days": 90,
        "allowed_models": ["oss-20b"],
        "requests_per_minute": 30,
        "spend_cap_daily_micros": 5_000_000,
        "spend_cap_monthly_micros": 100_000_000,
    },
    request_only=True,
)
CREATED_EXAMPLE = OpenApiExample(
    "Created: the raw key, shown this once",
    value={**_KEY, "last_used_at": None, "expires_at": "2027-03-01T09:30:00Z", "key": _RAW},
    response_only=True,
    status_codes=["201"],
)
UPDATE_REQUEST_EXAMPLE = OpenApiExample(
    "Lower the daily cap, allow every model",
    value={"spend_cap_daily_micros": 2_500_000, "allowed_models": []},
    request_only=True,
)
UPDATED_EXAMPLE = OpenApiExample(
    "The key as saved", value={**_KEY, "spend_cap_daily_micros": 2_500_000, "allowed_models": []}, response_only=True
)
REVOKED_EXAMPLE = OpenApiExample(
    "Revoked", value={**_KEY, "status": "revoked", "revoked_at": "2026-12-06T15:00:00Z"}, response_only=True
)
ROTATE_REQUEST_EXAMPLE = OpenApiExample("A day's grace", value={"grace_seconds": 86400}, request_only=True)
ROTATED_EXAMPLE = OpenApiExample(
    "Rotated: the new key, shown this once, and the old one's end",
    value={
        **_KEY,
        "id": 43,
        "prefix": "ctr_9b1e77a0c3d2",
        "masked": "ctr_9b1e77a0c3d2_…T4kw",
        "created_at": "2026-12-06T15:00:00Z",
        "last_used_at": None,
        "rotated_from": 42,
        "key": "ctr_9b1e77a0c3d2_Hh3kP0aLq8Zr5tVb2Nw7mYc1dXe6sGf4jUo9iRl0T4kw",
        "old_key": {**_KEY, "expires_at": "2026-12-07T15:00:00Z"},
    },
    response_only=True,
    status_codes=["201"],
)
USAGE_SUMMARY_EXAMPLE = OpenApiExample(
    "By model",
    value={
        "organization": "acme",
        "from": "2026-12-01",
        "to": "2026-12-06",
        "group_by": "model",
        "totals": {"requests": 1200, "errors": 3, "prompt_tokens": 96000, "completion_tokens": 48000, "total_tokens": 144000},
        "rows": [
            {
                "model": "oss-20b",
                "requests": 1200,
                "errors": 3,
                "prompt_tokens": 96000,
                "completion_tokens": 48000,
                "total_tokens": 144000,
            }
        ],
    },
    response_only=True,
)
