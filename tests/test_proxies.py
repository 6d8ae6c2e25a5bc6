"""The client's address from X-Forwarded-For (portal_project/proxies.py): only what our own proxies appended is believed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from portal_project.proxies import TrustedProxies, client_from_forwarded, trusted_proxies

PEER = "10.0.0.9"  # the load balancer, as the TCP peer of the gateway


@pytest.mark.parametrize(
    ("values", "count", "expected"),
    [
        ([b"203.0.113.5"], 1, "203.0.113.5"),
        ([b"6.6.6.6, 203.0.113.5"], 1, "203.0.113.5"),  # the left-most entry is whatever the client sent
        ([b"6.6.6.6", b"203.0.113.5"], 1, "203.0.113.5"),  # two headers are one list
        ([b"6.6.6.6, 203.0.113.5, 198.51.100.1"], 2, "203.0.113.5"),  # a CDN, then our load balancer
        ([b"203.0.113.5"], 2, "203.0.113.5"),  # skipped the outer proxy: the one entry is still ours
        ([b"6.6.6.6, 203.0.113.5"], 0, PEER),  # nothing trusted: the header is ignored
        ([b"6.6.6.6, not-an-address"], 1, PEER),  # garbage where our proxy writes: never stored as an address
        ([b"6.6.6.6, 203.0.113.5:4711"], 1, "203.0.113.5"),
        ([b"6.6.6.6, [2001:db8::1]:443"], 1, "2001:db8::1"),
        ([b"6.6.6.6, 2001:DB8:0::1"], 1, "2001:db8::1"),
        ([b"6.6.6.6, "], 1, PEER),
        ([], 1, PEER),
        (None, 1, PEER),
    ],
)
def test_the_client_is_the_entry_our_proxies_added(values: list[bytes] | None, count: int, expected: str) -> None:
    assert client_from_forwarded(values, PEER, count=count) == expected


def scope_of(kind: str, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    scheme = "ws" if kind == "websocket" else "http"
    return {"type": kind, "scheme": scheme, "client": [PEER, 51000], "headers": list(headers), "path": "/"}


@pytest.mark.parametrize("kind", ["http", "websocket"])
def test_the_middleware_rewrites_client_and_scheme_for_http_and_websockets(kind: str) -> None:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope)

    scope = scope_of(kind, (b"x-forwarded-for", b"6.6.6.6, 203.0.113.5"), (b"x-forwarded-proto", b"https"))
    asyncio.run(trusted_proxies(app, count=1)(scope, None, None))
    assert seen["client"] == ["203.0.113.5", 0]
    assert seen["scheme"] == ("wss" if kind == "websocket" else "https")


def test_a_forwarded_scheme_other_than_http_or_https_is_ignored() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope)

    asyncio.run(trusted_proxies(app, count=1)(scope_of("http", (b"x-forwarded-proto", b"javascript")), None, None))
    assert seen["scheme"] == "http" and seen["client"] == [PEER, 51000]


def test_without_trusted_proxies_there_is_no_middleware_at_all() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return None

    assert trusted_proxies(app, count=0) is app
    assert isinstance(trusted_proxies(app, count=1), TrustedProxies)


def test_lifespan_and_other_scopes_pass_untouched() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope)

    asyncio.run(trusted_proxies(app, count=1)({"type": "lifespan"}, None, None))
    assert seen == {"type": "lifespan"}
