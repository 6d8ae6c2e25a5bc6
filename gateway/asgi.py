"""Serving /v1, /health and /ready straight from the event loop, outside Django's per-request thread, middleware and signals.

Django's ASGIHandler gives every request its own thread for sync middleware and
signal receivers and joins it at the end; on this path that costs more than the
whole proxy. The API needs none of it (no sessions, cookies, CSRF or templates),
so these routes get the same request object, URL resolver, response classes and
disconnect handling, minus the thread. Everything else goes to Django unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, ASGIRequest
from django.http import HttpResponse
from django.urls import Resolver404, resolve

from gateway import dbstats, metrics
from gateway.edge import too_large_response
from gateway.errors import GatewayError, InternalError, InvalidRequest
from gateway.logs import SCOPE_KEY, access_log, log_access, new_request_id, request_id_var
from gateway.pipeline import Exchange, RelayResponse
from gateway.recorder import recorder
from gateway.surfaces import json_response, surface_for_path

log = logging.getLogger("gateway")

GATEWAY_URLCONF = "gateway.urls"


def is_v1_path(path: str) -> bool:
    return path.startswith("/v1/") or path == "/v1"


def is_gateway_path(path: str) -> bool:
    return is_v1_path(path) or path in ("/health", "/ready", "/metrics")


class _Noted:
    __slots__ = ("status", "request_id")

    def __init__(self) -> None:
        self.status = 0  # 0: no response was started (the client left first)
        self.request_id = ""


def _log_access(scope: dict[str, Any], noted: _Noted, seconds: float) -> None:
    client = scope.get("client")
    log_access(
        method=scope["method"],
        path=scope["path"],
        status=noted.status,
        seconds=seconds,
        client=client[0] if client else None,
        request_id=noted.request_id,
    )


async def _read_body_within(receive: Any, limit: int) -> Any:
    """The request body as Django's ASGIHandler.read_body makes it, or None as soon as it passes `limit` bytes."""
    body_file = tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, mode="w+b")
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            body_file.close()
            raise RequestAborted()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            body_file.close()
            return None
        body_file.write(chunk)
        if not message.get("more_body", False):
            body_file.seek(0)
            return body_file


class GatewayApplication:
    def __init__(self, django_app: ASGIHandler) -> None:
        self.django = django_app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.django(scope, receive, send)
            return
        metrics.INFLIGHT_REQUESTS.inc()  # what a graceful shutdown waits for (gateway/lifecycle.py)
        started = time.perf_counter()
        noted = _Noted()
        # The request's one id, made here and nowhere else: the views, the pipeline, the error paths and the
        # playground read it from the scope, and every log line of the request (its tasks too) from the context.
        noted.request_id = scope[SCOPE_KEY] = new_request_id()
        request_id_var.set(noted.request_id)

        async def send_noting(message: Mapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                noted.status = message["status"]
                headers = message.get("headers") or ()
                if not any(name == b"x-request-id" for name, _ in headers):
                    # A portal page, /health, /ready: every response names the id its log lines carry.
                    message = {**message, "headers": [*headers, (b"x-request-id", noted.request_id.encode())]}
            await send(message)

        if is_v1_path(scope["path"]):
            dbstats.on_v1_path.set(True)  # what /metrics' gateway_db_queries_v1 counts (the cache's proof of work)
        try:
            if is_gateway_path(scope["path"]):
                await self.handle(scope, receive, send_noting)
            else:
                await self.django(scope, receive, send_noting)
        finally:
            metrics.INFLIGHT_REQUESTS.dec()
            if access_log.isEnabledFor(logging.INFO):
                _log_access(scope, noted, time.perf_counter() - started)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            body_file = await _read_body_within(receive, settings.PORTAL_MAX_BODY_BYTES)
        except RequestAborted:
            return
        if body_file is None:
            # Under daphne the server layer refused this already (portal_project/twisted_tuning.py); this is the
            # second line, for any other server: stop reading at the limit and answer before the rest arrives.
            await self.django.send_response(too_large_response(scope["path"], request_id=scope[SCOPE_KEY]), send)
            return
        try:
            listener = asyncio.ensure_future(self.django.listen_for_disconnect(receive))
            worker = asyncio.ensure_future(self._respond(scope, body_file, send))
            try:
                await asyncio.wait((listener, worker), return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # The server is stopping (daphne cancels every request still running): cancel the view as well
                # and wait for it, so it still closes its upstream and records its usage before we are gone.
                for task in (listener, worker):
                    task.cancel()
                await asyncio.gather(listener, worker, return_exceptions=True)
                raise
            for task in (listener, worker):
                if task.done():
                    try:
                        task.result()
                    except RequestAborted:
                        pass
                else:
                    # The client went away: cancelling lets the view close its upstream.
                    task.cancel()
                    try:
                        await task
                    except asyncio.CancelledError:
                        pass
        finally:
            body_file.close()

    async def _respond(self, scope: dict[str, Any], body_file: Any, send: Any) -> None:
        response = await self._response(scope, body_file)
        try:
            await self.django.send_response(response, send)
        except asyncio.CancelledError:
            pass
        finally:
            if isinstance(response, RelayResponse):
                await response.on_abandon()

    async def _response(self, scope: dict[str, Any], body_file: Any) -> HttpResponse:
        request: ASGIRequest | None = None
        try:
            request = ASGIRequest(scope, body_file)
            match = resolve(request.path_info, urlconf=GATEWAY_URLCONF)
            return await match.func(request, *match.args, **match.kwargs)
        except (Resolver404, UnicodeDecodeError):
            return self._error(scope, InvalidRequest("unknown route"), status=404, request=request)
        except GatewayError as err:
            return self._error(scope, err, request=request)
        except Exception:
            # Never a traceback to the customer: log it with the id they are given to quote.
            log.exception("unhandled error on %s request_id=%s", scope.get("path"), scope[SCOPE_KEY])
            return self._error(scope, InternalError(), request=request)

    def _error(
        self, scope: dict[str, Any], err: GatewayError, *, status: int | None = None, request: ASGIRequest | None = None
    ) -> HttpResponse:
        """An error answered here rather than by a view: in the shape of the route the path belongs to."""
        request_id = scope[SCOPE_KEY]
        surface = surface_for_path(scope["path"])
        status = status or surface.error_status(err)
        if request is not None and is_v1_path(scope["path"]):
            # Every /v1 request leaves its request log row, as the views write: an unknown route (`/v1`,
            # or `/v1/models/..` once a client normalised it) and a crash (whose id the customer quotes) too.
            recorder.ensure_started()
            recorder.record(usage=None, log_row=Exchange(request=request, surface=surface).log_row(status))
        headers = {"x-request-id": request_id}
        if surface.anthropic:
            headers["request-id"] = request_id
        return json_response(surface.error_body(err, request_id=request_id), status=status, headers=headers)
