"""The project's routes plus /crash: a view holding what a gateway frame holds (router config, routes, keys) when it
raises, so that Django's DEBUG 500 page renders them exactly as it would a real crash."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path

from apikeys.unkey import UnkeyClient
from portal_project.urls import urlpatterns as project_urlpatterns
from routerpools.models import RouterEndpoint
from routerpools.selectors import routing_table


def crash(request: HttpRequest) -> HttpResponse:
    config = settings.PORTAL_ROUTER_ENV  # noqa: F841
    route = routing_table()[settings.PORTAL_DEFAULT_MODEL]
    upstream = route.upstreams[-1]
    endpoint = RouterEndpoint.objects.first()  # noqa: F841
    unkey = UnkeyClient(  # noqa: F841
        root_key=settings.PORTAL_UNKEY_ROOT_KEY, api_id="api_test", base_url=settings.PORTAL_UNKEY_BASE_URL, timeout_s=1
    )
    # As gateway/upstream.py builds them for a router call.
    headers = {"content-type": "application/json", "authorization": f"Bearer {upstream.auth_key}"}  # noqa: F841
    url = f"{upstream.base_url}/api/v3/completions/{upstream.session_id}"  # noqa: F841
    raise RuntimeError(f"the router at {upstream.label} refused the request")


urlpatterns = [path("crash", crash), *project_urlpatterns]
