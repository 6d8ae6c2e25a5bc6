"""One implementation of creating, revoking and listing keys, for the portal, the API and manage.py."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import Organization, User
from accounts.services import user_account_delete, user_deletion_lock
from apikeys.issuers import current_issuer, unkey_delete_quietly, unkey_disable, unkey_issue
from apikeys.keys import ADMIN_KEY_PREFIX, KEY_PREFIX, generate_key, hashes_match, split_admin_key
from apikeys.models import ApiKey, ApiKeyEvent


@dataclass(frozen=True, slots=True)
class CreatedKey:
    api_key: ApiKey
    raw: str = field(repr=False)  # shown once, to whoever created it, and never stored (nor in a repr)


class KeyNotFound(LookupError):
    pass


class KeySettingsInvalid(ValueError):
    """Per-key settings refused; `errors` maps each refused field (the management API's names) to why."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{field}: {why}" for field, why in errors.items()))
        self.errors = errors


MAX_ROTATION_GRACE_S = 7 * 24 * 3600  # the old key of a rotation works at most a week longer
MICROS_PER_DOLLAR = 1_000_000
CUSTOMER_KINDS = (ApiKey.Kind.STANDARD, ApiKey.Kind.ADMIN)  # what an organization's people see and manage


def apikey_settings_clean(
    *,
    organization: Organization,
    allowed_aliases: list[str] | None = None,
    requests_per_minute: int | None = None,
    spend_cap_daily_micros: int | None = None,
    spend_cap_monthly_micros: int | None = None,
    check: frozenset[str] | None = None,
) -> dict[str, Any]:
    """A key's own controls checked against its organization's: the model field names only aliases the organization
    may use, the rate is at most the plan's, each cap at most the organization's cap of the same period. Returns the
    model fields; raises KeySettingsInvalid naming every refused field. `check`: only these model fields are checked
    (a change of one control is not refused for another that the organization's plan has since outgrown)."""
    from billing.selectors import models_for_organization

    def checked(name: str) -> bool:
        return check is None or name in check

    errors: dict[str, str] = {}
    aliases = sorted({a.strip() for a in (allowed_aliases or []) if a.strip()})
    if aliases and checked("allowed_aliases"):
        usable = {a.alias for a in models_for_organization(organization)}
        unknown = [a for a in aliases if a not in usable]
        if unknown:
            errors["allowed_models"] = f"not a model this organization may use: {', '.join(unknown)}"
    plan = organization.plan
    if requests_per_minute is not None and checked("requests_per_minute"):
        if requests_per_minute < 1:
            errors["requests_per_minute"] = "must be at least 1"
        elif plan is not None and requests_per_minute > plan.requests_per_minute:
            errors["requests_per_minute"] = f"must be at most the plan's {plan.requests_per_minute} requests per minute"
    for cap_field, value, org_cap, period in (
        ("spend_cap_daily_micros", spend_cap_daily_micros, organization.spend_cap_daily_micros, "daily"),
        ("spend_cap_monthly_micros", spend_cap_monthly_micros, organization.spend_cap_monthly_micros, "monthly"),
    ):
        if value is None or not checked(cap_field):
            continue
        if value < 1:
            errors[cap_field] = "must be positive (leave it empty for no cap)"
        elif org_cap is not None and value > org_cap:
            errors[cap_field] = f"must be at most the organization's {period} cap of ${org_cap / MICROS_PER_DOLLAR:,.2f}"
    if (
        (checked("spend_cap_daily_micros") or checked("spend_cap_monthly_micros"))
        and spend_cap_daily_micros is not None
        and spend_cap_monthly_micros is not None
        and "spend_cap_daily_micros" not in errors
        and spend_cap_daily_micros > spend_cap_monthly_micros
    ):
        errors["spend_cap_daily_micros"] = "must be at most the key's monthly cap"
    if errors:
        raise KeySettingsInvalid(errors)
    return {
        "allowed_aliases": aliases,
        "requests_per_minute": requests_per_minute,
        "spend_cap_daily_micros": spend_cap_daily_micros,
        "spend_cap_monthly_micros": spend_cap_monthly_micros,
    }


def apikey_create(
    *,
    organization: Organization,
    name: str,
    created_by: User | None = None,
    expires_at: datetime | None = None,
    actor_label: str = "",
    source_ip: str | None = None,
    kind: str = ApiKey.Kind.STANDARD,
    allowed_aliases: list[str] | None = None,
    requests_per_minute: int | None = None,
    spend_cap_daily_micros: int | None = None,
    spend_cap_monthly_micros: int | None = None,
    rotated_from: ApiKey | None = None,
    check_controls: bool = True,
) -> CreatedKey:
    """A new key; raises ValueError on bad input (KeySettingsInvalid for the per-key controls, KeyIssuerUnavailable
    when Unkey fails). API and playground keys come from the configured issuer; admin keys are always local (they are
    checked by the management API here, never by Unkey) and carry no per-key controls."""
    name = name.strip()
    if not name or len(name) > 100:
        raise ValueError("a key needs a name of 1 to 100 characters")
    if kind not in ApiKey.Kind.values:
        raise ValueError(f"kind must be one of {', '.join(ApiKey.Kind.values)}")
    if expires_at is not None and expires_at <= timezone.now():
        raise KeySettingsInvalid({"expires_at": "the expiry must be in the future"})
    controls = apikey_settings_clean(
        organization=organization,
        allowed_aliases=allowed_aliases,
        requests_per_minute=requests_per_minute,
        spend_cap_daily_micros=spend_cap_daily_micros,
        spend_cap_monthly_micros=spend_cap_monthly_micros,
        check=None if check_controls else frozenset(),
    )
    if kind == ApiKey.Kind.ADMIN and any(controls.values()):
        raise KeySettingsInvalid({"kind": "an admin key calls no model: it takes no models, rate or spend caps"})
    fields = {
        "organization": organization,
        "name": name,
        "created_by": created_by,
        "expires_at": expires_at,
        "kind": kind,
        "rotated_from": rotated_from,
        **controls,
    }
    event = {"actor": created_by, "actor_label": actor_label, "source_ip": source_ip}
    if kind != ApiKey.Kind.ADMIN and current_issuer() == ApiKey.Issuer.UNKEY:
        return _apikey_create_at_unkey(fields=fields, event=event)
    return _apikey_create_local(fields=fields, event=event)


@transaction.atomic
def _apikey_create_local(*, fields: dict[str, Any], event: dict[str, Any]) -> CreatedKey:
    new = generate_key(prefix=ADMIN_KEY_PREFIX if fields["kind"] == ApiKey.Kind.ADMIN else KEY_PREFIX)
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
    """A key by numeric id, public id or displayed prefix (ctr_…, cta_…); raises KeyNotFound."""
    ref = id_or_prefix.strip()
    if ref.startswith((f"{KEY_PREFIX}_", f"{ADMIN_KEY_PREFIX}_")):
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


def apikey_list(*, organization: Organization, kinds: Iterable[str] | None = None) -> QuerySet[ApiKey]:
    """The organization's keys, newest first; of these kinds only when given (customers see CUSTOMER_KINDS)."""
    keys = ApiKey.objects.filter(organization=organization)
    if kinds is not None:
        keys = keys.filter(kind__in=list(kinds))
    return keys.order_by("-created_at")


_UNSET: Any = object()


def apikey_update(
    *,
    api_key: ApiKey,
    actor: User | None = None,
    actor_label: str = "",
    source_ip: str | None = None,
    name: str = _UNSET,
    allowed_aliases: list[str] | None = _UNSET,
    requests_per_minute: int | None = _UNSET,
    spend_cap_daily_micros: int | None = _UNSET,
    spend_cap_monthly_micros: int | None = _UNSET,
    expires_at: datetime | None = _UNSET,
) -> ApiKey:
    """Change a live key's name, controls or expiry (only the arguments given); raises KeySettingsInvalid. Saved with
    save(), so its post_save records a cache change and every gateway drops the key's record at once."""
    given: dict[str, Any] = {
        k: v
        for k, v in {
            "name": name,
            "allowed_aliases": allowed_aliases,
            "requests_per_minute": requests_per_minute,
            "spend_cap_daily_micros": spend_cap_daily_micros,
            "spend_cap_monthly_micros": spend_cap_monthly_micros,
            "expires_at": expires_at,
        }.items()
        if v is not _UNSET
    }
    with transaction.atomic():
        locked = ApiKey.objects.select_for_update(of=("self",)).select_related("organization__plan").get(pk=api_key.pk)
        if locked.revoked_at is not None:
            raise KeySettingsInvalid({"key": "a revoked key cannot be changed"})
        if "name" in given:
            given["name"] = (given["name"] or "").strip()
            if not given["name"] or len(given["name"]) > 100:
                raise KeySettingsInvalid({"name": "a key needs a name of 1 to 100 characters"})
        if given.get("expires_at") is not None and given["expires_at"] <= timezone.now():
            raise KeySettingsInvalid({"expires_at": "the expiry must be in the future"})
        controls = {f: given.get(f, getattr(locked, f)) for f in _CONTROL_FIELDS}
        if locked.kind == ApiKey.Kind.ADMIN and any(f in given and given[f] for f in _CONTROL_FIELDS):
            raise KeySettingsInvalid({"kind": "an admin key calls no model: it takes no models, rate or spend caps"})
        given.update(
            apikey_settings_clean(
                organization=locked.organization, check=frozenset(f for f in _CONTROL_FIELDS if f in given), **controls
            )
        )
        changed = [f for f, v in given.items() if getattr(locked, f) != v]
        if changed:
            for f in changed:
                setattr(locked, f, given[f])
            locked.save(update_fields=changed)  # post_save records a cache change for this key
            ApiKeyEvent.objects.create(
                api_key=locked,
                action=ApiKeyEvent.Action.UPDATE,
                actor=actor,
                actor_label=actor_label,
                source_ip=source_ip,
                detail=", ".join(sorted(changed))[:500],
            )
    return locked


_CONTROL_FIELDS = ("allowed_aliases", "requests_per_minute", "spend_cap_daily_micros", "spend_cap_monthly_micros")


def apikey_rotate(
    *,
    api_key: ApiKey,
    grace_seconds: int,
    actor: User | None = None,
    actor_label: str = "",
    source_ip: str | None = None,
) -> CreatedKey:
    """A new secret for a key: a new key with the same name, kind, controls and expiry (rotated_from = the old one),
    while the old key keeps working for `grace_seconds` (0 to MAX_ROTATION_GRACE_S; its expiry is brought forward,
    never pushed back). The old key gets a "rotate" event. Raises KeySettingsInvalid for a key that cannot be rotated."""
    if not 0 <= grace_seconds <= MAX_ROTATION_GRACE_S:
        raise KeySettingsInvalid({"grace_seconds": f"must be from 0 to {MAX_ROTATION_GRACE_S} seconds (7 days)"})
    old = ApiKey.objects.select_related("organization__plan").get(pk=api_key.pk)
    if old.status != "active":
        raise KeySettingsInvalid({"key": f"only an active key can be rotated; this one is {old.status}"})
    if ApiKey.objects.filter(rotated_from=old).exists():
        raise KeySettingsInvalid({"key": "this key was rotated already; rotate its replacement"})
    # The replacement is created first (with Unkey, a network call outside any transaction): should the old key's
    # change fail after it, the customer holds two working keys, never none.
    created = apikey_create(
        organization=old.organization,
        name=old.name,
        created_by=actor,
        expires_at=old.expires_at,
        actor_label=actor_label,
        source_ip=source_ip,
        kind=old.kind,
        allowed_aliases=list(old.allowed_aliases),
        requests_per_minute=old.requests_per_minute,
        spend_cap_daily_micros=old.spend_cap_daily_micros,
        spend_cap_monthly_micros=old.spend_cap_monthly_micros,
        rotated_from=old,
        # Copied as they are: a rotation is no time to refuse a setting the organization has since outgrown (a lower
        # plan, a removed model); the admission applies the tighter of the key's and the organization's anyway.
        check_controls=False,
    )
    grace_ends = timezone.now() + timedelta(seconds=grace_seconds)
    with transaction.atomic():
        locked = ApiKey.objects.select_for_update().get(pk=old.pk)
        if locked.expires_at is None or locked.expires_at > grace_ends:
            locked.expires_at = grace_ends
            locked.save(update_fields=["expires_at"])  # post_save records a cache change for this key
        ApiKeyEvent.objects.create(
            api_key=locked,
            action=ApiKeyEvent.Action.ROTATE,
            actor=actor,
            actor_label=actor_label,
            source_ip=source_ip,
            detail=f"replaced by key {created.api_key.pk} ({created.api_key.prefix}); works until {locked.expires_at.isoformat()}",
        )
    return created


def apikey_authenticate_admin(*, raw: str) -> ApiKey | None:
    """The live admin key this raw value is, with its organization, or None for anything else (an API key, a
    revoked, expired or unknown one, a wrong secret, a suspended organization): the callers say nothing about which."""
    public_id = split_admin_key(raw)
    if public_id is None:
        return None
    key = (
        ApiKey.objects.filter(public_id=public_id, kind=ApiKey.Kind.ADMIN, issuer=ApiKey.Issuer.LOCAL)
        .select_related("organization__plan")
        .first()
    )
    if key is None or not hashes_match(raw, key.key_hash) or key.status != "active" or not key.organization.is_active:
        return None
    return key


def apikeys_touch_last_used(*, last_used: dict[int, datetime]) -> None:
    """Record when keys were last used; a plain UPDATE so no cache is invalidated by it."""
    for key_id, when in last_used.items():
        ApiKey.objects.filter(pk=key_id).filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=when)).update(last_used_at=when)


# --- Portal: the playground's internal key -------------------------------------------------------
# Of kind "playground": never listed to customers, never revocable by them; members use it through the portal.

PLAYGROUND_KEY_NAME = "playground"
PLAYGROUND_ACTOR_LABEL = "portal playground (internal key)"


def _playground_keys(organization: Organization) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(
        organization=organization, kind=ApiKey.Kind.PLAYGROUND, revoked_at__isnull=True, expires_at__isnull=True
    ).order_by("created_at", "pk")


def apikey_get_or_create_playground(*, organization: Organization) -> ApiKey:
    """The organization's internal key for the portal playground: its usage is charged like any key's, and its
    raw value is dropped at once (the playground signs in by session, not by key). Raises what apikey_create does."""
    existing = _playground_keys(organization).first()
    if existing is not None:
        return existing
    # No lock around the creation: with Unkey it is a network call. Two first requests at once may make two
    # keys; both then keep the oldest and revoke the rest, so one survives whichever finishes first.
    created = apikey_create(
        organization=organization, name=PLAYGROUND_KEY_NAME, actor_label=PLAYGROUND_ACTOR_LABEL, kind=ApiKey.Kind.PLAYGROUND
    ).api_key
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
