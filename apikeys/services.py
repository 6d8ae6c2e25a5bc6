"""One implementation of creating, revoking and listing keys, for the portal, the API and manage.py."""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import Organization, User
from accounts.services import user_account_delete, user_deletion_lock
from apikeys.issuers import current_issuer, unkey_delete_quietly, unkey_disable, unkey_issue
from apikeys.keys import KEY_PREFIX, generate_key
from apikeys.models import ApiKey, ApiKeyEvent


@dataclass(frozen=True, slots=True)
class CreatedKey:
    api_key: ApiKey
    raw: str = field(repr=False)  # shown once, to whoever created it, and never stored (nor in a repr)


class KeyNotFound(LookupError):
    pass


def apikey_create(
    *,
    organization: Organization,
    name: str,
    created_by: User | None = None,
    expires_at: datetime | None = None,
    actor_label: str = "",
    source_ip: str | None = None,
) -> CreatedKey:
    """A new key of the configured issuer; raises ValueError on bad input (KeyIssuerUnavailable when Unkey fails)."""
    name = name.strip()
    if not name or len(name) > 100:
        raise ValueError("a key needs a name of 1 to 100 characters")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValueError("the expiry must be in the future")
    fields = {"organization": organization, "name": name, "created_by": created_by, "expires_at": expires_at}
    event = {"actor": created_by, "actor_label": actor_label, "source_ip": source_ip}
    if current_issuer() == ApiKey.Issuer.UNKEY:
        return _apikey_create_at_unkey(fields=fields, event=event)
    return _apikey_create_local(fields=fields, event=event)


@transaction.atomic
def _apikey_create_local(*, fields: dict[str, Any], event: dict[str, Any]) -> CreatedKey:
    new = generate_key()
    api_key = ApiKey.objects.create(
        **fields,
        public_id=new.public_id,
        prefix=new.prefix,
        key_hash=new.key_hash,
        last_four=new.last_four,
        issuer=ApiKey.Issuer.LOCAL,
    )
    ApiKeyEvent.objects.create(api_key=api_key, action=ApiKeyEvent.Action.CREATE, **event)
    return CreatedKey(api_key=api_key, raw=new.raw)


def _apikey_create_at_unkey(*, fields: dict[str, Any], event: dict[str, Any]) -> CreatedKey:
    # Unkey is called outside any transaction of ours: a network call must not hold row locks, nor keep a
    # cache change (gateway/invalidation.py) uncommitted, so the gateways' poll waits on its gap. Our row
    # is made first, because its id goes into the key's meta, and it is born revoked with no external id:
    # a crash half-way leaves a dead row, never a live key.
    pending = ApiKey.objects.create(
        **fields,
        public_id=f"pending-{secrets.token_hex(8)}",
        prefix=f"{KEY_PREFIX}_pending",
        key_hash="",
        last_four="",
        issuer=ApiKey.Issuer.UNKEY,
        revoked_at=timezone.now(),
    )
    try:
        issued = unkey_issue(
            api_key_id=pending.pk, organization=fields["organization"], name=fields["name"], expires_at=fields["expires_at"]
        )
    except BaseException:
        with contextlib.suppress(DatabaseError):
            ApiKey.objects.filter(pk=pending.pk).delete()
        raise
    try:
        with transaction.atomic():
            pending.public_id = issued.public_id
            pending.prefix = issued.prefix
            pending.key_hash = issued.key_hash
            pending.last_four = issued.last_four
            pending.external_id = issued.key_id
            pending.revoked_at = None
            pending.save(update_fields=["public_id", "prefix", "key_hash", "last_four", "external_id", "revoked_at"])
            ApiKeyEvent.objects.create(api_key=pending, action=ApiKeyEvent.Action.CREATE, **event)
    except BaseException:
        unkey_delete_quietly(key_id=issued.key_id)
        with contextlib.suppress(DatabaseError):
            ApiKey.objects.filter(pk=pending.pk).delete()
        raise
    return CreatedKey(api_key=pending, raw=issued.raw)


def expiry_in_days(days: int | None) -> datetime | None:
    if days is None:
        return None
    if days <= 0:
        raise ValueError("expiry days must be positive")
    try:
        return timezone.now() + timedelta(days=days)
    except OverflowError:  # past year 9999: a clear error, not a traceback
        raise ValueError("expiry days is too large") from None


