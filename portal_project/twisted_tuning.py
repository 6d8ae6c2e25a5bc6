"""Every change this project makes to daphne's HTTP server (Twisted underneath), in one place, installed at start-up.

daphne hands a request to the ASGI application only once Twisted has received all of it, body included,
and then queues the whole body in memory for the application. Limits that must act while a request is
still arriving therefore live here, at the server layer; the application keeps its own checks as a
second line (gateway/asgi.py, gateway/pipeline.py). What is changed, and why:

1. `twisted.web.http._parseContentType` gets an LRU cache (portal_project/patches.py, where every reliance on
   another library's internals is listed and checked).
2. `daphne.server.HTTPFactory` (the name `Server.run` builds its factory from) becomes `_Factory`, a
   subclass that builds `_Channel`s serving `_Request`s and that:
   - sets the idle timeout of a connection between requests (keep-alive) to PORTAL_KEEPALIVE_TIMEOUT_S;
   - ignores daphne's `--proxy-headers`: the client address is taken from X-Forwarded-For by one ASGI
     middleware, as far as PORTAL_TRUSTED_PROXY_COUNT trusts it (portal_project/proxies.py), and daphne's
     left-most reading would hand it a forged address first.
3. `_Channel` (a `twisted.web.http.HTTPChannel`):
   - `allHeadersReceived`: a declared Content-Length over PORTAL_MAX_BODY_BYTES is answered 413 (before
     any `100 Continue`) and the connection closed, before a byte of the body is read;
   - `dataReceived` / `allContentReceived` / `connectionLost`: the time from a request's first byte until
     its body is complete is bounded by PORTAL_REQUEST_READ_TIMEOUT_S (answered 408, then closed). Twisted's
     idle timeout alone restarts with every byte, so a client dripping a byte every few seconds would hold
     a connection for hours. Checked by one sweep a second over the requests being read, so a request
     costs a clock read and a dict entry, not a timer.
4. `_Request` (daphne's `WebRequest`):
   - `handleContentChunk`: a chunked body (no Content-Length) is counted as it arrives and refused with a
     413 the moment it passes the limit;
   - `__init__`: Twisted's parsing of form bodies into `request.args` is off. daphne passes the raw body to
     the application and never reads `args`; the parse cost CPU on every form POST (before anyone was
     authenticated) and answered a malformed multipart body with a bare HTML 400 of its own.

The refusals are shaped by gateway/edge.py (the caller's wire format, `x-request-id`, an access line, a
metric). `install()` checks the shape of everything it overrides first and refuses to start when a daphne
or Twisted release moved something (tests/test_twisted_tuning.py runs the same check).
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import time
from typing import Any
from urllib.parse import unquote

from portal_project import patches

log = logging.getLogger("gateway")

# Requests whose head or body is still arriving: channel -> time.monotonic() of the request's first byte.
_reading: dict[Any, float] = {}
_limits = {"max_body_bytes": 1_048_576, "read_timeout_s": 30.0, "keepalive_s": 75.0}
_installed = False


def install(*, max_body_bytes: int, read_timeout_s: float, keepalive_s: float) -> None:
    """Applies the changes above; a no-op outside a daphne process (e.g. the ASGI app called in-process)."""
    global _installed
    patches.cache_twisted_content_type_parse()
    if "daphne.server" not in sys.modules or _installed:
        return
    problems = shape_problems()
    if problems:
        raise RuntimeError("portal_project.twisted_tuning cannot install on this daphne/Twisted: " + "; ".join(problems))
    _limits.update(max_body_bytes=max_body_bytes, read_timeout_s=float(read_timeout_s), keepalive_s=float(keepalive_s))
    import daphne.server

    daphne.server.HTTPFactory = _classes()[0]
    _installed = True


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def _names(function: Any) -> tuple[str, ...]:
    """The global and attribute names a function's code uses (none for a builtin or a missing function)."""
    code = getattr(function, "__code__", None)
    return code.co_names if code is not None else ()


def shape_problems() -> list[str]:
    """What changed shape in daphne or Twisted among the things overridden here; empty when all is as expected."""
    from daphne import http_protocol
    from twisted.web import http

    problems = []
    expected = {
        (http.HTTPChannel, "dataReceived"): ["self", "data"],
        (http.HTTPChannel, "allHeadersReceived"): ["self"],
        (http.HTTPChannel, "allContentReceived"): ["self"],
        (http.HTTPChannel, "connectionLost"): ["self", "reason"],
        (http.HTTPChannel, "loseConnection"): ["self"],
        (http.Request, "handleContentChunk"): ["self", "data"],
        (http.Request, "__init__"): ["self", "channel", "queued", "parsePOSTFormSubmission"],
        (http_protocol.HTTPFactory, "__init__"): ["self", "server"],
        (http_protocol.HTTPFactory, "buildProtocol"): ["self", "addr"],
    }
    for (owner, name), parameters in expected.items():
        function = getattr(owner, name, None)
        if function is None:
            problems.append(f"{owner.__qualname__}.{name} is gone")
        elif _parameters(function) != parameters:
            problems.append(f"{owner.__qualname__}.{name}{inspect.signature(function)} is not ({', '.join(parameters)})")
    # State of the channel read here: set by its request-line and header parsing, cleared in allContentReceived.
    for name in ("_command", "_path"):
        if name not in _names(http.HTTPChannel.lineReceived):
            problems.append(f"HTTPChannel.lineReceived no longer sets {name}")
    for name in ("length", "persistent", "_handlingRequest", "requests"):
        if not hasattr(http.HTTPChannel, name) and name not in _names(http.HTTPChannel.__init__):
            problems.append(f"HTTPChannel has no {name}")
    if not callable(getattr(http, "_GenericHTTPChannelProtocol", None)):
        problems.append("twisted.web.http._GenericHTTPChannelProtocol is gone")
    if "WebRequest" not in _names(http_protocol.HTTPFactory.buildProtocol):
        problems.append("daphne's HTTPFactory.buildProtocol no longer installs WebRequest")
    if "_parsePOSTFormSubmission" not in _names(http.Request.requestReceived):
        problems.append("Request.requestReceived no longer consults parsePOSTFormSubmission")
    server = sys.modules.get("daphne.server")
    if server is not None:
        if getattr(server, "HTTPFactory", None) is not http_protocol.HTTPFactory and not getattr(
            server.HTTPFactory, "_portal", False
        ):
            problems.append("daphne.server.HTTPFactory is not daphne's HTTPFactory")
        if "HTTPFactory" not in _names(server.Server.run):
            problems.append("daphne's Server.run no longer builds HTTPFactory")
        if "proxy_forwarded_address_header" not in _names(server.Server.__init__):
            problems.append("daphne's Server no longer has proxy_forwarded_address_header")
    return problems


