"""Portal routes for usage (included by portal_project.portal_urls under /portal/)."""

from __future__ import annotations

from django.urls import path

from usage import views

urlpatterns = [
    path("usage", views.usage_page, name="usage"),
    path("usage-summary", views.UsageSummaryAPI.as_view(), name="usage-summary"),
]
