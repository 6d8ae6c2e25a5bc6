"""`manage.py prune_responses`: delete stored responses past their retention, in batches; idempotent, for cron."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from responsestore.services import PRUNE_BATCH_SIZE, stored_responses_prune


class Command(BaseCommand):
    help = "Delete stored /v1/responses answers older than PORTAL_RESPONSES_RETENTION_DAYS (or --days)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=None, help="retention in days (default: PORTAL_RESPONSES_RETENTION_DAYS)")
        parser.add_argument("--batch-size", type=int, default=PRUNE_BATCH_SIZE, help="rows deleted per statement")

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"] if options["days"] is not None else settings.PORTAL_RESPONSES_RETENTION_DAYS
        if days < 0:
            raise CommandError(f"--days must be 0 or more, got {days}")
        if options["batch_size"] < 1:
            raise CommandError(f"--batch-size must be at least 1, got {options['batch_size']}")
        if days == 0:
            self.stdout.write("stored response retention is off (0 days): nothing deleted")
            return
        before = timezone.now() - timedelta(days=days)
        deleted = stored_responses_prune(before=before, batch_size=options["batch_size"])
        self.stdout.write(f"deleted {deleted} stored responses older than {days} days (before {before.isoformat()})")
