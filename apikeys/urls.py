"""Portal routes for API keys and the quickstart (included by portal_project.portal_urls under /portal/)."""

from __future__ import annotations

from django.urls import path

from apikeys import views

urlpatterns = [
    path("api-keys", views.ApiKeyCollection.as_view(), name="api-keys"),
    path("api-keys/<int:key_id>", views.ApiKeyDetail.as_view(), name="api-key"),
    path("api-keys/<int:key_id>/revoke", views.api_key_revoke_page, name="api-key-revoke"),
    path("docs", views.docs_page, name="docs"),
]
