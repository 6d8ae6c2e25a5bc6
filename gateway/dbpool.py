"""What /ready and /health report of the database connection pool (Django's psycopg pool, when one is configured)."""

from __future__ import annotations

from django.db import connections

from portal_project.patches import django_connection_pool


def _pool():  # noqa: ANN202 (psycopg_pool.ConnectionPool, imported only where a pool is configured)
    wrapper = connections["default"]
    if wrapper.vendor != "postgresql" or not wrapper.settings_dict.get("OPTIONS", {}).get("pool"):
        return None
    return django_connection_pool(wrapper)  # a Django internal, listed in portal_project/patches.py


def configured() -> bool:
    wrapper = connections["default"]
    return wrapper.vendor == "postgresql" and bool(wrapper.settings_dict.get("OPTIONS", {}).get("pool"))


def stats() -> dict[str, int] | None:
    """The pool's size, idle connections, waiting requests and counters (psycopg_pool's get_stats), or None."""
    pool = _pool()
    if pool is None:
        return None
    raw = pool.get_stats()
    return {
        "min": raw.get("pool_min", 0),
        "max": raw.get("pool_max", 0),
        "size": raw.get("pool_size", 0),
        "available": raw.get("pool_available", 0),
        "waiting": raw.get("requests_waiting", 0),
        # Counters since the process started: connections opened against connections handed out (their reuse).
        "opened": raw.get("connections_num", 0),
        "handed_out": raw.get("requests_num", 0),
    }


def status() -> str | None:
    """ "ok", or why the pool cannot hand out a connection now; None when no pool is configured (no check at all)."""
    if not configured():
        return None
    found = stats()
    if found is None:
        return "error: not opened"  # no connection was ever taken: the database check, run first, would have opened it
    if found["waiting"] and not found["available"] and found["size"] >= found["max"]:
        return f"error: saturated ({found['waiting']} waiting for {found['max']} connections)"
    return "ok"
