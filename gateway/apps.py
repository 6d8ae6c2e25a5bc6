"""The public /v1 API: authenticate, limit, route to a router pool, translate, record."""

from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from gateway import invalidation

        invalidation.connect_signals()
