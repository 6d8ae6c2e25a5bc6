"""gateway/asgi.py's own request object and route table answer as Django's ASGIRequest and resolve() would."""

from __future__ import annotations

import io

import pytest
from django.core.handlers.asgi import ASGIRequest
from django.urls import resolve

from gateway.asgi import GATEWAY_URLCONF, GatewayRequest
from gateway.urls import EXACT_ROUTES


def scope(path: str = "/v1/chat/completions", query: bytes = b"") -> dict:
    return {
        "type": "http",
        "method": "post",
        "scheme": "https",
        "path": path,
        "root_path": "",
        "query_string": query,
        "headers": [
            (b"host", b"gw.example"),
            (b"content-length", b"2"),
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer sk-test"),
            (b"x-forwarded-for", b"10.0.0.1"),
            (b"x-forwarded-for", b"10.0.0.2"),  # repeated: joined with a comma
            (b"x_spoofed", b"dropped"),  # an underscore: dropped, as Django does
            (b"user-agent", "caf\u00e9".encode("latin1")),
        ],
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 8000),
    }


def test_the_request_reads_as_an_asgi_request_does() -> None:
    ours = GatewayRequest(scope(query=b"stream=true&limit=3"), b"{}")
    django = ASGIRequest(scope(query=b"stream=true&limit=3"), io.BytesIO(b"{}"))
    assert ours.META == django.META
    assert dict(ours.headers) == dict(django.headers)
    assert ours.headers.get("Authorization") == ours.headers.get("authorization") == "Bearer sk-test"
    assert (ours.method, ours.path, ours.path_info, ours.body) == (django.method, django.path, django.path_info, b"{}")
    assert ours.GET.dict() == django.GET.dict() == {"stream": "true", "limit": "3"}
    assert ours.scheme == django.scheme == "https"
    assert ours.COOKIES == {}


# The routes without a converter in gateway/urls.py: each one is looked up in EXACT_ROUTES, not resolved.
FIXED_PATHS = (
    "/health",
    "/ready",
    "/metrics",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
)


@pytest.mark.parametrize("path", FIXED_PATHS)
def test_every_exact_route_is_the_view_resolve_finds(path: str) -> None:
    assert EXACT_ROUTES[path] is resolve(path, urlconf=GATEWAY_URLCONF).func


def test_patterned_routes_are_left_to_resolve() -> None:
    assert set(EXACT_ROUTES) == set(FIXED_PATHS)
    assert "/v1/models/oss-20b" not in EXACT_ROUTES and "/v1/responses/resp_1" not in EXACT_ROUTES
