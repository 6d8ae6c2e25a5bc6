"""The public /v1 API: authenticate, limit, route to a router pool, translate, record."""

from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core import checks

        from gateway import invalidation, state_metrics
        from gateway.limits import money
        from portal_project.proxies import check_https_behind_proxies

        invalidation.connect_signals()
        money.connect_signals()
        state_metrics.register()
        checks.register(check_https_behind_proxies, checks.Tags.security, deploy=True)
