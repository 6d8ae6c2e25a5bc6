"""Authenticating a /v1 caller from `Authorization: Bearer` or `x-api-key`, from the in-process key cache.

With `PORTAL_KEY_ISSUER=local` a key is checked against its keyed hash in our database. With `unkey` every
key, whatever its format, goes to Unkey's verifyKey (which also applies the key's `requests` rate limit);
keys issued locally before the switch are then unknown to Unkey and refused. A valid answer is cross-checked
against our own row of the key, so a key revoked here or an organization suspended here is refused even
while Unkey still says valid.

A valid answer is reused for `PORTAL_UNKEY_CACHE_TTL_S` (about a second), so a busy key costs one Unkey round
trip a second instead of one per request, and a failed call is retried once within the same deadline. What a
reused answer skips, and what covers it:
- Revocation and suspension here: nothing skipped, the cross-check with our own row runs on every request.
- Revocation, expiry or deletion at Unkey only: seen at the next call, at most one TTL later.
- Unkey's `requests` rate limit: the plan's limits (gateway/limits/) are applied to every request in both modes;
  a reused answer serves at most as many requests as Unkey said remained in the key's tightest window, and the
  requests it served are reported as the cost of the key's next verifyKey, so Unkey's counts stay whole.
- Credits (a key with a limited number of uses): never reused; every use is counted by Unkey.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from apikeys.keys import KEY_PREFIX, hashes_match, split_key
from apikeys.models import ApiKey
from apikeys.selectors import KeyRecord
from apikeys.unkey import RatelimitState, UnkeyError, Verification, unkey_client
from billing.selectors import PlanRecord
from gateway.errors import AuthenticationFailed, AuthUnavailable, GatewayError, PermissionDenied, QuotaExceeded, RateLimited
from gateway.limits import RPM, Admission, LimitState, anthropic_headers, format_duration, openai_headers
from gateway.principal import Principal
from gateway.state import state

log = logging.getLogger("gateway.auth")

UNKEY_RATELIMITS = [{"name": "requests", "cost": 1}]
# Cheap shape check before a network call: our prefix, then at most a few hundred URL-safe characters.
_UNKEY_CANDIDATE_RE = re.compile(rf"^{KEY_PREFIX}_[A-Za-z0-9_-]{{8,250}}$")
USAGE_RETRY_AFTER_S = 60  # Unkey says nothing about when used-up credits come back
WARN_EVERY_S = 10.0
MAX_CACHED_VERIFICATIONS = 10_000  # distinct keys seen within one TTL; past it the oldest entries go
UNREPORTED_KEPT_S = 60.0  # an expired entry's served count waits this long for the key's next verifyKey to report it
MIN_RETRY_S = 0.05  # less time than this left of the deadline: answer 503 rather than a retry that cannot finish


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key the caller sent, or None; Bearer wins over x-api-key when both are present."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    api_key = headers.get("x-api-key")
    if api_key and api_key.strip():
        return api_key.strip()
    if authorization:
        return ""  # present but not a Bearer token: malformed, treated as invalid
    return None


async def authenticate(headers: Mapping[str, str], *, surface: str | None = None) -> Principal:
    """The caller's principal, or a GatewayError. `surface` ("openai"/"anthropic") picks the rate-limit headers of
    a 429 from Unkey; without it both families are sent."""
    raw = presented_key(headers)
    if raw is None:
        raise AuthenticationFailed("missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'")
    if settings.PORTAL_KEY_ISSUER == "unkey":
        return await _authenticate_with_unkey(raw, surface)
    public_id = split_key(raw)
    if public_id is None:
        raise AuthenticationFailed()
    try:
        record = await state.key_record(public_id)
    except DatabaseError:
        # A key this process has not cached yet, and the database is away: a 503 in the caller's shape, never a 500
        # (a cached key keeps being served from memory through the outage).
        raise AuthUnavailable(headers={"retry-after": "5"}) from None
    # One message for unknown, revoked, expired and wrong-secret keys, and keys of another kind: say nothing about which.
    if record is None or not _serves_v1(record) or not hashes_match(raw, record.key_hash) or record.revoked:
        raise AuthenticationFailed()
    if record.expires_at is not None and record.expires_at <= timezone.now():
        raise AuthenticationFailed()
    if not record.organization_active:
        raise PermissionDenied("this organization is suspended", code="account_suspended")
    return await principal_of(record)


def _serves_v1(record: KeyRecord) -> bool:
    """Only API keys call /v1. An admin key (cta_…, which split_key never matches anyway) is for the management API, and
    the playground's key is the portal's own (its raw value was never kept; the playground builds its principal from the
    record): both are refused as an invalid key, whatever the cache holds for their public id."""
    return record.kind == ApiKey.Kind.STANDARD


MAX_CACHED_PRINCIPALS = 10_000
# key id -> (the key record, its plan, its organization's overrides, the principal made of them). The principal
# carries the limiter's per-key work (gateway/limits/layout.py), so it is kept while the three it was made of are
# the very objects the gateway's cache holds: a change to the key, its organization or the plans replaces them
# (gateway/state.py), and the next request makes a new principal.
_principals: dict[int, tuple[KeyRecord, Any, Any, Principal]] = {}


async def principal_of(record: KeyRecord) -> Principal:
    """The principal of an accepted key, the same whichever issuer vouched for it."""
    plan = state.plan(record.plan_id)
    if plan is None and record.plan_id is not None:
        # The key row is fresher than this process's plans: never treat an unknown plan as "no limits".
        plan = await state.plan_fresh(record.plan_id)
        if plan is None:
            raise AuthUnavailable("this key's plan could not be loaded; try again shortly")
    overrides = state.snapshot.model_overrides.get(record.organization_id)
    cached = _principals.get(record.key_id)
    if cached is not None and cached[0] is record and cached[1] is plan and cached[2] is overrides:
        return cached[3]
    principal = _principal(record, plan, overrides)
    if len(_principals) >= MAX_CACHED_PRINCIPALS:
        _principals.clear()
    _principals[record.key_id] = (record, plan, overrides, principal)
    return principal


def _principal(record: KeyRecord, plan: PlanRecord | None, overrides: dict[str, bool] | None) -> Principal:
    return Principal(
        key_id=record.key_id,
        organization_id=record.organization_id,
        organization_slug=record.organization_slug,
        plan=plan,
        model_overrides=overrides,
        key_kind=record.kind,
        key_aliases=record.allowed_aliases,
        key_requests_per_minute=record.requests_per_minute,
        key_spend_cap_daily_micros=record.spend_cap_daily_micros,
        key_spend_cap_monthly_micros=record.spend_cap_monthly_micros,
        org_spend_cap_daily_micros=record.organization_spend_cap_daily_micros,
        org_spend_cap_monthly_micros=record.organization_spend_cap_monthly_micros,
    )


# --- Unkey -----------------------------------------------------------------------------------------


class _WarningThrottle:
    """While Unkey is failing, one warning per kind of failure per interval, with the count of those not logged."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def warn(self, exc: UnkeyError) -> None:
        now = time.monotonic()
        kind = exc.reason
        if now - self.last.get(kind, -math.inf) < WARN_EVERY_S:
            self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
            return
        if len(self.last) > 100:  # reasons are a small fixed set; this only bounds the unexpected
            self.last, self.suppressed = {}, {}
        skipped = self.suppressed.pop(kind, 0)
        self.last[kind] = now
        more = f" ({skipped} more since the last such warning)" if skipped else ""
        log.warning("API key verification unavailable, answering 503: %s%s", exc, more)