def apikey_revoke(*, api_key: ApiKey, actor: User | None = None, actor_label: str = "", source_ip: str | None = None) -> ApiKey:
    with transaction.atomic():
        # Lock the row so two concurrent revokes write one audit event.
        locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
        if locked.revoked_at is None:
            locked.revoked_at = timezone.now()
            locked.save(update_fields=["revoked_at"])  # post_save records a cache change for this key
            ApiKeyEvent.objects.create(
                api_key=locked, action=ApiKeyEvent.Action.REVOKE, actor=actor, actor_label=actor_label, source_ip=source_ip
            )
        if locked.issuer == ApiKey.Issuer.UNKEY and locked.external_id:
            # Once our revocation is committed (the gateway refuses the key from then on, whatever Unkey
            # says); again on a repeated revoke, which is how a failed disable is retried.
            external_id = locked.external_id
            transaction.on_commit(lambda: unkey_disable(key_id=external_id))
    return locked


def apikey_find(*, id_or_prefix: str, organization: Organization | None = None) -> ApiKey:
    """A key by numeric id, public id or displayed prefix (ctr_…); raises KeyNotFound."""
    ref = id_or_prefix.strip()
    if ref.startswith("ctr_"):
        ref = ref[4:].split("_", 1)[0]
    query = Q(public_id=ref)
    if ref.isdigit():
        query |= Q(pk=int(ref))
    keys = ApiKey.objects.filter(query)
    if organization is not None:
        keys = keys.filter(organization=organization)
    found = list(keys[:2])
    if len(found) != 1:
        raise KeyNotFound(f"no single key matches {id_or_prefix!r}")
    return found[0]


def apikey_list(*, organization: Organization) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(organization=organization).order_by("-created_at")


def apikeys_touch_last_used(*, last_used: dict[int, datetime]) -> None:
    """Record when keys were last used; a plain UPDATE so no cache is invalidated by it."""
    for key_id, when in last_used.items():
        ApiKey.objects.filter(pk=key_id).filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=when)).update(last_used_at=when)


# --- Portal: the playground's internal key -------------------------------------------------------
# Added for the customer portal; the functions above are unchanged.

PLAYGROUND_KEY_NAME = "playground"
PLAYGROUND_ACTOR_LABEL = "portal playground (internal key)"


def _playground_keys(organization: Organization) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(
        organization=organization,
        name=PLAYGROUND_KEY_NAME,
        created_by__isnull=True,
        revoked_at__isnull=True,
        expires_at__isnull=True,
        events__action=ApiKeyEvent.Action.CREATE,
        events__actor_label=PLAYGROUND_ACTOR_LABEL,
    ).order_by("created_at", "pk")


def apikey_get_or_create_playground(*, organization: Organization) -> ApiKey:
    """The organization's internal key for the portal playground: its usage is charged like any key's, and its
    raw value is dropped at once (the playground signs in by session, not by key). Raises what apikey_create does."""
    existing = _playground_keys(organization).first()
    if existing is not None:
        return existing
    # No lock around the creation: with Unkey it is a network call. Two first requests at once may make two
    # keys; both then keep the oldest and revoke the rest, so one survives whichever finishes first.
    created = apikey_create(organization=organization, name=PLAYGROUND_KEY_NAME, actor_label=PLAYGROUND_ACTOR_LABEL).api_key
    keys = list(_playground_keys(organization))
    for duplicate in keys[1:]:
        apikey_revoke(api_key=duplicate, actor_label=PLAYGROUND_ACTOR_LABEL)
    return keys[0] if keys else created


# --- Deleting an account, with the keys of the organizations it leaves empty -----------------------------------


@transaction.atomic
def user_delete(*, user: User, source_ip: str | None = None) -> int:
    """Delete an account; the active keys of organizations it was the only member of are revoked first. Returns how many.

    Refused (LastOwner) while the user is the only owner of an organization that has other members. Here rather than
    in accounts: the keys are this app's, and accounts imports no app above it."""
    impact = user_deletion_lock(user=user)
    revoked = 0
    now = timezone.now()
    for org in impact.closing:
        for key in (
            apikey_list(organization=org)
            .filter(revoked_at__isnull=True)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        ):
            apikey_revoke(api_key=key, actor=user, actor_label="account deleted", source_ip=source_ip)
            revoked += 1
    user_account_delete(user=user, source_ip=source_ip)
    return revoked
