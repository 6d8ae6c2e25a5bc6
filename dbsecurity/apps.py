"""Row-level security on every table of ours, so Supabase's data API (the anon and authenticated roles) reads nothing.

An app of its own rather than a migration in `gateway`: its one migration depends on every other app's, and the
post_migrate hook is not the gateway's business; apps that add migrations in parallel never collide with it.
"""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class DbSecurityConfig(AppConfig):
    name = "dbsecurity"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Once per `migrate` (and `flush`), after every app's migrations: tables a later migration created get it too.
        post_migrate.connect(_after_migrate, sender=self, dispatch_uid="dbsecurity.row_level_security")


def _after_migrate(sender: AppConfig, using: str = "default", verbosity: int = 1, **kwargs: Any) -> None:
    from django.db import connections

    from dbsecurity.rls import enable_row_level_security

    enabled = enable_row_level_security(connections[using])
    if enabled and verbosity >= 1:
        print(f"  Row-level security enabled on {len(enabled)} table(s): {', '.join(enabled)}")
