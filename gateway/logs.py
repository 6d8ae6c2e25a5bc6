"""Log lines: JSON or plain, each carrying the request id of the request that wrote it, no secret from a URL, one line each.

Both formats replace the secret part of the URLs that carry one (SECRET_PATHS) wherever it appears in
a line, and neither lets client-sent text start a line of its own: JSON escapes it by construction; the
plain format escapes control characters and indents a traceback under its record.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import re
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


# URL paths that carry a live secret: allauth's password-reset key (/password/reset/key/<uidb36>-<key>/), its
# e-mail confirmation key, and the portal's invitation token. Whoever reads the logs must not be able to use them.
SECRET_PATHS = (
    "/accounts/password/reset/key/(?!done/)",
    "/accounts/confirm-email/",
    "/portal/invitations/",
)
REDACTED = "[redacted]"
_SECRET_PATH = re.compile("(" + "|".join(SECRET_PATHS) + r")[^/\s?#\"']+")
_SECRET_HINTS = ("/accounts/", "/invitations/")  # a substring test first: most lines (every /v1 one) have neither


def redact(text: str) -> str:
    """`text` with the secret part of every secret-bearing URL path in it replaced by REDACTED."""
    if _SECRET_HINTS[0] in text or _SECRET_HINTS[1] in text:
        return _SECRET_PATH.sub(r"\1" + REDACTED, text)
    return text


# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators: anything a terminal or a log
# reader may take for the end of a line (or an escape sequence), written as a visible escape instead.
_ESCAPES = {**{i: f"\\x{i:02x}" for i in [*range(0x20), *range(0x7F, 0xA0)]}, 0x2028: "\\u2028", 0x2029: "\\u2029"}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def escape_controls(text: str) -> str:
    # isprintable() is false for every character escaped here (and some others, which translate() leaves alone).
    return text if text.isprintable() else text.translate(_ESCAPES)


access_log = logging.getLogger("access")


def log_access(*, method: str, path: str, status: int, seconds: float, client: str | None, request_id: str) -> None:
    """One line per HTTP request at INFO (logger `access`), in place of daphne's plain-text access log (run daphne with -v 0).

    Written by the ASGI entry for every request the application saw, and by the server layer for the ones it
    refused before (gateway/edge.py). The path without its query string; status 0: the client left first.
    """
    if not access_log.isEnabledFor(logging.INFO):
        return
    duration_ms = round(seconds * 1000, 2)
    path = redact(path)
    # What access_log.info(...) makes, without its walk up the stack for the caller's file and line, which no
    # formatter here prints (one line per request: the walk was a tenth of the line's cost).
    record = access_log.makeRecord(
        access_log.name,
        logging.INFO,
        __file__,
        0,
        "%s %s %d %.2fms",
        (method, path, status, duration_ms),
        None,
        func="log_access",
        extra={
            "request_id": request_id,
            "fields": {"method": method, "path": path, "status": status, "duration_ms": duration_ms, "client": client},
        },
    )
    access_log.handle(record)


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (an asyncio task carries its own context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = request_id_var.get()
        return True


@functools.lru_cache(maxsize=4)
def _second(epoch_second: int) -> str:
    """A record's time to the second, as its JSON `ts` starts: formatted once per second, not once per line."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_second))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": _second(int(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        request_id = getattr(record, "request_id", "")
        if request_id:
            line["request_id"] = request_id
        fields = getattr(record, "fields", None)  # structured values given as extra={"fields": {...}}
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        text = json.dumps(line, ensure_ascii=False)
        # json.dumps escapes C0 controls but leaves DEL, C1 and the Unicode separators, which some readers break lines on.
        # Checked in that order because every line is checked: an ASCII line (nearly all) costs a memchr or two.
        if text.isascii() and "\x7f" not in text:
            return text
        return text.translate(_JSON_ESCAPES)


_JSON_ESCAPES = {i: f"\\u{i:04x}" for i in [*range(0x7F, 0xA0), 0x2028, 0x2029]}


class PlainFormatter(logging.Formatter):
    """`LOG_FORMAT=plain` (what `make run` uses): one line per record whatever the client sent, then its traceback, indented.

    A path with `%0a` in it (decoded by the server into a newline) would otherwise end the line and start a
    forged record; every control character of the record's line is written as an escape, and the lines of a
    traceback (which quote client text too) are indented so none can pass for a record.
    """

    def format(self, record: logging.LogRecord) -> str:
        record.message = redact(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = escape_controls(self.formatMessage(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        extra = [record.exc_text or "", self.formatStack(record.stack_info) if record.stack_info else ""]
        for block in extra:
            if block:
                text += "".join("\n    " + escape_controls(line) for line in redact(block).splitlines())
        return text
