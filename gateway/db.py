"""Running ORM work from async code: in a worker thread, never on the event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection

T = TypeVar("T")


def _with_fresh_connection(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    # Worker threads live outside Django's request cycle, so nothing else retires their
    # connections: drop one that broke (a database restart) or outlived CONN_MAX_AGE first.
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        if settings.PORTAL_DB_POOLED and not connection.in_atomic_block:
            # Back to the pool at once: an idle executor thread must not sit on a connection another one waits for.
            connection.close()


async def db_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await sync_to_async(_with_fresh_connection, thread_sensitive=False)(fn, *args, **kwargs)
