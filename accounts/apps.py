"""Users, organizations and memberships."""

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts.live import connect_signals

        connect_signals()  # live sockets close when the access they were opened with ends
