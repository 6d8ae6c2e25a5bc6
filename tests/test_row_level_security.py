"""Row-level security on every table of ours: Supabase's `anon` and `authenticated` roles, with Supabase's default
grants on `public`, read no row and write none; our own role (the tables' owner) works as before.

Roles are cluster-wide: created here if missing (concurrent runs may race; a duplicate is fine), never dropped. The
grants live in the test database and go with it.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore
from django.core.management import call_command
from django.db import connection
from psycopg import sql

from accounts.models import User
from billing.services import plans_seed_defaults
from dbsecurity.rls import enable_row_level_security, our_tables
from tests.support.live import ALIAS, issue_key
from usage.models import UsageEvent

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="row-level security is PostgreSQL's (a no-op on SQLite)"),
    pytest.mark.django_db(transaction=True),
]

ROLES = ("anon", "authenticated")
# Supabase's default privileges on `public` for its API roles (its initial schema grants them to postgres, anon,
# authenticated and service_role): everything on every table, sequence and function, present and future.
SUPABASE_GRANTS = (
    "GRANT USAGE ON SCHEMA public TO {roles}",
    "GRANT ALL ON ALL TABLES IN SCHEMA public TO {roles}",
    "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {roles}",
    "GRANT ALL ON ALL FUNCTIONS IN SCHEMA public TO {roles}",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO {roles}",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO {roles}",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO {roles}",
)


def _connect() -> psycopg.Connection:
    """A connection of the test's own to the test database (never the pool's: it changes roles)."""
    db = settings.DATABASES["default"]
    return psycopg.connect(
        host=db["HOST"], port=db["PORT"], user=db["USER"], password=db["PASSWORD"] or None, dbname=db["NAME"], autocommit=True
    )


@pytest.fixture
def supabase_roles() -> Iterator[psycopg.Connection]:
    with _connect() as conn:
        for role in ROLES:
            conn.execute(
                sql.SQL("DO $$ BEGIN CREATE ROLE {} NOLOGIN NOINHERIT; EXCEPTION WHEN duplicate_object THEN NULL; END $$").format(
                    sql.Identifier(role)
                )
            )
        roles = sql.SQL(", ").join(sql.Identifier(r) for r in ROLES)
        for grant in SUPABASE_GRANTS:
            conn.execute(sql.SQL(grant).format(roles=roles))
        yield conn


def _tables_in_schema(conn: psycopg.Connection) -> dict[str, bool]:
    """Every ordinary table in the schema, with whether row-level security is on."""
    rows = conn.execute(
        "SELECT c.relname, c.relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
    ).fetchall()
    return dict(rows)


def _some_data() -> None:
    plans_seed_defaults()
    User.objects.create_user(email="rls@example.com", password="rls-password-123")
    key = issue_key(slug="rls")
    UsageEvent.objects.create(
        request_id="req_rls", organization_id=key.organization_id, api_key_id=key.key_id, alias=ALIAS,
        route="openai.chat", status="ok", http_status=200,
    )  # fmt: skip
    session = SessionStore()
    session["secret"] = "a session of ours"
    session.create()


def test_supabase_api_roles_read_and_write_nothing_of_ours(supabase_roles: psycopg.Connection) -> None:
    _some_data()
    conn = supabase_roles
    ours = sorted(our_tables(connection) & set(_tables_in_schema(conn)))
    # Introspected, not listed: Django's own tables are among them, and every one has RLS on.
    assert {"auth_group", "django_session", "django_admin_log", "account_emailaddress", "usage_usageevent",
            "apikeys_apikey", "accounts_user", "django_migrations"} <= set(ours)  # fmt: skip
    assert [t for t in ours if not _tables_in_schema(conn)[t]] == []
    # Our role (the owner) sees the rows.
    for table in ("accounts_user", "apikeys_apikey", "usage_usageevent", "django_session", "accounts_organization"):
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0] > 0, table

    enable_row_level_security(connection)  # the next migrate's hook: TRUNCATE, which RLS does not cover, is revoked
    for role in ROLES:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        try:
            assert conn.execute("SELECT current_user").fetchone()[0] == role
            for table in ours:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):  # autocommit: nothing to roll back
                    conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
                name = sql.Identifier(table)
                # The grant stands (Supabase's default): it is row-level security that hides every row.
                assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(name)).fetchone()[0] == 0, (role, table)
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
                    conn.execute(sql.SQL("INSERT INTO {} DEFAULT VALUES").format(name))
                assert conn.execute(sql.SQL("UPDATE {} SET {} = {}").format(
                    name, sql.Identifier(_first_column(conn, table)), sql.Identifier(_first_column(conn, table))
                )).rowcount == 0  # fmt: skip
                assert conn.execute(sql.SQL("DELETE FROM {}").format(name)).rowcount == 0
        finally:
            conn.execute("RESET ROLE")
    # Nothing was changed by them.
    assert conn.execute("SELECT count(*) FROM usage_usageevent").fetchone()[0] == 1


def _first_column(conn: psycopg.Connection, table: str) -> str:
    return conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum LIMIT 1",
        [table],
    ).fetchone()[0]


def test_a_table_without_it_gets_it_at_the_next_migrate() -> None:
    """What a later migration's new table goes through: `migrate` ends with the post_migrate hook."""
    with _connect() as conn:
        conn.execute("ALTER TABLE usage_usageevent DISABLE ROW LEVEL SECURITY")
        assert _tables_in_schema(conn)["usage_usageevent"] is False
        call_command("migrate", verbosity=0, interactive=False)
        assert _tables_in_schema(conn)["usage_usageevent"] is True


def test_a_table_that_is_not_ours_is_left_alone() -> None:
    with _connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS someone_elses (id int)")
        try:
            call_command("migrate", verbosity=0, interactive=False)
            assert _tables_in_schema(conn)["someone_elses"] is False
        finally:
            conn.execute("DROP TABLE someone_elses")
