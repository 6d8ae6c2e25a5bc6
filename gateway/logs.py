"""Structured JSON log lines, each carrying the request id of the request that wrote it."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import time
from typing import Any

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

# Where an HTTP request's one id travels: made at the ASGI entry (gateway/asgi.py GatewayApplication), kept in
# the scope, which Django's request objects carry as `request.scope`.
SCOPE_KEY = "request_id"


def new_request_id() -> str:
    return f"req_{os.urandom(12).hex()}"


def request_id_of(request: Any) -> str:
    """The id of the HTTP request `request` belongs to; made here only for a request that came in another way
    (Django's test client), and then kept on it, so every caller still sees the one id."""
    holder = getattr(request, "scope", None)
    if holder is None:
        holder = request.META
    request_id = holder.get(SCOPE_KEY)
    if not request_id:
        request_id = holder[SCOPE_KEY] = new_request_id()
    return request_id


def current_request_id() -> str:
    """The id of the request this code runs for (set at the ASGI entry), or a new one outside any request."""
    return request_id_var.get() or new_request_id()


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