@functools.cache
def _classes() -> tuple[type, type, type]:
    """The subclasses, built on first use: importing daphne's modules must wait until daphne installed its reactor."""
    from daphne.http_protocol import HTTPFactory, WebRequest
    from twisted.internet import task
    from twisted.web import http

    from gateway.edge import refusal
    from portal_project.proxies import client_from_forwarded

    class _Request(WebRequest):
        _portal_body = 0

        def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
            kwargs["parsePOSTFormSubmission"] = False
            super().__init__(channel, *args, **kwargs)

        def handleContentChunk(self, data: bytes) -> None:
            channel = self.channel
            if channel is None or channel._portal_refused:
                return
            self._portal_body += len(data)
            if self._portal_body > _limits["max_body_bytes"]:
                channel._portal_refuse(413)
                return
            super().handleContentChunk(data)

    class _Channel(http.HTTPChannel):
        _portal_refused = False

        def dataReceived(self, data: bytes) -> None:
            if not self._handlingRequest and not self._portal_refused and self not in _reading:
                _reading[self] = time.monotonic()
            super().dataReceived(data)

        def allHeadersReceived(self) -> None:
            if self.length is not None and self.length > _limits["max_body_bytes"]:
                self._portal_refuse(413)
                return
            super().allHeadersReceived()

        def allContentReceived(self) -> None:
            _reading.pop(self, None)
            if self._portal_refused:
                return
            super().allContentReceived()

        # Typed as HTTPChannel's own (no default), which already differs from Protocol's (reason=connectionDone).
        def connectionLost(self, reason: Any) -> None:  # type: ignore[override]
            _reading.pop(self, None)
            super().connectionLost(reason)

        def _portal_refuse(self, status: int) -> None:
            """Answers `status` for the request being read, stops reading, and closes once the answer is out."""
            if self._portal_refused:
                return
            self._portal_refused = True
            started = _reading.pop(self, None) or time.monotonic()
            method, path, client = self._portal_describe()
            self.persistent = False
            assert self.transport is not None  # a channel still reading a request has its connection
            # Twisted's zope interfaces declare their methods without self, which mypy reads as one argument too many.
            self.transport.write(refusal(status, method=method, path=path, client=client, started=started))  # type: ignore[call-arg, misc]
            self.loseConnection()

        def _portal_describe(self) -> tuple[str, str, str | None]:
            """Method, path (decoded, no query) and client of the request being read, as far as they arrived."""
            command, target = getattr(self, "_command", b""), getattr(self, "_path", b"")
            path = unquote(target.split(b"?", 1)[0].decode("ascii", "replace")) if target else ""
            peer = self.transport.getPeer() if self.transport is not None else None  # type: ignore[misc]  # zope interface: no self
            host = getattr(peer, "host", None)
            forwarded = self.requests[-1].requestHeaders.getRawHeaders(b"x-forwarded-for") if self.requests else None
            return command.decode("ascii", "replace"), path, client_from_forwarded(forwarded, host)

    class _Factory(HTTPFactory):
        _portal = True

        @staticmethod
        def protocol() -> Any:
            # What Twisted's own HTTPFactory.protocol builds (the wrapper that can switch to HTTP/2), around our channel.
            return http._GenericHTTPChannelProtocol(_Channel())

        def __init__(self, server: Any) -> None:
            super().__init__(server)
            self.timeOut = _limits["keepalive_s"]
            if server.proxy_forwarded_address_header:
                log.warning("daphne --proxy-headers is ignored: the client address comes from PORTAL_TRUSTED_PROXY_COUNT")
                server.proxy_forwarded_address_header = None
                server.proxy_forwarded_port_header = None
                server.proxy_forwarded_proto_header = None
            _start_sweep(task)

        def buildProtocol(self, addr: Any) -> Any:
            protocol = super().buildProtocol(addr)
            if protocol is not None:
                protocol.requestFactory = _Request
            return protocol

    return _Factory, _Channel, _Request


_sweep: Any = None


def _start_sweep(task: Any) -> None:
    global _sweep
    if _sweep is None:
        _sweep = task.LoopingCall(_cut_slow_requests)
        _sweep.start(1.0, now=False)


def _cut_slow_requests() -> None:
    deadline = time.monotonic() - _limits["read_timeout_s"]
    for channel, started in list(_reading.items()):
        if started < deadline:
            channel._portal_refuse(408)
