"""Routes of the public API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.urls import path, re_path
from django.urls.resolvers import RoutePattern

from gateway import views

urlpatterns = [
    path("health", views.health),
    path("ready", views.ready),
    path("metrics", views.metrics_view),
    path("v1/models", views.list_models),
    path("v1/models/<path:alias>", views.retrieve_model),
    path("v1/chat/completions", views.chat_completions),
    path("v1/completions", views.completions),
    path("v1/messages", views.messages),
    path("v1/messages/count_tokens", views.count_tokens),
    path("v1/responses", views.responses),
    path("v1/responses/<str:response_id>", views.response_detail),
    re_path(r"^v1/.*$", views.not_found),
]


def _exact_routes() -> dict[str, Callable[..., Any]]:
    """The routes without a converter, by their whole path (what `resolve()` would match them to): gateway/asgi.py
    looks a request's path up here first, and asks `resolve()` only for the others (`/v1/models/<alias>` ...).
    A route an earlier pattern would take first is left out, so the lookup never answers otherwise than resolve()."""
    exact: dict[str, Callable[..., Any]] = {}
    for index, entry in enumerate(urlpatterns):
        pattern = entry.pattern
        if isinstance(pattern, RoutePattern) and not pattern.converters:
            route = str(pattern)
            if not any(earlier.pattern.match(route) for earlier in urlpatterns[:index]):
                exact["/" + route] = entry.callback
    return exact


EXACT_ROUTES = _exact_routes()
