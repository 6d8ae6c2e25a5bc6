"""Serving /v1, /health and /ready straight from the event loop, outside Django's per-request thread, middleware and signals.

Django's ASGIHandler gives every request its own thread for sync middleware and
signal receivers and joins it at the end; on this path that costs more than the
whole proxy. The API needs none of it (no sessions, cookies, CSRF or templates),
so these routes get a lighter request object (GatewayRequest: the body read whole
into bytes, META as ASGIRequest makes it), their view by a dict lookup of the path
(resolve() only for the patterned routes), Django's response classes sent in one
start and one body message (a stream part by part, straight from its relay), and
the client's disconnect cancelling the request's own task: no temporary file, no
second task, no wrapping generators. Everything else goes to Django unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Any, cast

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.http.cookie import parse_cookie
from django.http.response import HttpResponseBase
from django.urls import Resolver404, resolve
from django.utils.functional import cached_property

from gateway import dbstats, metrics
from gateway.edge import too_large_response
from gateway.errors import GatewayError, InternalError, InvalidRequest
from gateway.logs import SCOPE_KEY, access_log, log_access, new_request_id, request_id_var
from gateway.pipeline import Exchange, RelayResponse
from gateway.recorder import recorder
from gateway.surfaces import json_response, surface_for_path
from gateway.urls import EXACT_ROUTES

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


class GatewayRequest(HttpRequest):
    """A /v1, /health, /ready or /metrics request as the views and the pipeline read it: `scope`, `method`, `path`,
    `path_info`, `META` (as ASGIRequest makes it), `headers`, `GET` and `body` (bytes, read whole and within
    PORTAL_MAX_BODY_BYTES before the view runs). No POST, FILES or stream: nothing on these routes parses a form.

    ASGIRequest does the same work with a temporary file for the body and a few things these routes never read;
    the portal's playground passes Django's own HttpRequest to handle_completion, which reads only these too."""

    def __init__(self, scope: dict[str, Any], body: bytes) -> None:  # noqa: D107 (HttpRequest.__init__ sets what we replace)
        self.scope = scope
        self.resolver_match = None
        self.method = scope["method"].upper()
        self.path = scope["path"]
        self.script_name = get_script_prefix(scope)
        self.path_info = self.path.removeprefix(self.script_name) if self.script_name else self.path
        self.content_type = None
        self.content_params = None
        self._raw_body = body
        query_string = scope.get("query_string", "")
        if isinstance(query_string, bytes):
            query_string = query_string.decode()
        meta: dict[str, Any] = {
            "REQUEST_METHOD": self.method,
            "QUERY_STRING": query_string,
            "SCRIPT_NAME": self.script_name,
            "PATH_INFO": self.path_info,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
        }
        client = scope.get("client")
        if client:
            meta["REMOTE_ADDR"] = meta["REMOTE_HOST"] = client[0]
            meta["REMOTE_PORT"] = client[1]
        server = scope.get("server")
        meta["SERVER_NAME"], meta["SERVER_PORT"] = (server[0], str(server[1])) if server else ("unknown", "0")
        for raw_name, raw_value in scope.get("headers", ()):
            name = raw_name.decode("latin1")
            if "_" in name:  # as ASGIRequest: no spoofing through the ambiguity between underscores and hyphens
                continue
            if name == "content-length":
                key = "CONTENT_LENGTH"
            elif name == "content-type":
                key = "CONTENT_TYPE"
            else:
                key = "HTTP_" + name.upper().replace("-", "_")
            value = raw_value.decode("latin1")
            meta[key] = meta[key] + "," + value if key in meta else value  # a repeated header: joined, as Django does
        self.META = meta

    @property
    def body(self) -> bytes:
        return self._raw_body

    def _get_scheme(self) -> str:  # as ASGIRequest: the scope's scheme
        return self.scope.get("scheme") or "http"  # HttpRequest._get_scheme's default

    @cached_property
    def GET(self) -> QueryDict:  # type: ignore[override]  # noqa: N802 (Django's name)
        return QueryDict(self.META["QUERY_STRING"])

    @cached_property
    def COOKIES(self) -> dict[str, str]:  # type: ignore[override]  # noqa: N802 (Django's name)
        return parse_cookie(self.META.get("HTTP_COOKIE", ""))


async def _read_body_within(receive: Any, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it passes `limit` bytes; RequestAborted if the client leaves."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        more = message.get("more_body", False)
        if not chunks and not more:
            return chunk  # nearly every request: one message
        chunks.append(chunk)
        if not more:
            return b"".join(chunks)


def _response_headers(response: HttpResponseBase, request_id: str) -> list[tuple[bytes, bytes]]:
    """The response's headers as ASGI sends them (as Django's send_response encodes them), with an `x-request-id`
    added when the view set none (/health, /ready: every response names the id its log lines carry)."""
    headers = [(name.encode("ascii"), value.encode("latin1")) for name, value in response.items()]
    if "x-request-id" not in response:
        headers.append((b"x-request-id", request_id.encode()))
    if response.cookies:
        for cookie in response.cookies.values():
            headers.append((b"Set-Cookie", cookie.output(header="").encode("ascii").strip()))
    return headers


async def _send_response(response: HttpResponseBase, send: Any, noted: _Noted) -> None:
    """What Django's ASGIHandler.send_response does, in fewer steps: the start, then the whole body in one message,
    or for a stream each part as it comes, read straight from the relay (no wrapping generators per part) and
    closed with `aclosing` whatever happens, so a client that leaves ends the relay here, in the request's task."""
    noted.status = response.status_code
    await send(
        {"type": "http.response.start", "status": response.status_code, "headers": _response_headers(response, noted.request_id)}
    )
    if not isinstance(response, StreamingHttpResponse):
        await send({"type": "http.response.body", "body": cast(HttpResponse, response).content})
        return
    # Both are async generators (the relay, StreamingHttpResponse.__aiter__), typed as iterators.
    parts = cast(AsyncGenerator[Any, None], response.parts if isinstance(response, RelayResponse) else aiter(response))
    async with aclosing(parts) as content:
        async for part in content:
            if type(part) is not bytes:
                part = response.make_bytes(part)
            await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body"})


