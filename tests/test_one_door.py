"""The public API has one door: gateway.asgi.GatewayApplication. Django's URLconf does not route /v1, /health or
/metrics, so nothing (a test included) reaches those views without the fast path's request id, body cap, access
line and disconnect handling."""

from __future__ import annotations

import pytest
from django.urls import Resolver404, resolve

from gateway.asgi import GATEWAY_URLCONF, is_gateway_path


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/models", "/health", "/ready", "/metrics"]
)
def test_the_api_is_routed_by_the_fast_path_only(path: str) -> None:
    assert is_gateway_path(path)
    assert resolve(path, urlconf=GATEWAY_URLCONF).func is not None
    with pytest.raises(Resolver404):
        resolve(path)  # Django's own URLconf (ROOT_URLCONF)


def test_the_portal_is_routed_by_django() -> None:
    assert not is_gateway_path("/portal/")
    assert resolve("/portal/").url_name
