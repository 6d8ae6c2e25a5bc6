"""Routes of the public API."""

from __future__ import annotations

from django.urls import path, re_path

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
