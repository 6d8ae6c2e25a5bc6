"""Enabling row-level security, with no policy, on the tables Django knows in the connection's schema (PostgreSQL).

Supabase exposes the `public` schema through its data API, where the `anon` and `authenticated` roles hold every
privilege on every table by default. With RLS on and no policy, those roles see no row and may write none; the
table's owner (our role, which runs migrations and the app) is exempt from RLS, so the product works unchanged.
Row-level security does not cover TRUNCATE (nor REFERENCES and TRIGGER, which are not about rows): those three
privileges are revoked from the two roles, where they exist, on every table of ours.
"""

from __future__ import annotations

from django.db.backends.base.base import BaseDatabaseWrapper

API_ROLES = ("anon", "authenticated")  # the roles Supabase's data API runs as

_WITHOUT_RLS = """
SELECT c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity
  AND pg_has_role(c.relowner, 'USAGE')
ORDER BY c.relname
"""


def our_tables(connection: BaseDatabaseWrapper) -> set[str]:
    """Every table of the installed apps' models (many-to-many tables too), and Django's migration history."""
    return set(connection.introspection.django_table_names(include_views=False)) | {"django_migrations"}


def enable_row_level_security(connection: BaseDatabaseWrapper) -> list[str]:
    """The tables it was enabled on now (those that had it already are left alone); nothing on other databases."""
    if connection.vendor != "postgresql":
        return []
    ours = our_tables(connection)
    with connection.cursor() as cursor:
        cursor.execute(_WITHOUT_RLS)
        missing = [name for (name,) in cursor.fetchall() if name in ours]
        for name in missing:
            cursor.execute(f"ALTER TABLE {connection.ops.quote_name(name)} ENABLE ROW LEVEL SECURITY")
        cursor.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) ORDER BY rolname", [list(API_ROLES)])
        roles = [name for (name,) in cursor.fetchall()]
        cursor.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND pg_has_role(c.relowner, 'USAGE')"
        )
        tables = sorted(name for (name,) in cursor.fetchall() if name in ours)
        if roles and tables:
            cursor.execute(
                f"REVOKE TRUNCATE, REFERENCES, TRIGGER ON {', '.join(connection.ops.quote_name(t) for t in tables)}"
                f" FROM {', '.join(connection.ops.quote_name(r) for r in roles)}"
            )
    return missing
