"""The client's address as our own proxies saw it: the one place X-Forwarded-For is read, for HTTP and WebSocket alike.

Behind proxies that append to X-Forwarded-For, only the entries they appended can be believed: the
left-most ones are whatever the client sent. With PORTAL_TRUSTED_PROXY_COUNT = N (every request passes
through exactly N proxies of ours), the client is the N-th address from the right; with 0 (the default)
the header is ignored and the client is the peer of the TCP connection. The ASGI middleware below puts
that address in `scope["client"]` (and X-Forwarded-Proto, read the same way, in `scope["scheme"]`)
before anything else runs, so everything downstream reads one value: Django's REMOTE_ADDR (sign-in and
sign-up rate limits, key and account audit rows, allauth's sessions, whose own
ALLAUTH_TRUSTED_PROXY_COUNT must stay 0), the request log rows and the access log. daphne must run
without --proxy-headers (its reading takes the left-most entry; portal_project/twisted_tuning.py turns it
off if given).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any


def _address(entry: bytes) -> str | None:
    """A canonical IP address out of one X-Forwarded-For entry (`1.2.3.4`, `1.2.3.4:5678`, `[::1]:80`, `::1`), else None."""
    text = entry.strip().decode("ascii", "replace")
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _trusted_entry(values: Iterable[bytes], count: int) -> bytes | None:
    entries = b",".join(values).split(b",")
    # Fewer entries than proxies: the request skipped an outer proxy, and each entry there was still written by one of ours.
    return entries[-min(count, len(entries))] if entries else None


def client_from_forwarded(values: Iterable[bytes] | None, peer: str | None, *, count: int | None = None) -> str | None:
    """The client address: the `count`-th X-Forwarded-For entry from the right, or the peer when not trusted/usable."""
    if count is None:
        from django.conf import settings

        count = settings.PORTAL_TRUSTED_PROXY_COUNT
    if not count or not values:
        return peer
    entry = _trusted_entry(values, count)
    return (_address(entry) if entry is not None else None) or peer


class TrustedProxies:
    """ASGI middleware: `scope["client"]` and `scope["scheme"]` as our proxies saw the client."""

    def __init__(self, app: Any, *, count: int) -> None:
        self.app = app
        self.count = count

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            forwarded: list[bytes] = []
            protos: list[bytes] = []
            for name, value in scope.get("headers", ()):
                if name == b"x-forwarded-for":
                    forwarded.append(value)
                elif name == b"x-forwarded-proto":
                    protos.append(value)
            if forwarded:
                peer = scope.get("client")
                client = client_from_forwarded(forwarded, peer[0] if peer else None, count=self.count)
                if client is not None and (peer is None or client != peer[0]):
                    scope["client"] = [client, 0]
            if protos:
                proto = (_trusted_entry(protos, self.count) or b"").strip().lower()
                if proto in (b"http", b"https"):
                    secure = proto == b"https"
                    scope["scheme"] = ("wss" if secure else "ws") if kind == "websocket" else ("https" if secure else "http")
        await self.app(scope, receive, send)


def trusted_proxies(app: Any, *, count: int) -> Any:
    """`app` behind the middleware when proxies are trusted; `app` itself when not (nothing to read, nothing to pay)."""
    return TrustedProxies(app, count=count) if count > 0 else app


def check_https_behind_proxies(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """`manage.py check --deploy`: an HTTPS redirect with no trusted proxy loops behind a load balancer that ends TLS."""
    from django.conf import settings
    from django.core.checks import Warning as CheckWarning

    if settings.SECURE_SSL_REDIRECT and settings.PORTAL_TRUSTED_PROXY_COUNT == 0:
        return [
            CheckWarning(
                "SECURE_SSL_REDIRECT is on but PORTAL_TRUSTED_PROXY_COUNT is 0: behind a load balancer that ends TLS every "
                "request looks like plain HTTP and is redirected for ever.",
                hint="Set PORTAL_TRUSTED_PROXY_COUNT to the number of proxies in front (1 for one nginx or ALB), or "
                "SECURE_SSL_REDIRECT=0 when TLS ends at daphne itself.",
                id="portal.W001",
            )
        ]
    return []


def client_ip(request: Any) -> str | None:
    """The client's address for audit rows (a Django request): REMOTE_ADDR, which the middleware above already took
    from X-Forwarded-For as far as our proxies are trusted. Never read X-Forwarded-For there: its left-most entries are
    the client's to forge. Here, in a leaf module, so the admin and the portal read it alike."""
    return request.META.get("REMOTE_ADDR") or None
