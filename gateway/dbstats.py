"""A process-wide count of database statements, so tests and metrics can prove the hot path runs none.

Two counts: every statement of the process, and those run while serving a /v1 request (gateway/asgi.py marks the
request's context; worker threads inherit it through sync_to_async). The cache poller, the pub/sub listener and
the usage writer run in contexts of their own, so their statements are in the first count only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from django.db.backends.signals import connection_created

_counter = itertools.count()
_executed = 0
_executed_v1 = 0
on_v1_path: ContextVar[bool] = ContextVar("gateway_db_on_v1_path", default=False)


def queries_executed() -> int:
    return _executed


def queries_executed_on_v1_path() -> int:
    return _executed_v1


def _count(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
    global _executed, _executed_v1
    _executed += 1  # a plain int add is atomic enough under the GIL for a statistic
    if on_v1_path.get():
        _executed_v1 += 1
    return execute(sql, params, many, context)


def _on_connection(sender: Any, connection: Any, **kwargs: Any) -> None:
    if _count not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count)


def install() -> None:
    connection_created.connect(_on_connection, dispatch_uid="gateway-dbstats")
