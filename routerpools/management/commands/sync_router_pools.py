"""manage.py sync_router_pools: write the PORTAL_ROUTER_* maps into the database (idempotent)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from routerpools.services import router_pools_sync


class Command(BaseCommand):
    help = "Apply PORTAL_ROUTER_POOLS_JSON and friends to the database; safe to run repeatedly."

    def handle(self, *args: Any, **options: Any) -> None:
        config = settings.PORTAL_ROUTER_ENV
        if config.is_empty:
            self.stdout.write("no router pools in the environment; nothing to do")
            return
        result = router_pools_sync(config=config)
        aliases = ", ".join(a.alias for a in config.aliases)
        self.stdout.write(
            f"router pools synced ({aliases}): {result.created} created, {result.updated} updated, {result.removed} removed"
        )
