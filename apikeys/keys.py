"""The key formats and their keyed hash: API keys ctr_<public id>_<secret>, organization admin keys
cta_<public id>_<secret> (the management API only: /v1 never matches their prefix); stored as HMAC-SHA256 with the pepper."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from django.conf import settings

KEY_PREFIX = "ctr"
ADMIN_KEY_PREFIX = "cta"  # a distinct visible prefix: an admin key is told from an API key at a glance, and by /v1
PUBLIC_ID_BYTES = 6  # 12 hex characters: enough to find a row, meaningless on its own
SECRET_BYTES = 32
_KEY_RE = re.compile(r"^ctr_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_ADMIN_KEY_RE = re.compile(r"^cta_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class NewKey:
    raw: str = field(repr=False)  # never in a log line or a traceback
    public_id: str
    prefix: str
    key_hash: str
    last_four: str


def hash_key(raw: str, *, pepper: str | None = None) -> str:
    secret = (pepper or settings.PORTAL_API_KEY_PEPPER).encode()
    return hmac.new(secret, raw.encode(), hashlib.sha256).hexdigest()


def generate_key(*, prefix: str = KEY_PREFIX) -> NewKey:
    public_id = secrets.token_hex(PUBLIC_ID_BYTES)
    secret = secrets.token_urlsafe(SECRET_BYTES)  # 43 characters
    raw = f"{prefix}_{public_id}_{secret}"
    return NewKey(raw=raw, public_id=public_id, prefix=f"{prefix}_{public_id}", key_hash=hash_key(raw), last_four=raw[-4:])


def split_key(raw: str) -> str | None:
    """The public id of a well-formed key, or None; says nothing about whether it is valid."""
    match = _KEY_RE.match(raw)
    return match.group(1) if match else None


def split_admin_key(raw: str) -> str | None:
    """The public id of a well-formed admin key (cta_…), or None."""
    match = _ADMIN_KEY_RE.match(raw)
    return match.group(1) if match else None


def hashes_match(raw: str, stored_hash: str, *, pepper: str | None = None) -> bool:
    return hmac.compare_digest(hash_key(raw, pepper=pepper), stored_hash)
