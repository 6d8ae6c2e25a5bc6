"""Authenticating a /v1 caller from `Authorization: Bearer` or `x-api-key`, from the in-process key cache.

With `PORTAL_KEY_ISSUER=local` a key is checked against its keyed hash in our database. With `unkey` every
key, whatever its format, goes to Unkey's verifyKey (which also applies the key's `requests` rate limit);
keys issued locally before the switch are then unknown to Unkey and refused. A valid answer is cross-checked
against our own row of the key, so a key revoked here or an organization suspended here is refused even
while Unkey still says valid.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.utils import timezone

from apikeys.keys import KEY_PREFIX, hashes_match, split_key
from apikeys.selectors import KeyRecord
from apikeys.unkey import RatelimitState, UnkeyError, Verification, unkey_client
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
    record = await state.key_record(public_id)
    # One message for unknown, revoked, expired and wrong-secret keys: say nothing about which.
    if record is None or not hashes_match(raw, record.key_hash) or record.revoked:
        raise AuthenticationFailed()
    if record.expires_at is not None and record.expires_at <= timezone.now():
        raise AuthenticationFailed()
    if not record.organization_active:
        raise PermissionDenied("this organization is suspended", code="account_suspended")
    return await principal_of(record)


async def principal_of(record: KeyRecord) -> Principal:
    """The principal of an accepted key, the same whichever issuer vouched for it."""
    plan = state.plan(record.plan_id)
    if plan is None and record.plan_id is not None:
        # The key row is fresher than this process's plans: never treat an unknown plan as "no limits".
        plan = await state.plan_fresh(record.plan_id)
        if plan is None:
            raise AuthUnavailable("this key's plan could not be loaded; try again shortly")
    return Principal(
        key_id=record.key_id,
        organization_id=record.organization_id,
        organization_slug=record.organization_slug,
        plan=plan,
        model_overrides=state.snapshot.model_overrides.get(record.organization_id),
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


async def _authenticate_with_unkey(raw: str, surface: str | None) -> Principal:
    if not _UNKEY_CANDIDATE_RE.match(raw):
        raise AuthenticationFailed()
    try:
        verification = await unkey_client().verify_key(raw, ratelimits=UNKEY_RATELIMITS)
    except UnkeyError as exc:
        _unkey_warnings.warn(exc)
        raise AuthUnavailable(headers={"retry-after": "1"}) from None
    refusal = unkey_refusal(verification, surface=surface)
    if refusal is not None:
        raise refusal
    assert verification.key_id is not None  # parse_verification insists on it for a valid answer
    record = await state.unkey_key_record(verification.key_id)
    if record is None or record.revoked:
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
            "this API key has used up its allowance", details={"limit": "credits", "scope": "key"},
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
