"""Inserting a batch of rows in one statement, skipping the rows a unique index already holds.

The usage writer runs this for every batch, in a worker thread of the gateway process, where its
Python work competes for the GIL with the event loop that serves requests. The ORM's bulk_create
spends about 30 µs of Python per row and field preparation (model instances, per-value
preparation, client-side quoting of arrays); on PostgreSQL this sends the rows as one array per
column (`INSERT ... SELECT * FROM unnest(...)`) with server-side parameter binding, about 5x
less work per row. Other databases (SQLite, for `make run` on a laptop) keep bulk_create.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connections, router
from django.db.backends.utils import CursorWrapper
from django.db.models import Field, Model

_SQL_CACHE: dict[tuple[str, type[Model], tuple[str, ...]], str] = {}


def insert_ignoring_conflicts(model: type[Model], columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Insert `rows` (tuples of `columns`, which are field attnames such as `organization_id`); a row that
    violates a unique index is skipped, as with bulk_create(ignore_conflicts=True). Other errors raise
    Django's IntegrityError / DataError for the whole statement."""
    if not rows:
        return
    connection = connections[router.db_for_write(model)]
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create([model(**dict(zip(columns, row, strict=True))) for row in rows], ignore_conflicts=True)
        return
    import psycopg

    sql = _postgres_sql(connection, model, tuple(columns))
    params = [list(column) for column in zip(*rows, strict=True)]
    connection.ensure_connection()
    # Django's wrapper around a server-side-binding cursor: its execute wrappers (gateway.dbstats counts
    # statements), query log (tests' assertNumQueries) and error translation still apply.
    raw = psycopg.Cursor(connection.connection)
    # django-stubs type the argument as a CursorWrapper; Django wraps a raw DB-API cursor in one here.
    cursor: CursorWrapper = connection.make_debug_cursor(raw) if connection.queries_logged else connection.make_cursor(raw)  # type: ignore[arg-type]
    with cursor:
        cursor.execute(sql, params)


def _postgres_sql(connection: Any, model: type[Model], columns: tuple[str, ...]) -> str:
    key = (connection.alias, model, columns)
    sql = _SQL_CACHE.get(key)
    if sql is None:
        by_attname = {f.attname: f for f in model._meta.concrete_fields}
        qn = connection.ops.quote_name
        names = ", ".join(qn(by_attname[c].column) for c in columns)
        # Arrays of the base type (varchar, not varchar(64)): an explicit cast to varchar(n) would
        # truncate a long value silently; the insert's assignment cast refuses it as bulk_create does.
        casts = ", ".join(f"%b::{_base_type(by_attname[c], connection)}[]" for c in columns)
        sql = f"INSERT INTO {qn(model._meta.db_table)} ({names}) SELECT * FROM unnest({casts}) ON CONFLICT DO NOTHING"
        _SQL_CACHE[key] = sql
    return sql


def _base_type(field: Field, connection: Any) -> str:
    db_type = field.db_type(connection)
    # Only a field without a column (a many-to-many) has none, and such a field is no attname of a row.
    if db_type is None:
        raise TypeError(f"{field} has no column to insert into")
    return db_type.split("(")[0]
