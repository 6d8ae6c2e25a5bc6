"""The customer portal: every customer-facing web piece (pages, the management API, the live feed, sign-up)."""

from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from portal.live import connect_signals

        connect_signals()  # live sockets close when the access they were opened with ends

        from portal import signals

        signals.connect_signals()

        from portal import limit_mail

        limit_mail.connect_signals()  # a used-up allowance is mailed once per window (usage's refusals wake it)
