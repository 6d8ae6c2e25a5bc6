"""Apply the migrations at start-up, once however many gateway containers start together: under a PostgreSQL lock."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Any constant shared by every container of the deployment; only deploy/migrate.py takes it.
MIGRATE_LOCK_KEY = 7_311_420_011


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal_project.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    if connection.vendor != "postgresql":
        call_command("migrate", interactive=False)
        return
    # Two `migrate` runs at once would both apply the same migration and one of them fail half-way: the second
    # waits here, then finds nothing left to apply. A session lock: released when this process exits, whatever happens.
    # (Through a transaction-mode pooler such as Supabase's on port 6543 a session lock means nothing: migrate with
    # the direct URL.)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [MIGRATE_LOCK_KEY])
    try:
        call_command("migrate", interactive=False)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [MIGRATE_LOCK_KEY])


if __name__ == "__main__":
    main()