_unkey_warnings = _WarningThrottle()


class VerificationCache:
    """Valid verifyKey answers for a short while, by a keyed hash of the presented key.

    The hash's key is random per process, so what is held is useless outside it, and the raw key is never kept.
    All entries share one TTL, so insertion order is expiry order: long-expired entries are swept from the front,
    and when the cache is full the oldest go first.
    """

    __slots__ = ("_secret", "_entries", "max_entries")

    def __init__(self, max_entries: int = MAX_CACHED_VERIFICATIONS) -> None:
        self._secret = secrets.token_bytes(32)
        # digest -> [expires at (monotonic), uses left, uses served (not yet reported to Unkey), the answer]
        self._entries: dict[bytes, list[Any]] = {}
        self.max_entries = max_entries

    def digest(self, raw: str) -> bytes:
        return hashlib.blake2b(raw.encode(), key=self._secret, digest_size=20).digest()

    def take(self, digest: bytes, now: float) -> Verification | None:
        """The cached answer, counting one use of it; None when there is none, it expired or its uses ran out."""
        entry = self._entries.get(digest)
        if entry is None or entry[0] <= now or entry[1] <= 0:
            return None
        entry[1] -= 1
        entry[2] += 1
        return entry[3]

    def drop(self, digest: bytes) -> int:
        """Forget the key's entry; how many requests it served, which Unkey has not counted yet."""
        entry = self._entries.pop(digest, None)
        return 0 if entry is None else entry[2]

    def put(self, digest: bytes, verification: Verification, *, now: float, ttl_s: float) -> None:
        if verification.credits is not None:
            return  # a key with limited uses: every use must reach Unkey, which counts it
        # Unkey's rate limits ran on this call; reused, the answer serves no more requests than the tightest window
        # had left (the plan's own limits run on every request regardless).
        uses = min((s.remaining for s in verification.ratelimits), default=1 << 30)
        if verification.expires_ms is not None:
            ttl_s = min(ttl_s, verification.expires_ms / 1000 - time.time())
        if uses <= 0 or ttl_s <= 0:
            return
        entries = self._entries
        entries.pop(digest, None)
        if len(entries) >= self.max_entries:
            for old in list(itertools.islice(entries, max(1, len(entries) // 10))):  # a tenth at a time: amortized
                del entries[old]
        entries[digest] = [now + ttl_s, uses, 0, verification]
        self._sweep(now)

    def _sweep(self, now: float) -> None:
        # Expired entries stay a while for their served count (a busy key's next request reports it); a few swept
        # per insert keeps the dict near the number of keys seen in that while.
        entries = self._entries
        for old, entry in list(itertools.islice(entries.items(), 8)):  # not a copy of the whole dict per insert
            if entry[0] > now - UNREPORTED_KEPT_S:
                break
            del entries[old]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


verification_cache = VerificationCache()


async def verify_with_unkey(raw: str, *, cost: int = 1) -> Verification:
    """verifyKey, retried once on a broken connection or a 5xx when time is left of the one deadline both attempts
    share (PORTAL_UNKEY_TIMEOUT_MS): a single hiccup of Unkey's is not a 503 for the customer. `cost` counts this
    request and those served from the cache since the key's last call."""
    client = unkey_client()
    ratelimits = UNKEY_RATELIMITS if cost == 1 else [{"name": "requests", "cost": cost}]
    deadline = time.monotonic() + client.timeout_s
    try:
        return await client.verify_key(raw, ratelimits=ratelimits)
    except UnkeyError as exc:
        left = deadline - time.monotonic()
        if not exc.transient or left < MIN_RETRY_S:
            raise
        log.info("Unkey verifyKey failed (%s); retrying once", exc.reason)
    return await client.verify_key(raw, ratelimits=ratelimits, timeout_s=left)


async def _authenticate_with_unkey(raw: str, surface: str | None) -> Principal:
    if not _UNKEY_CANDIDATE_RE.match(raw):
        raise AuthenticationFailed()
    ttl_s = settings.PORTAL_UNKEY_CACHE_TTL_S
    now = time.monotonic()
    digest = verification_cache.digest(raw) if ttl_s > 0 else b""
    verification = verification_cache.take(digest, now) if ttl_s > 0 else None
    if verification is None:
        served = verification_cache.drop(digest) if ttl_s > 0 else 0
        try:
            verification = await verify_with_unkey(raw, cost=1 + served)
        except UnkeyError as exc:
            _unkey_warnings.warn(exc)
            raise AuthUnavailable(headers={"retry-after": "1"}) from None
        refusal = unkey_refusal(verification, surface=surface)
        if refusal is not None:
            raise refusal  # refusals are never cached: the next request asks again
        if ttl_s > 0:
            verification_cache.put(digest, verification, now=time.monotonic(), ttl_s=ttl_s)
    assert verification.key_id is not None  # parse_verification insists on it for a valid answer
    record = await state.unkey_key_record(verification.key_id)
    if record is None or not _serves_v1(record) or record.revoked:
        raise AuthenticationFailed()
    if record.expires_at is not None and record.expires_at <= timezone.now():
        raise AuthenticationFailed()
    if not _meta_matches(verification.meta, record):
        log.warning("Unkey key %s: meta does not match our row %d; refused", verification.key_id, record.key_id)
        raise AuthenticationFailed()
    if not record.organization_active:
        raise PermissionDenied("this organization is suspended", code="account_suspended")
    return await principal_of(record)


def _meta_matches(meta: dict[str, Any], record: KeyRecord) -> bool:
    # The organization is ours to say (the row found by Unkey's keyId); meta, written when we created the key,
    # must agree. A mismatch means a key of another deployment sharing the Unkey API, or a tampered key.
    return meta.get("organizationId") == record.organization_id and meta.get("apiKeyId") == record.key_id


def unkey_refusal(verification: Verification, *, surface: str | None = None, now: float | None = None) -> GatewayError | None:
    """The error a verifyKey answer means, or None when it is VALID. Pure: tested without Unkey."""
    code = verification.code
    if verification.valid and code == "VALID":
        return None
    if code == "RATE_LIMITED":
        return _rate_limited(verification, surface=surface, now=time.time() if now is None else now)
    if code == "USAGE_EXCEEDED":
        return QuotaExceeded(
            "this API key has used up its allowance",
            details={"limit": "credits", "scope": "key"},
            headers={"retry-after": str(USAGE_RETRY_AFTER_S)},
        )
    if code in ("FORBIDDEN", "INSUFFICIENT_PERMISSIONS"):
        return PermissionDenied("this API key is not allowed to make this request", code="permission_denied")
    if code not in ("NOT_FOUND", "DISABLED", "EXPIRED"):
        log.warning("Unkey answered verifyKey with code %r (valid=%s); refused as an invalid key", code[:40], verification.valid)
    # One message for unknown, disabled and expired keys, as in local mode.
    return AuthenticationFailed()


def _rate_limited(verification: Verification, *, surface: str | None, now: float) -> RateLimited:
    hit = _binding_ratelimit(verification.ratelimits)
    if hit is None:
        return RateLimited("API key rate limit reached", headers={"retry-after": "1"})
    reset_at = hit.reset_ms / 1000
    retry_after = max(1, math.ceil(reset_at - now))
    state_ = LimitState(limit=hit.limit, remaining=hit.remaining, reset_seconds=retry_after, reset_at=reset_at)
    admission = Admission(request_id="", surface=surface or "openai", now=now, requests=state_, tokens=None)
    if surface is None:
        headers = {**openai_headers(admission), **anthropic_headers(admission)}
    else:
        headers = admission.headers()
    per = f" per {format_duration(hit.duration_ms // 1000)}" if hit.duration_ms else ""
    return RateLimited(
        f"API key requests limit of {hit.limit}{per} reached; resets in {format_duration(retry_after)}",
        details={
            "limit": RPM if hit.name == "requests" else hit.name,
            "scope": "key",
            "limit_value": hit.limit,
            "reset_seconds": retry_after,
        },
        headers={"retry-after": str(retry_after), **headers},
    )


def _binding_ratelimit(states: tuple[RatelimitState, ...]) -> RatelimitState | None:
    """The exceeded limit that resets last (retrying before it resets fails again); else the tightest one."""
    exceeded = [s for s in states if s.exceeded]
    if exceeded:
        return max(exceeded, key=lambda s: s.reset_ms)
    return min(states, key=lambda s: (s.remaining, -s.reset_ms), default=None)
