"""A process-wide count of database statements, so tests and metrics can prove the hot path runs none."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from django.db.backends.signals import connection_created

_counter = itertools.count()
_executed = 0


def queries_executed() -> int:
    return _executed


def _count(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
    global _executed
    _executed += 1  # a plain int add is atomic enough under the GIL for a statistic
    return execute(sql, params, many, context)


def _on_connection(sender: Any, connection: Any, **kwargs: Any) -> None:
    if _count not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count)


def install() -> None:
    connection_created.connect(_on_connection, dispatch_uid="gateway-dbstats")
