"""Masking secrets wherever an object may be shown: reprs, log lines, Django's debug pages (standard library only)."""

from __future__ import annotations

import re

HIDDEN = "<hidden>"

# scheme://userinfo@ — the userinfo (user, password or a token) goes, the host stays: it is what a reader needs.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s'\"]*)@")


def mask_url_credentials(text: str) -> str:
    """`https://user:secret@router:5010/x` → `https://***@router:5010/x`, anywhere in `text`; other text unchanged."""
    if "@" not in text:  # the common case costs one scan
        return text
    return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}***@", text)
