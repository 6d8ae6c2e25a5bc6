"""Django's routes: the admin, sign-in and the portal.

The public API (/v1, /health, /metrics) is not here: gateway.asgi.GatewayApplication serves it in front of Django,
from gateway/urls.py, and that is its only door (tests included), so no path reaches the views without the
fast path's request id, access line, body cap and disconnect handling.
"""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from portal.views.payments import stripe_webhook

urlpatterns = [
    # The site's root is the portal: a signed-in visitor lands on it, anyone else on sign-in (portal_page).
    path("", RedirectView.as_view(pattern_name="portal:home", permanent=False)),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("portal/", include("portal.urls")),
    # Stripe's event deliveries: no session, no CSRF token, a signature instead (billing.payments).
    path("stripe/webhook", stripe_webhook, name="stripe-webhook"),
]
