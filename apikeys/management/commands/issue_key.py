"""manage.py issue_key: prints the raw key as the only line on stdout."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Organization
from apikeys.models import ApiKey
from apikeys.services import apikey_create, expiry_in_days


class Command(BaseCommand):
    help = "Issue an API key for an organization. The raw key is printed once, alone, on stdout."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--name", required=True)
        parser.add_argument("--expires-in-days", type=int, default=None)
        parser.add_argument(
            "--kind",
            choices=[ApiKey.Kind.STANDARD, ApiKey.Kind.ADMIN],
            default=ApiKey.Kind.STANDARD,
            help="standard: an API key for /v1 (ctr_…); admin: an organization admin key for the management API (cta_…)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        org = Organization.objects.filter(slug=options["org"]).first()
        if org is None:
            raise CommandError(f"no organization with slug {options['org']!r}")
        try:
            created = apikey_create(
                organization=org,
                name=options["name"],
                expires_at=expiry_in_days(options["expires_in_days"]),
                actor_label="manage.py issue_key",
                kind=options["kind"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        key = created.api_key
        expiry = key.expires_at.isoformat() if key.expires_at else "never"
        sys.stderr.write(
            f"issued {'admin key' if key.kind == ApiKey.Kind.ADMIN else 'key'} {key.pk} {key.prefix} for {org.slug} (expires {expiry}); store it now, it is not shown again\n"
        )
        self.stdout.write(created.raw)
