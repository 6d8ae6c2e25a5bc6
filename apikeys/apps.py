"""API keys: issuing, hashing, revoking and auditing."""

from django.apps import AppConfig


class ApikeysConfig(AppConfig):
    name = "apikeys"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from apikeys.signals import connect_signals

        connect_signals()
