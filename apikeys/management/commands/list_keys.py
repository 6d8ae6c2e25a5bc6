"""manage.py list_keys: an organization's keys, masked."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Organization
from apikeys.services import apikey_list


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


class Command(BaseCommand):
    help = "List an organization's API keys (masked)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        org = Organization.objects.filter(slug=options["org"]).first()
        if org is None:
            raise CommandError(f"no organization with slug {options['org']!r}")
        rows = [("ID", "KEY", "NAME", "STATUS", "CREATED", "LAST USED", "EXPIRES")]
        for key in apikey_list(organization=org):
            rows.append(
                (
                    str(key.pk),
                    key.masked,
                    key.name,
                    key.status,
                    _when(key.created_at),
                    _when(key.last_used_at),
                    _when(key.expires_at),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
