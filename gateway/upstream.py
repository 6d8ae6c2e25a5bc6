"""Calling a router: one shared async client, candidate upstreams tried in turn before the first byte."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.errors import GatewayError, InvalidRequest, UpstreamError, UpstreamUnavailable
from routerpools.selectors import AliasRoute, Upstream

log = logging.getLogger("gateway.upstream")

RETRYABLE_STATUSES = frozenset({502, 503, 504})
FAILURE_COOLDOWN_S = 5.0  # an upstream that just failed is tried last for this long
CONNECT_TIMEOUT_S = 5.0


@dataclass(slots=True)
class UpstreamCall:
    """An answered upstream call: the response is open (streaming) or read (not)."""

    upstream: Upstream
    response: httpx.Response
    started: float  # perf_counter when the first attempt began
    headers_at: float  # perf_counter when this upstream's status line arrived
    attempts: int


def _make_client() -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30)
    timeout = httpx.Timeout(120.0, connect=CONNECT_TIMEOUT_S)
    # aiohttp's HTTP machinery behind httpx's API measured about 2.5x the default
    # transport's throughput here (see README, Performance); httpx stays selectable.
    if os.environ.get("PORTAL_UPSTREAM_TRANSPORT", "aiohttp") == "aiohttp":
        return httpx.AsyncClient(transport=_aiohttp_transport(limits), timeout=timeout, trust_env=False)
    return httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False)


def _aiohttp_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    from httpx_aiohttp import AiohttpTransport
    from httpx_aiohttp.transport import AiohttpResponseStream

    class KeepsReceivedBytes(AiohttpResponseStream):
        """When a router cuts the connection mid-body, aiohttp raises the payload error before handing out
        the bytes it had already received: tokens the customer must still get before the error event."""

        async def __aiter__(self):  # noqa: ANN204
            try:
                async for chunk in super().__aiter__():
                    yield chunk
            except httpx.TransportError:
                rest = _received_not_read(self._aiohttp_response.content)
                if rest:
                    yield rest
                raise

    class Transport(AiohttpTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await super().handle_async_request(request)
            response.stream = KeepsReceivedBytes(response.stream._aiohttp_response)  # type: ignore[attr-defined]
            return response

    return Transport(limits=limits, trust_env=False)


def _received_not_read(content: Any) -> bytes:
    # aiohttp's public reads all raise a stored exception first; its private buffer read does not.
    try:
        return content._read_nowait(-1) if content._buffer else b""
    except Exception:  # another aiohttp version: nothing to recover, the stream still ends with its error
        return b""


class UpstreamPool:
    """Process-wide: the HTTP client (per event loop) and recent failures per upstream."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed_until: dict[str, float] = {}

    @property
    def client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = _make_client()
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def candidates(self, route: AliasRoute) -> list[Upstream]:
        """Healthy upstreams first, in weighted random order; recently failed ones last."""
        now = time.monotonic()
        healthy: list[Upstream] = []
        cooling: list[Upstream] = []
        for upstream in route.upstreams:
            (cooling if self._failed_until.get(upstream.label, 0.0) > now else healthy).append(upstream)
        return _weighted_order(healthy) + sorted(cooling, key=lambda u: self._failed_until.get(u.label, 0.0))

    def mark_failed(self, upstream: Upstream) -> None:
        self._failed_until[upstream.label] = time.monotonic() + FAILURE_COOLDOWN_S

    def mark_ok(self, upstream: Upstream) -> None:
        self._failed_until.pop(upstream.label, None)

    async def call(
        self, *, route: AliasRoute, body: dict[str, Any], stream: bool, request_id: str, deadline: float
    ) -> UpstreamCall:
        """Send to the first upstream that answers; retry on connect errors, timeouts and 502/503/504."""
        if not route.upstreams:
            raise UpstreamUnavailable()
        started = time.perf_counter()
        attempts = 0
        for upstream in self.candidates(route):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            attempts += 1
            headers = {"content-type": "application/json"}
            if stream:
                headers["accept"] = "text/event-stream"
            if upstream.auth_key:
                headers["authorization"] = f"Bearer {upstream.auth_key}"
            url = f"{upstream.base_url}/api/v3/completions/{upstream.session_id}"
            timeout = httpx.Timeout(remaining, connect=min(CONNECT_TIMEOUT_S, remaining))
            request = self.client.build_request("POST", url, json=body, headers=headers, timeout=timeout)
            try:
                # The deadline covers the wait for the status line; a hung upstream must not hold us.
                response = await asyncio.wait_for(self.client.send(request, stream=True), timeout=remaining)
            except (TimeoutError, httpx.TransportError) as exc:
                self.mark_failed(upstream)
                log.warning("upstream %s failed before answering (%s) request_id=%s", upstream.label, exc.__class__.__name__, request_id)
                continue
            if response.status_code in RETRYABLE_STATUSES:
                await response.aclose()
                self.mark_failed(upstream)
                log.warning("upstream %s answered %d request_id=%s", upstream.label, response.status_code, request_id)
                continue
            if response.status_code >= 300:
                await self._raise_for_status(upstream, response, request_id)
            if not stream:
                try:
                    await asyncio.wait_for(response.aread(), timeout=max(0.001, deadline - time.monotonic()))
                except (TimeoutError, httpx.TransportError) as exc:
                    await response.aclose()
                    self.mark_failed(upstream)
                    log.warning("upstream %s failed mid-answer (%s) request_id=%s", upstream.label, exc.__class__.__name__, request_id)
                    continue
            self.mark_ok(upstream)
            return UpstreamCall(upstream=upstream, response=response, started=started, headers_at=time.perf_counter(), attempts=attempts)
        raise UpstreamUnavailable()

    async def _raise_for_status(self, upstream: Upstream, response: httpx.Response, request_id: str) -> None:
        status = response.status_code
        await response.aclose()  # the router's body never reaches the customer
        error: GatewayError
        if status in (401, 403):
            log.error(
                "OPERATOR ALERT: upstream %s refused our router auth key (%d); check the pool's auth keys request_id=%s",
                upstream.label, status, request_id,
            )
            error = UpstreamError("the upstream model server rejected the gateway's credentials")
        elif status in (400, 422):
            error = InvalidRequest("the model server could not process this request")
        else:
            log.warning("upstream %s answered %d request_id=%s", upstream.label, status, request_id)
            error = UpstreamError()
        raise error


def _weighted_order(upstreams: list[Upstream]) -> list[Upstream]:
    if len(upstreams) <= 1:
        return upstreams
    if all(u.weight == upstreams[0].weight for u in upstreams):
        shuffled = upstreams[:]
        random.shuffle(shuffled)
        return shuffled
    # Efraimidis-Spirakis: sort by u^(1/w), a weighted random permutation in one pass.
    return sorted(upstreams, key=lambda u: random.random() ** (1.0 / u.weight), reverse=True)


upstreams = UpstreamPool()
