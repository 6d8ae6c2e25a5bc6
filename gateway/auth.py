"""Authenticating a /v1 caller from `Authorization: Bearer` or `x-api-key`, from the in-process key cache."""

from __future__ import annotations

from dataclasses import dataclass

from django.utils import timezone

from apikeys.keys import hashes_match, split_key
from billing.selectors import PlanRecord
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.state import state


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: int
    organization_id: int
    organization_slug: str
    plan: PlanRecord | None
    model_overrides: dict[str, bool] | None = None  # the organization's exceptions to its plan's list

    def may_use(self, alias: str) -> bool:
        if self.model_overrides and alias in self.model_overrides:
            return self.model_overrides[alias]
        allowed = self.plan.allowed_aliases if self.plan else None
        return allowed is None or alias in allowed


def presented_key(headers: dict[str, str] | object) -> str | None:
    """The key the caller sent, or None; Bearer wins over x-api-key when both are present."""
    authorization = headers.get("authorization")  # type: ignore[attr-defined]
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    api_key = headers.get("x-api-key")  # type: ignore[attr-defined]
    if api_key and api_key.strip():
        return api_key.strip()
    if authorization:
        return ""  # present but not a Bearer token: malformed, treated as invalid
    return None


async def authenticate(headers: object) -> Principal:
    raw = presented_key(headers)
    if raw is None:
        raise AuthenticationFailed("missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'")
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
    return Principal(
        key_id=record.key_id,
        organization_id=record.organization_id,
        organization_slug=record.organization_slug,
        plan=state.plan(record.plan_id),
        model_overrides=state.snapshot.model_overrides.get(record.organization_id),
    )
