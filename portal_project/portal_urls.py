"""The customer portal under /portal/: pages for browsers, the JSON management API, its OpenAPI schema, assets."""

from __future__ import annotations

from django.conf import settings
from django.urls import path
from django.views.decorators.cache import cache_control
from drf_spectacular.views import SpectacularAPIView

from accounts import urls as accounts_urls
from apikeys import urls as apikeys_urls
from billing import urls as billing_urls
from portal_project import playground
from portal_project.security import serve_asset
from usage import urls as usage_urls

app_name = "portal"

urlpatterns = [
    *accounts_urls.urlpatterns,
    *apikeys_urls.urlpatterns,
    *usage_urls.urlpatterns,
    *billing_urls.urlpatterns,
    path("playground", playground.playground_page, name="playground"),
    path("playground/chat/completions", playground.playground_completion, name="playground-completion"),
    path("api/schema", SpectacularAPIView.as_view(), name="api-schema"),
    # The portal's CSS and JS, served by the app itself so one daphne process is a whole deployment; the pages
    # link them with a content hash (portal_tags.asset), so they may be cached for good.
    path(
        "assets/<path:path>",
        cache_control(public=True, max_age=31_536_000, immutable=True)(serve_asset),
        {"document_root": settings.BASE_DIR / "static" / "portal"},
        name="asset",
    ),
]
