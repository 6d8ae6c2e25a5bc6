"""Template filters of the portal pages."""

from __future__ import annotations

import functools
import hashlib
import os
import re
from datetime import datetime

from django import template
from django.conf import settings
from django.contrib.staticfiles.storage import ManifestFilesMixin, staticfiles_storage
from django.urls import reverse
from django.utils import timezone
from django.utils.timesince import timesince

register = template.Library()
ASSETS = settings.BASE_DIR / "static" / "portal"


@register.filter
def num(value: object) -> str:
    """An integer with thousands separators (1,075,461); anything else as it is."""
    try:
        return f"{int(value):,}"  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return str(value)


@register.filter
def percent(part: object, whole: object) -> int:
    """part of whole as a whole percentage in 0..100, for bar widths."""
    try:
        total = float(whole)  # type: ignore[arg-type]
        return max(0, min(100, round(100 * float(part) / total))) if total else 0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


@register.filter
def ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    if (timezone.now() - value).total_seconds() < 60:
        return "just now"
    return f"{timesince(value).split(',')[0]} ago"


_BROWSERS = (
    ("Edg/", "Edge"),
    ("OPR/", "Opera"),
    ("Firefox/", "Firefox"),
    ("Chrome/", "Chrome"),
    ("Chromium/", "Chromium"),
    ("Safari/", "Safari"),
    ("curl/", "curl"),
    ("python-httpx", "httpx"),
    ("python-requests", "requests"),
)
_SYSTEMS = (
    ("Android", "Android"),
    ("iPhone", "iPhone"),
    ("iPad", "iPad"),
    ("Windows", "Windows"),
    ("Mac OS X", "macOS"),
    ("CrOS", "ChromeOS"),
    ("Linux", "Linux"),
)


@register.filter
def browser(user_agent: str) -> str:
    """'Chrome on macOS' from a User-Agent header; the header itself when it names nothing we know."""
    name = next((label for needle, label in _BROWSERS if needle in user_agent), "")
    system = next((label for needle, label in _SYSTEMS if needle in user_agent), "")
    if "Headless" in user_agent and name:
        name = f"Headless {name}"
    if name and system:
        return f"{name} on {system}"
    return name or system or re.sub(r"\s+", " ", user_agent)[:60] or "Unknown browser"


@functools.lru_cache(maxsize=32)
def _asset_version(name: str, mtime_ns: int) -> str:
    with open(os.path.join(ASSETS, name), "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()[:12]


@register.simple_tag
def asset(name: str) -> str:
    """The URL of a file in static/portal/, versioned by its content, so browsers may keep it for good."""
    name = "".join([name])  # a plain str: template literals arrive as SafeString, which pathlib and lru_cache mind
    if isinstance(staticfiles_storage, ManifestFilesMixin):
        # Production: collectstatic's content-hashed name, which WhiteNoise serves (and nginx caches) as immutable.
        return staticfiles_storage.url(f"portal/{name}")
    # DEBUG and the test suite (no collectstatic): served by the app from static/portal/, the hash in the query.
    mtime_ns = os.stat(os.path.join(ASSETS, name)).st_mtime_ns
    return f"{reverse('portal:asset', args=[name])}?v={_asset_version(name, mtime_ns)}"


@register.simple_tag(takes_context=True)
def unverified_address(context: template.Context) -> str:
    """The address this session's new account waits to confirm (the verification page), or ""."""
    from portal.views.verification import unverified_account

    request = context.get("request")
    pending = unverified_account(request) if request is not None else None
    return pending[1].email if pending is not None else ""


@register.filter
def sentence_case(label: object) -> str:
    """allauth's labels in the portal's wording: "Remember Me" → "Remember me", "New Password (again)" → "New password
    (again)"; the first letter stays, the rest of each word's capital goes, a trailing colon too."""
    text = str(label).strip().rstrip(":")
    words = text.split(" ")
    return " ".join([words[0], *(w.lower() if w[:1].isupper() and w[1:].islower() else w for w in words[1:])])
