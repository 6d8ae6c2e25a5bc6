"""Structured JSON log lines, each carrying the request id of the request that wrote it."""

from __future__ import annotations

import contextvars
import json
import logging
import time

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


access_log = logging.getLogger("access")


def log_access(*, method: str, path: str, status: int, seconds: float, client: str | None, request_id: str) -> None:
    """One line per HTTP request at INFO (logger `access`), in place of daphne's plain-text access log (run daphne with -v 0).

    Written by the ASGI entry for every request the application saw, and by the server layer for the ones it
    refused before (gateway/edge.py). The path without its query string; status 0: the client left first.
    """
    duration_ms = round(seconds * 1000, 2)
    access_log.info(
        "%s %s %d %.2fms",
        method,
        path,
        status,
        duration_ms,
        extra={
            "request_id": request_id,
            "fields": {"method": method, "path": path, "status": status, "duration_ms": duration_ms, "client": client},
        },
    )


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (an asyncio task carries its own context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "")
        if request_id:
            line["request_id"] = request_id
        fields = getattr(record, "fields", None)  # structured values given as extra={"fields": {...}}
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)
