"""Portal routes for billing (included by portal_project.portal_urls under /portal/)."""

from __future__ import annotations

from django.urls import path

from billing import views

urlpatterns = [
    path("billing", views.billing_page, name="billing"),
]
