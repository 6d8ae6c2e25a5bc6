"""The ASGI entry point served by daphne: HTTP through Django, WebSockets through channels."""

from __future__ import annotations

import gc
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal_project.settings")

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()

from gateway.asgi import GatewayApplication  # noqa: E402
from gateway.lifecycle import on_server_start  # noqa: E402

on_server_start()

from django.conf import settings  # noqa: E402

from portal_project import twisted_tuning  # noqa: E402
from portal_project.proxies import trusted_proxies  # noqa: E402

twisted_tuning.install(
    max_body_bytes=settings.PORTAL_MAX_BODY_BYTES,
    read_timeout_s=settings.PORTAL_REQUEST_READ_TIMEOUT_S,
    keepalive_s=settings.PORTAL_KEEPALIVE_TIMEOUT_S,
)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

from portal.consumers import UsageFeedConsumer  # noqa: E402

# The client address (and scheme) as our proxies saw it, for everything below: one reading of X-Forwarded-For.
application = trusted_proxies(
    ProtocolTypeRouter(
        {
            "http": GatewayApplication(django_application),
            # The portal's live usage feed, signed in by the session cookie; other origins are refused.
            "websocket": AllowedHostsOriginValidator(
                AuthMiddlewareStack(URLRouter([path("portal/ws/usage", UsageFeedConsumer.as_asgi())]))
            ),
        }
    ),
    count=settings.PORTAL_TRUSTED_PROXY_COUNT,
)

# Everything imported and built so far (Django, the URL resolvers, the apps' modules: ~100k
# objects) lives as long as the process. Out of the collector's sight, a full collection
# scans only what requests leave behind: ~8 ms instead of ~90 ms, which at one connection
# showed as a 40-100 ms stall in one request of every few hundred (bench/README.md).
gc.collect()
gc.freeze()
