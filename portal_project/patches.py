"""Every place the project relies on another library's internals, listed in one module with what it touches and why.

Each entry names the private or undocumented thing, the module that uses it, the reason (each was measured or is
needed for correctness), and a `check` that returns what no longer has the expected shape. tests/test_patches.py
runs every check, plus a behavioural test per patch, so an upgrade that moves one of these fails the suite instead
of silently losing a speed-up, a body cap or the tokens a customer paid for.

The small patches live here; the server-layer overrides of daphne and Twisted stay in
portal_project/twisted_tuning.py (a subclass per Twisted class, installed at start-up, with its own shape check,
which this list runs as one entry).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Patch:
    name: str
    touches: str  # the library internal relied upon
    used_in: str  # where
    why: str
    check: Callable[[], list[str]]  # problems found; empty while the internal has the expected shape


def _parameters(function: Any) -> list[str]:
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return []


def _expect(owner: Any, attribute: str, parameters: list[str], *, coroutine: bool | None = None) -> list[str]:
    label = f"{getattr(owner, '__module__', '?')}.{getattr(owner, '__qualname__', owner)}.{attribute}"
    function = getattr(owner, attribute, None)
    if function is None:
        return [f"{label} is gone"]
    problems = []
    if _parameters(function)[: len(parameters)] != parameters:
        problems.append(f"{label} takes {_parameters(function)}, expected {parameters} first")
    if coroutine is not None and inspect.iscoroutinefunction(function) != coroutine:
        problems.append(f"{label} is {'no longer' if coroutine else 'now'} a coroutine function")
    return problems


# --- 1. Twisted's Content-Type parser, cached -----------------------------------------------------------------------


def cache_twisted_content_type_parse() -> None:
    """Twisted parses every request's Content-Type with the email package (~5% of the event loop per request,
    bench/README.md); the function is pure and clients send few distinct values. Skipped when Twisted renames it
    (a speed-up only) or when it is not installed (the ASGI app called in-process)."""
    try:
        from twisted.web import http
    except ImportError:
        return
    parse = getattr(http, "_parseContentType", None)
    if parse is None or hasattr(parse, "cache_info"):
        return
    http._parseContentType = functools.lru_cache(maxsize=256)(parse)


def _check_content_type_parse() -> list[str]:
    from twisted.web import http

    parse = getattr(http, "_parseContentType", None)
    if parse is None:
        return ["twisted.web.http._parseContentType is gone"]
    parse = getattr(parse, "__wrapped__", parse)
    problems = [] if _parameters(parse) == ["line"] else [f"_parseContentType takes {_parameters(parse)}, expected ['line']"]
    names = getattr(getattr(http.Request, "requestReceived", None), "__code__", None)
    if names is None or "_parseContentType" not in names.co_names:
        problems.append("twisted.web.http.Request.requestReceived no longer calls _parseContentType")
    return problems


# --- 2. aiohttp: the bytes received before a connection broke -------------------------------------------------------


def aiohttp_transport_keeping_received_bytes(limits: Any) -> Any:
    """httpx's API over aiohttp's HTTP machinery (about 2.5x the default transport's throughput here, README's
    Performance), with one change: when a router cuts the connection mid-body, aiohttp raises the payload error
    before handing out the bytes it had already received. Those are tokens the customer must still get (and is
    billed for) before the error event, so the stream yields them first."""
    import httpx
    from httpx_aiohttp import AiohttpTransport
    from httpx_aiohttp.transport import AiohttpResponseStream

    class KeepsReceivedBytes(AiohttpResponseStream):
        async def __aiter__(self):  # noqa: ANN204
            try:
                async for chunk in super().__aiter__():
                    yield chunk
            except httpx.TransportError:
                rest = received_not_read(self._aiohttp_response.content)
                if rest:
                    yield rest
                raise

    class Transport(AiohttpTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await super().handle_async_request(request)
            response.stream = KeepsReceivedBytes(response.stream._aiohttp_response)  # type: ignore[union-attr]  # private attribute of httpx-aiohttp's stream
            return response

    return Transport(limits=limits, trust_env=False)


def received_not_read(content: Any) -> bytes:
    """What an aiohttp StreamReader holds unread. Its public reads all raise a stored exception first; its private
    buffer read does not."""
    try:
        return content._read_nowait(-1) if content._buffer else b""
    except Exception:  # another aiohttp version: nothing to recover, the stream still ends with its error
        return b""


def _check_aiohttp() -> list[str]:
    from aiohttp.streams import StreamReader
    from httpx_aiohttp.transport import AiohttpResponseStream, AiohttpTransport

    problems = _expect(StreamReader, "_read_nowait", ["self", "n"])
    if "_buffer" not in inspect.getsource(StreamReader.__init__):
        problems.append("aiohttp StreamReader keeps no _buffer")
    if _parameters(AiohttpResponseStream.__init__) != ["self", "aiohttp_response"]:
        problems.append(f"AiohttpResponseStream takes {_parameters(AiohttpResponseStream.__init__)}")
    if "_aiohttp_response" not in inspect.getsource(AiohttpResponseStream):
        problems.append("AiohttpResponseStream keeps no _aiohttp_response")
    problems += _expect(AiohttpTransport, "handle_async_request", ["self", "request"], coroutine=True)
    return problems


# --- 3. Django's ASGI handler, driven by the gateway's fast path ----------------------------------------------------


def _check_django_asgi() -> list[str]:
    """gateway/asgi.py serves /v1 outside Django's per-request thread and middleware with a request class of its own
    (GatewayRequest, an HttpRequest whose META is built as ASGIRequest builds it) and sends Django responses itself, as
    ASGIHandler.send_response does: undocumented pieces, so their shape is checked."""
    from django.core.handlers import asgi
    from django.http import HttpRequest
    from django.http.response import HttpResponseBase

    return (
        _expect(asgi, "get_script_prefix", ["scope"])
        + _expect(HttpRequest, "_get_scheme", ["self"])
        + _expect(HttpResponseBase, "make_bytes", ["self", "value"])
        + _expect(HttpResponseBase, "items", ["self"])
        + ([] if hasattr(HttpResponseBase(), "cookies") else ["HttpResponseBase().cookies is gone"])
    )


# --- 4. Django's psycopg connection pools, read for the probes ------------------------------------------------------


def django_connection_pool(wrapper: Any) -> Any:
    """The psycopg_pool.ConnectionPool Django made for this connection alias, or None before the first connection.
    Django keeps its pools in a class-level dict of the PostgreSQL backend; reading it never creates or opens one.
    /health and /ready report its size and saturation (gateway/dbpool.py)."""
    return type(wrapper)._connection_pools.get(wrapper.alias)


def _check_django_pools() -> list[str]:
    from django.db.backends.postgresql.base import DatabaseWrapper

    pools = getattr(DatabaseWrapper, "_connection_pools", None)
    return [] if isinstance(pools, dict) else ["django's postgresql DatabaseWrapper._connection_pools is gone"]


# --- 5. daphne and Twisted's server classes (portal_project/twisted_tuning.py) --------------------------------------


def _check_twisted_tuning() -> list[str]:
    from portal_project import twisted_tuning

    return twisted_tuning.shape_problems()


def _check_allauth_flows() -> list[str]:
    from allauth.account.internal.flows import email_verification, password_change

    return _expect(password_change, "finalize_password_change", ["request", "user"]) + _expect(
        email_verification, "send_verification_email_to_address", ["request", "address"]
    )


PATCHES: tuple[Patch, ...] = (
    Patch(
        name="twisted-content-type-cache",
        touches="twisted.web.http._parseContentType (replaced by an LRU-cached wrapper)",
        used_in="portal_project/patches.py, installed by portal_project/twisted_tuning.install",
        why="~5% of the event loop per request went to parsing the same few Content-Type values",
        check=_check_content_type_parse,
    ),
    Patch(
        name="aiohttp-received-bytes",
        touches="aiohttp StreamReader._read_nowait/_buffer; httpx_aiohttp AiohttpResponseStream._aiohttp_response",
        used_in="gateway/upstream.py (the upstream client's transport)",
        why="tokens received before a router cut the connection reach the customer before the error event",
        check=_check_aiohttp,
    ),
    Patch(
        name="django-asgi-handler",
        touches="django.core.handlers.asgi.get_script_prefix(scope), HttpRequest._get_scheme (overridden by "
        "GatewayRequest), HttpResponseBase.items/cookies/make_bytes (read to send a response as send_response does)",
        used_in="gateway/asgi.py (the /v1 fast path: GatewayRequest, _send_response)",
        why="serving /v1 without Django's per-request thread, middleware, temporary body file and wrapping generators, "
        "with Django's request and response classes still what the views see (bench/README.md: half the layer's CPU)",
        check=_check_django_asgi,
    ),
    Patch(
        name="django-connection-pools",
        touches="django.db.backends.postgresql.base.DatabaseWrapper._connection_pools (read only)",
        used_in="gateway/dbpool.py (the pool's size and saturation on /health and /ready)",
        why="Django offers no public way to reach the psycopg pool it made; opening a connection to ask would be worse",
        check=_check_django_pools,
    ),
    Patch(
        name="daphne-server-overrides",
        touches="daphne.server.HTTPFactory, twisted.web.http.HTTPChannel and Request methods (subclassed)",
        used_in="portal_project/twisted_tuning.py",
        why="body cap and read deadline before the body arrives, keep-alive timeout, no proxy-header parsing by daphne",
        check=_check_twisted_tuning,
    ),
    Patch(
        name="allauth-account-flows",
        touches="allauth.account.internal.flows: password_change.finalize_password_change, "
        "email_verification.send_verification_email_to_address (called, not patched)",
        used_in="portal/views/accounts.py (the profile's password form), portal/views/verification.py (resend)",
        why="allauth's own ending of a password change (other sessions out, notice mail, signal) and its rate-limited "
        "resend, from the portal's pages, instead of a copy that drifts from allauth",
        check=_check_allauth_flows,
    ),
)


def problems() -> dict[str, list[str]]:
    """Every patch whose internal moved, with what moved; empty when all still fit."""
    found = {patch.name: patch.check() for patch in PATCHES}
    return {name: moved for name, moved in found.items() if moved}
