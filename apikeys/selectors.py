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


def apikey_record(*, public_id: str) -> KeyRecord | None:
    row = (
        ApiKey.objects.filter(public_id=public_id)
        .select_related("organization")
        .only(
            "id", "public_id", "key_hash", "expires_at", "revoked_at",
            "organization__id", "organization__slug", "organization__status", "organization__plan_id",
        )
        .first()
    )
    if row is None:
        return None
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
    )
