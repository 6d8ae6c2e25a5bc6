"""manage.py close_billing_period: roll usage up per organization, UTC day and alias, with its cost from the ledger."""

from __future__ import annotations

from datetime import UTC, date
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from usage.selectors import billing_days_unclosed
from usage.services import billing_days_close


class Command(BaseCommand):
    help = (
        "Close every UTC day before today that is not closed yet, or (with --date) re-close one day. "
        "Closing is idempotent: a closed day is recomputed to the same rows."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--date", default=None, help="YYYY-MM-DD: close (or re-close) this UTC day only")

    def handle(self, *args: Any, **options: Any) -> None:
        today = timezone.now().astimezone(UTC).date()
        if options["date"]:
            try:
                day = date.fromisoformat(options["date"])
            except ValueError:
                raise CommandError(f"--date must be YYYY-MM-DD, got {options['date']!r}") from None
            if day >= today:
                # Usage still arrives for today: closing it would freeze partial numbers.
                raise CommandError(f"{day} has not ended yet (today is {today} UTC)")
            days = [day]
        else:
            days = billing_days_unclosed(today=today)
        closed = billing_days_close(days=days)
        for result in closed:
            self.stdout.write(f"closed {result.day}: {result.rollup_rows} rollup rows")
        if not closed:
            self.stdout.write("nothing to close")
