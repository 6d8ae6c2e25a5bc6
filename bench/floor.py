"""The floor for this stack: a bare Django async view under daphne that proxies to the router (no auth, limits or usage).

Served with `daphne bench.floor:application`; `FLOOR_UPSTREAM` is the router URL to post to.
It goes through Django's own ASGIHandler with no middleware, and the same httpx
client on the aiohttp transport the gateway uses.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal_project.settings")

import django  # noqa: E402
from django.conf import settings  # noqa: E402

django.setup()
settings.ROOT_URLCONF = __name__
settings.MIDDLEWARE = []

import httpx  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from httpx_aiohttp import AiohttpTransport  # noqa: E402

UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:5010/api/v3/completions/101")
_client: httpx.AsyncClient | None = None


@csrf_exempt
async def passthrough(request: HttpRequest) -> HttpResponse:
    global _client
    if _client is None:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
        _client = httpx.AsyncClient(transport=AiohttpTransport(limits=limits, trust_env=False), timeout=30)
    body = b'{"prompt":"<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\n","max_tokens":16,"stream":false}'
    upstream = await _client.post(UPSTREAM, content=body, headers={"content-type": "application/json"})
    return HttpResponse(upstream.content, status=upstream.status_code, content_type="application/json")


urlpatterns = [path("v1/chat/completions", passthrough)]
application = ASGIHandler()
