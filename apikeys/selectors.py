"""Reads of key records for the gateway's verification cache."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from apikeys.models import ApiKey


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: int
    public_id: str
    key_hash: str
    organization_id: int
    organization_slug: str
    organization_active: bool
    plan_id: int | None
    expires_at: datetime | None
    revoked: bool
    kind: str = ApiKey.Kind.STANDARD
    allowed_aliases: frozenset[str] | None = None  # None: every alias the organization may use
    requests_per_minute: int | None = None
    spend_cap_daily_micros: int | None = None
    spend_cap_monthly_micros: int | None = None
    organization_spend_cap_daily_micros: int | None = None
    organization_spend_cap_monthly_micros: int | None = None


_RECORD_FIELDS = (
    "id",
    "public_id",
    "key_hash",
    "expires_at",
    "revoked_at",
    "organization__id",
    "organization__slug",
    "organization__status",
    "organization__plan_id",
    "organization__spend_cap_daily_micros",
    "organization__spend_cap_monthly_micros",
    "kind",
    "allowed_aliases",
    "requests_per_minute",
    "spend_cap_daily_micros",
    "spend_cap_monthly_micros",
)


def apikey_record(*, public_id: str) -> KeyRecord | None:
    row = ApiKey.objects.filter(public_id=public_id).select_related("organization").only(*_RECORD_FIELDS).first()
    return _record(row) if row is not None else None


def apikey_record_by_external_id(*, external_id: str) -> KeyRecord | None:
    """Our row of an Unkey-issued key, by Unkey's keyId; None for an empty id or a key we do not hold."""
    if not external_id:
        return None  # a key still being created has no external id yet and must match nothing
    row = (
        ApiKey.objects.filter(issuer=ApiKey.Issuer.UNKEY, external_id=external_id)
        .select_related("organization")
        .only(*_RECORD_FIELDS)
        .first()
    )
    return _record(row) if row is not None else None


def _record(row: ApiKey) -> KeyRecord:
    org = row.organization
    return KeyRecord(
        key_id=row.pk,
        public_id=row.public_id,
        key_hash=row.key_hash,
        organization_id=org.pk,
        organization_slug=org.slug,
        organization_active=org.is_active,
        plan_id=org.plan_id,
        expires_at=row.expires_at,
        revoked=row.revoked_at is not None,
        kind=row.kind,
        allowed_aliases=frozenset(row.allowed_aliases) if row.allowed_aliases else None,
        requests_per_minute=row.requests_per_minute,
        spend_cap_daily_micros=row.spend_cap_daily_micros,
        spend_cap_monthly_micros=row.spend_cap_monthly_micros,
        organization_spend_cap_daily_micros=org.spend_cap_daily_micros,
        organization_spend_cap_monthly_micros=org.spend_cap_monthly_micros,
    )
