"""In-process calls to the public API through the door production uses: gateway.asgi.GatewayApplication (the /v1 fast
path in front of Django's ASGI handler), driven by httpx's ASGI transport on the caller's event loop."""

from __future__ import annotations

import httpx
from django.core.asgi import get_asgi_application

from gateway.asgi import GatewayApplication


def gateway_client() -> httpx.AsyncClient:
    """An httpx client whose requests enter the gateway as daphne's would; close it with `aclose()`."""
    app = GatewayApplication(get_asgi_application())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