class _DisconnectWatch:
    """Reads the client's side while the request is served; the client leaving cancels the request's task (which
    runs the view), so the view closes its upstream and records its usage. One task per request, not two."""

    __slots__ = ("task", "active", "fired")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.active = True  # only while the view runs or its answer is sent
        self.fired = False

    async def listen(self, receive: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if self.active:
                    self.fired = True
                    self.task.cancel()
                return


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
        path = scope["path"]
        try:
            if is_gateway_path(path):
                if is_v1_path(path):
                    dbstats.on_v1_path.set(True)  # what /metrics' gateway_db_queries_v1 counts (the cache's proof of work)
                await self.handle(scope, receive, send, noted)
            else:

                async def send_noting(message: Mapping[str, Any]) -> None:
                    if message["type"] == "http.response.start":
                        noted.status = message["status"]
                        headers = message.get("headers") or ()
                        if not any(name == b"x-request-id" for name, _ in headers):
                            # A portal page: every response names the id its log lines carry.
                            message = {**message, "headers": [*headers, (b"x-request-id", noted.request_id.encode())]}
                    await send(message)

                await self.django(scope, receive, send_noting)
        finally:
            metrics.INFLIGHT_REQUESTS.dec()
            if access_log.isEnabledFor(logging.INFO):
                _log_access(scope, noted, time.perf_counter() - started)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any, noted: _Noted) -> None:
        try:
            body = await _read_body_within(receive, settings.PORTAL_MAX_BODY_BYTES)
        except RequestAborted:
            return
        if body is None:
            # Under daphne the server layer refused this already (portal_project/twisted_tuning.py); this is the
            # second line, for any other server: stop reading at the limit and answer before the rest arrives.
            await _send_response(too_large_response(scope["path"], request_id=scope[SCOPE_KEY]), send, noted)
            return
        task = asyncio.current_task()
        assert task is not None
        watch = _DisconnectWatch(task)
        listener = asyncio.ensure_future(watch.listen(receive))
        try:
            await self._respond(scope, body, send, noted)
        except asyncio.CancelledError:
            # The client left (the watch cancelled the view, which closed its upstream and recorded its usage), or
            # the server is stopping (daphne cancels every request still running): told apart below.
            pass
        finally:
            watch.active = False
            listener.cancel()
        if watch.fired:
            task.uncancel()
        if task.cancelling():
            raise asyncio.CancelledError  # the server's, not the client's: it goes on to the server

    async def _respond(self, scope: dict[str, Any], body: bytes, send: Any, noted: _Noted) -> None:
        response = await self._response(scope, body)
        try:
            await _send_response(response, send, noted)
        except asyncio.CancelledError:
            pass
        finally:
            if isinstance(response, RelayResponse):
                await response.on_abandon()

    async def _response(self, scope: dict[str, Any], body: bytes) -> HttpResponseBase:
        request: GatewayRequest | None = None
        try:
            request = GatewayRequest(scope, body)
            view = EXACT_ROUTES.get(request.path_info)
            if view is not None:
                return await view(request)
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
        self, scope: dict[str, Any], err: GatewayError, *, status: int | None = None, request: HttpRequest | None = None
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
