"""One implementation of creating, revoking and listing keys, for the portal, the API and manage.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import Organization, User
from apikeys.keys import generate_key
from apikeys.models import ApiKey, ApiKeyEvent


@dataclass(frozen=True, slots=True)
class CreatedKey:
    api_key: ApiKey
    raw: str  # shown once, to whoever created it, and never stored


class KeyNotFound(LookupError):
    pass


@transaction.atomic
def apikey_create(
    *,
    organization: Organization,
    name: str,
    created_by: User | None = None,
    expires_at: datetime | None = None,
    actor_label: str = "",
    source_ip: str | None = None,
) -> CreatedKey:
    name = name.strip()
    if not name or len(name) > 100:
        raise ValueError("a key needs a name of 1 to 100 characters")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValueError("the expiry must be in the future")
    new = generate_key()
    api_key = ApiKey.objects.create(
        organization=organization,
        name=name,
        created_by=created_by,
        public_id=new.public_id,
        prefix=new.prefix,
        key_hash=new.key_hash,
        last_four=new.last_four,
        issuer=ApiKey.Issuer.LOCAL,
        expires_at=expires_at,
    )
    ApiKeyEvent.objects.create(
        api_key=api_key, action=ApiKeyEvent.Action.CREATE, actor=created_by, actor_label=actor_label, source_ip=source_ip
    )
    return CreatedKey(api_key=api_key, raw=new.raw)


def expiry_in_days(days: int | None) -> datetime | None:
    if days is None:
        return None
    if days <= 0:
        raise ValueError("expiry days must be positive")
    try:
        return timezone.now() + timedelta(days=days)
    except OverflowError:  # past year 9999: a clear error, not a traceback
        raise ValueError("expiry days is too large") from None


@transaction.atomic
def apikey_revoke(
    *, api_key: ApiKey, actor: User | None = None, actor_label: str = "", source_ip: str | None = None
) -> ApiKey:
    # Lock the row so two concurrent revokes write one audit event.
    locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if locked.revoked_at is None:
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["revoked_at"])  # post_save bumps the gateway cache epoch
        ApiKeyEvent.objects.create(
            api_key=locked, action=ApiKeyEvent.Action.REVOKE, actor=actor, actor_label=actor_label, source_ip=source_ip
        )
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
        ApiKey.objects.filter(pk=key_id).filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=when)).update(
            last_used_at=when
        )


# --- Portal: the playground's internal key -------------------------------------------------------
# Added for the customer portal; the functions above are unchanged.

PLAYGROUND_KEY_NAME = "playground"
PLAYGROUND_ACTOR_LABEL = "portal playground (internal key)"


def apikey_get_or_create_playground(*, organization: Organization) -> ApiKey:
    """The organization's internal key for the portal playground: its usage is charged like any key's,
    and its raw value is discarded at once (the playground authenticates by session, not by key)."""
    with transaction.atomic():
        # Lock the organization row so two first playground requests make one key, not two.
        Organization.objects.select_for_update().filter(pk=organization.pk).first()
        existing = (
            ApiKey.objects.filter(
                organization=organization,
                name=PLAYGROUND_KEY_NAME,
                created_by__isnull=True,
                revoked_at__isnull=True,
                expires_at__isnull=True,
                events__action=ApiKeyEvent.Action.CREATE,
                events__actor_label=PLAYGROUND_ACTOR_LABEL,
            )
            .order_by("-created_at")
            .first()
        )
        if existing is not None:
            return existing
        return apikey_create(organization=organization, name=PLAYGROUND_KEY_NAME, actor_label=PLAYGROUND_ACTOR_LABEL).api_key
