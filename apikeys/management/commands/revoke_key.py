"""manage.py revoke_key: revoke by numeric id, public id or displayed prefix."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apikeys.services import KeyNotFound, apikey_find, apikey_revoke


class Command(BaseCommand):
    help = "Revoke an API key; the gateway refuses it within a second."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key", metavar="KEY_ID_OR_PREFIX")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            key = apikey_find(id_or_prefix=options["key"])
        except KeyNotFound as exc:
            raise CommandError(str(exc)) from None
        already = key.revoked_at is not None
        key = apikey_revoke(api_key=key, actor_label="manage.py revoke_key")
        state = "was already revoked" if already else "revoked"
        assert key.revoked_at is not None  # set by apikey_revoke, or before it: for the type checker
        self.stdout.write(f"{key.masked} ({key.name}, {key.organization.slug}) {state} at {key.revoked_at.isoformat()}")
