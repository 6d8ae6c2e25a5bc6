"""What the HTTP server answers before the application runs: a body over the limit (413), a request read too slowly (408).

The server layer (portal_project/twisted_tuning.py) refuses such requests before their body is read, so
no view ever sees them; this module gives the refusal the shape the caller expects all the same: the
route's own error body on /v1 (OpenAI, Anthropic, or the envelope), a short plain text elsewhere, an
`x-request-id`, an access line and a metric. The connection is closed after it.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.http import HttpResponse

from gateway import metrics
from gateway.errors import GatewayError, RequestTimeout, RequestTooLarge
from gateway.logs import log_access, new_request_id
from gateway.surfaces import json_response, surface_for_path
from gateway.translate.common import json_compact

_REASONS = {408: b"Request Timeout", 413: b"Content Too Large"}
_METRIC_LABEL = {408: "read_timeout", 413: "body_too_large"}


def _error(status: int) -> GatewayError:
    if status == 413:
        return RequestTooLarge(f"request body is larger than {settings.PORTAL_MAX_BODY_BYTES} bytes")
    return RequestTimeout(f"the request was not received within {settings.PORTAL_REQUEST_READ_TIMEOUT_S} seconds")


def refusal(status: int, *, method: str, path: str, client: str | None, started: float) -> bytes:
    """The whole HTTP/1.1 response, bytes ready for the socket; writes its access line and counts it.

    `path` is the decoded path without its query string, or "" when the request line never arrived;
    `started` the time.monotonic() of the request's first byte.
    These requests never reach the ASGI entry that gives every other request its id, so the id is made here.
    """
    request_id = new_request_id()
    err = _error(status)
    headers = [(b"x-request-id", request_id.encode())]
    if path == "/v1" or path.startswith("/v1/"):
        surface = surface_for_path(path)
        body = json_compact(surface.error_body(err, request_id=request_id)).encode()
        content_type = b"application/json"
        if surface.anthropic:
            headers.append((b"request-id", request_id.encode()))
    else:
        body = f"{status} {_REASONS[status].decode()}: {err.message}\n".encode()
        content_type = b"text/plain; charset=utf-8"
    head = [
        b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
        b"content-type: " + content_type,
        b"content-length: %d" % len(body),
        b"connection: close",
        b"cache-control: no-store",
    ]
    head += [name + b": " + value for name, value in headers]
    metrics.EDGE_REFUSALS.labels(_METRIC_LABEL[status]).inc()
    log_access(
        method=method or "-",
        path=path or "-",
        status=status,
        seconds=time.monotonic() - started,
        client=client,
        request_id=request_id,
    )
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def too_large_response(path: str, *, request_id: str) -> HttpResponse:
    """The application's own 413 for a /v1 body that passed the limit while it read it (the second line, gateway/asgi.py)."""
    surface = surface_for_path(path)
    err = _error(413)
    headers = {"x-request-id": request_id, **({"request-id": request_id} if surface.anthropic else {})}
    return json_response(surface.error_body(err, request_id=request_id), status=surface.error_status(err), headers=headers)
