"""Who issues new keys (`PORTAL_KEY_ISSUER`), and what Unkey is asked when we create, revoke or roll back one.

With the Unkey issuer, Unkey generates the key and verifies it on every request; we keep the same metadata
row as for a local key (public prefix, last four, an HMAC of the key with our pepper), so listing, auditing
and the portal look the same in both modes. Unkey learns:

- `externalId`: the organization's slug. Unkey groups the keys of one identity under it, and a slug reads
  better in Unkey's dashboard than a number. The gateway does not trust it for anything: the organization
  comes from our row (found by Unkey's keyId) and is cross-checked against `meta.organizationId`, an id
  that never changes, so renaming an organization does not break its keys.
- `meta`: `{"apiKeyId", "organizationId", "planSlug"}`.
- `ratelimits`: `requests`, the plan's requests_per_minute per 60 000 ms, applied on every verification.
  When the organization changes plan, or its plan's requests_per_minute is edited, the organization's live
  keys are updated at Unkey (`unkey_sync_plan`, from signals in apikeys/signals.py): an upgraded customer
  must not be refused by Unkey at the old rate. The local limiter enforces the current plan either way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings

from accounts.models import Organization
from apikeys.keys import KEY_PREFIX, hash_key
from apikeys.unkey import RatelimitSpec, UnkeyError, unkey_client

log = logging.getLogger("apikeys.issuers")

LOCAL = "local"
UNKEY = "unkey"

UNKEY_BYTE_LENGTH = 32  # the random part: about 44 base58 characters
REQUESTS_LIMIT = "requests"  # the name verifyKey is asked to apply, cost 1 per request
MINUTE_MS = 60_000
SHOWN_CHARACTERS = 12  # of the random part, in the displayed prefix (as for local keys: ctr_ + 12)


class KeyIssuerUnavailable(ValueError):
    """The issuer could not create the key; nothing was created. A ValueError so that the doors which show
    a service's ValueError as a one-line error (manage.py issue_key) show this one too."""


def current_issuer() -> str:
    return settings.PORTAL_KEY_ISSUER


@dataclass(frozen=True, slots=True)
class UnkeyIssued:
    key_id: str  # Unkey's keyId, stored as ApiKey.external_id
    public_id: str
    prefix: str
    key_hash: str
    last_four: str
    raw: str = field(repr=False)


def display_parts(raw: str) -> tuple[str, str, str]:
    """(public id, prefix, last four) of an Unkey key `ctr_<random>`: at most a third of the random part is shown."""
    _, _, rest = raw.partition("_")
    shown = rest[: min(SHOWN_CHARACTERS, len(rest) // 3)]
    return shown, f"{KEY_PREFIX}_{shown}", raw[-4:]


def unkey_issue(*, api_key_id: int, organization: Organization, name: str, expires_at: datetime | None) -> UnkeyIssued:
    """Create the key at Unkey for our row `api_key_id`; raises KeyIssuerUnavailable when Unkey cannot."""
    meta, ratelimits = unkey_plan_fields(organization, api_key_id)
    try:
        created = unkey_client().create_key(
            name=name,
            external_id=organization.slug,
            meta=meta,
            prefix=KEY_PREFIX,
            byte_length=UNKEY_BYTE_LENGTH,
            expires_ms=int(expires_at.timestamp() * 1000) if expires_at is not None else None,
            ratelimits=ratelimits,
        )
    except UnkeyError as exc:
        log.warning("could not create a key at Unkey for organization %s: %s", organization.slug, exc)
        raise KeyIssuerUnavailable("the key issuer (Unkey) is unavailable; no key was created, try again") from None
    if not created.key.startswith(f"{KEY_PREFIX}_") or len(created.key) < 24:
        # Unkey made something we would display too much of; take it back rather than store it.
        unkey_delete_quietly(key_id=created.key_id)
        raise KeyIssuerUnavailable("the key issuer (Unkey) returned a key of an unexpected shape; no key was created")
    public_id, prefix, last_four = display_parts(created.key)
    return UnkeyIssued(
        key_id=created.key_id,
        public_id=public_id,
        prefix=prefix,
        key_hash=hash_key(created.key),
        last_four=last_four,
        raw=created.key,
    )


def unkey_plan_fields(organization: Organization, api_key_id: int) -> tuple[dict[str, Any], list[RatelimitSpec]]:
    """What Unkey holds about a key that follows its organization's plan: its meta and its named ratelimit."""
    plan = organization.plan
    ratelimits = [RatelimitSpec(REQUESTS_LIMIT, plan.requests_per_minute, MINUTE_MS)] if plan is not None else []
    meta = {"apiKeyId": api_key_id, "organizationId": organization.pk, "planSlug": plan.slug if plan else None}
    return meta, ratelimits


def unkey_sync_plan(*, organization: Organization) -> tuple[int, int]:
    """Bring the organization's live Unkey keys to its current plan; returns (updated, failed).

    A failure is logged, not raised: the plan change stands, the local limiter enforces the new plan, and
    the next change of the organization's plan (or an edit of its rate) retries. Called after the change
    has committed.
    """
    from apikeys.models import ApiKey

    live = ApiKey.objects.filter(organization=organization, issuer=ApiKey.Issuer.UNKEY, revoked_at__isnull=True).exclude(
        external_id=""
    )
    updated = failed = 0
    for key_id, external_id in live.values_list("pk", "external_id"):
        meta, ratelimits = unkey_plan_fields(organization, key_id)
        try:
            unkey_client().update_key(external_id, meta=meta, ratelimits=[r.as_json() for r in ratelimits])
        except UnkeyError as exc:
            failed += 1
            log.error("could not update Unkey key %s to the plan of organization %s: %s", external_id, organization.slug, exc)
            continue
        updated += 1
    return updated, failed


def unkey_disable(*, key_id: str) -> bool:
    """Disable a revoked key at Unkey. Our row is revoked already and the gateway refuses it either way, so a
    failure is logged rather than raised: revoking the key again retries."""
    try:
        unkey_client().disable_key(key_id)
    except UnkeyError as exc:
        log.warning("could not disable Unkey key %s (revoked here; revoke again to retry): %s", key_id, exc)
        return False
    return True


def unkey_delete_quietly(*, key_id: str) -> None:
    """Take back a key whose creation failed on our side, so no working key exists without our row."""
    try:
        unkey_client().delete_key(key_id)
    except UnkeyError as exc:
        log.error("could not delete Unkey key %s after a failed creation; delete it in Unkey: %s", key_id, exc)
