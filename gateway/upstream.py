"""Calling a router: one shared async client, candidate upstreams tried in turn before the first byte."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings

from gateway.errors import GatewayError, InvalidRequest, UpstreamError, UpstreamUnavailable
from gateway.translate.common import json_compact
from portal_project.patches import aiohttp_transport_keeping_received_bytes
from routerpools.selectors import AliasRoute, Upstream

log = logging.getLogger("gateway.upstream")

RETRYABLE_STATUSES = frozenset({502, 503, 504})
BREAKER_THRESHOLD = settings.PORTAL_BREAKER_FAILURES  # consecutive failures that open a circuit
BREAKER_COOLDOWN_S = settings.PORTAL_BREAKER_COOLDOWN_MS / 1000  # open for this long, then half-open
HEALTH_INTERVAL_S = settings.PORTAL_HEALTH_INTERVAL_MS / 1000
HEALTH_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 5.0
USER_AGENT = "cortensor-gateway"


@dataclass(slots=True)
class UpstreamCall:
    """An answered upstream call: the response is open (streaming) or read (not)."""

    upstream: Upstream
    response: httpx.Response
    started: float  # perf_counter when the first attempt began
    headers_at: float  # perf_counter when this upstream's status line arrived
    attempts: int
    deadline: float  # monotonic: when this attempt's time (the alias timeout, within the request's deadline) is up


def _make_transport() -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30)
    # aiohttp's HTTP machinery behind httpx's API measured about 2.5x the default
    # transport's throughput here (see README, Performance); httpx stays selectable.
    if os.environ.get("PORTAL_UPSTREAM_TRANSPORT", "aiohttp") == "aiohttp":
        return aiohttp_transport_keeping_received_bytes(limits)  # portal_project/patches.py
    return httpx.AsyncHTTPTransport(limits=limits, trust_env=False)


@dataclass(slots=True)
class Breaker:
    """A circuit breaker per upstream (endpoint x session): open after consecutive failures, half-open after a cool-down."""

    failures: int = 0
    open_until: float = 0.0

    def state(self, now: float) -> str:
        if self.failures < BREAKER_THRESHOLD:
            return "closed"
        return "open" if now < self.open_until else "half-open"


class UpstreamPool:
    """Process-wide: the HTTP client (per event loop), a breaker per upstream, and background health probes."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None
        self._transport: httpx.AsyncBaseTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._breakers: dict[str, Breaker] = {}
        self._probe_down: set[str] = set()  # base URLs whose status probe failed last time
        self._prober: asyncio.Task[None] | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        """For the status probes. Completions go to the same transport (and connection pool) directly."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._transport = _make_transport()
            self._client = httpx.AsyncClient(
                transport=self._transport, timeout=httpx.Timeout(120.0, connect=CONNECT_TIMEOUT_S), trust_env=False
            )
            self._loop = loop
            self._prober = None
        return self._client

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        self.client  # noqa: B018 -- (re)binds the client and its transport to this event loop
        assert self._transport is not None
        return self._transport

    async def aclose(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            self._prober = None
        if self._client is not None:
            client, self._client, self._transport = self._client, None, None
            await client.aclose()

    # --- health ----------------------------------------------------------------------------
    def is_healthy(self, upstream: Upstream, now: float | None = None) -> bool:
        if upstream.base_url in self._probe_down:
            return False
        breaker = self._breakers.get(upstream.label)
        return breaker is None or breaker.state(time.monotonic() if now is None else now) != "open"

    def healthy_count(self, route: AliasRoute) -> int:
        now = time.monotonic()
        return sum(1 for u in route.upstreams if self.is_healthy(u, now))

    def candidates(self, route: AliasRoute) -> list[Upstream]:
        """One half-open upstream first (its trial), then healthy ones in weighted random order, then open ones as a
        last resort.

        A half-open upstream placed after the healthy ones would never be tried while they answer, and so never
        close again. It goes first, for one request: claiming the trial re-arms its cool-down, so concurrent
        requests see it open until the trial's outcome closes it (mark_ok) or opens it again (mark_failed).
        """
        now = time.monotonic()
        closed: list[Upstream] = []
        trial: list[Upstream] = []
        down: list[Upstream] = []
        for upstream in route.upstreams:
            breaker = self._breakers.get(upstream.label)
            state = breaker.state(now) if breaker else "closed"
            if upstream.base_url in self._probe_down or state == "open":
                down.append(upstream)
            elif state == "half-open" and not trial:
                assert breaker is not None
                breaker.open_until = now + BREAKER_COOLDOWN_S
                trial.append(upstream)
            elif state == "half-open":
                down.append(upstream)  # the next request's trial
            else:
                closed.append(upstream)
        down.sort(key=lambda u: self._breakers[u.label].open_until if u.label in self._breakers else 0.0)
        return trial + _weighted_order(closed) + down

    def mark_failed(self, upstream: Upstream) -> None:
        breaker = self._breakers.setdefault(upstream.label, Breaker())
        breaker.failures += 1
        if breaker.failures >= BREAKER_THRESHOLD:
            if breaker.failures == BREAKER_THRESHOLD:
                log.warning("circuit opened for upstream %s after %d consecutive failures", upstream.label, breaker.failures)
            breaker.open_until = time.monotonic() + BREAKER_COOLDOWN_S

    def mark_ok(self, upstream: Upstream) -> None:
        breaker = self._breakers.get(upstream.label)
        if breaker is not None and breaker.failures:
            if breaker.failures >= BREAKER_THRESHOLD:
                log.info("circuit closed for upstream %s", upstream.label)
            breaker.failures = 0

    def ensure_health_checks(self, routes: Callable[[], dict[str, AliasRoute]]) -> None:
        """Start this process's background probe of every router endpoint (GET /api/v1/status)."""
        if self._prober is None or self._prober.done():
            # A context of its own: started from some request, its log lines must not carry that request's id.
            self._prober = asyncio.get_running_loop().create_task(
                self._probe_forever(routes), name="gateway-health-probe", context=contextvars.Context()
            )

    async def _probe_forever(self, routes: Callable[[], dict[str, AliasRoute]]) -> None:
        while True:
            try:
                await self.probe_once(routes())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a probe must never die
                log.warning("health probe round failed: %s", exc.__class__.__name__)
            await asyncio.sleep(HEALTH_INTERVAL_S)

    async def probe_once(self, routes: dict[str, AliasRoute]) -> None:
        endpoints: dict[str, str] = {}
        for route in routes.values():
            for upstream in route.upstreams:
                endpoints.setdefault(upstream.base_url, upstream.auth_key)
        results = await asyncio.gather(*(self._probe(url, key) for url, key in endpoints.items()))
        for (url, _), ok in zip(endpoints.items(), results, strict=True):
            if ok and url in self._probe_down:
                log.info("router %s answers its status probe again", url)
                self._probe_down.discard(url)
            elif not ok and url not in self._probe_down:
                log.warning("router %s failed its status probe; taken out of rotation", url)
                self._probe_down.add(url)

    async def _probe(self, base_url: str, auth_key: str) -> bool:
        headers = {"authorization": f"Bearer {auth_key}"} if auth_key else {}
        try:
            response = await asyncio.wait_for(
                self.client.get(f"{base_url}/api/v1/status", headers=headers, timeout=HEALTH_TIMEOUT_S), HEALTH_TIMEOUT_S
            )
        except (TimeoutError, httpx.HTTPError):
            return False
        return 200 <= response.status_code < 300

    async def call(
        self, *, route: AliasRoute, body: dict[str, Any], stream: bool, request_id: str, deadline: float, attempt_timeout: float
    ) -> UpstreamCall:
        """Send to the first upstream that answers; retry on connect errors, timeouts and 502/503/504.

        Each attempt gets `attempt_timeout` (the alias's timeout), all of them together the request's `deadline`:
        an upstream slower than its alias allows is given up for the next one while the request has time left.
        """
        if not route.upstreams:
            raise UpstreamUnavailable()
        started = time.perf_counter()
        attempts = 0
        transport = self.transport
        content = json_compact(body).encode()  # once, for every attempt
        for upstream in self.candidates(route):
            now = time.monotonic()
            attempt_deadline = min(deadline, now + attempt_timeout)
            remaining = attempt_deadline - now
            if remaining <= 0:
                break
            attempts += 1
            headers = {"content-type": "application/json", "user-agent": USER_AGENT}
            if stream:
                headers["accept"] = "text/event-stream"
            if upstream.auth_key:
                headers["authorization"] = f"Bearer {upstream.auth_key}"
            url = f"{upstream.base_url}/api/v3/completions/{upstream.session_id}"
            timeout = {"connect": min(CONNECT_TIMEOUT_S, remaining), "read": remaining, "write": remaining, "pool": remaining}
            # Straight to the transport (httpx's public transport API): the client's layers (auth, redirects,
            # cookie jar, URL merging) do nothing for a router call and were ~10% of the loop's time per request.
            request = httpx.Request("POST", url, content=content, headers=headers, extensions={"timeout": timeout})
            try:
                # The deadline covers the wait for the status line; a hung upstream must not hold us.
                # (asyncio.timeout, not wait_for: no extra task per call on the hot path.)
                async with asyncio.timeout(remaining):
                    response = await transport.handle_async_request(request)
            except (TimeoutError, httpx.TransportError) as exc:
                self.mark_failed(upstream)
                log.warning(
                    "upstream %s failed before answering (%s) request_id=%s", upstream.label, exc.__class__.__name__, request_id
                )
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
                    async with asyncio.timeout(max(0.001, attempt_deadline - time.monotonic())):
                        await response.aread()
                except (TimeoutError, httpx.TransportError) as exc:
                    await response.aclose()
                    self.mark_failed(upstream)
                    log.warning(
                        "upstream %s failed mid-answer (%s) request_id=%s", upstream.label, exc.__class__.__name__, request_id
                    )
                    continue
            self.mark_ok(upstream)
            return UpstreamCall(
                upstream=upstream,
                response=response,
                started=started,
                headers_at=time.perf_counter(),
                attempts=attempts,
                deadline=attempt_deadline,
            )
        raise UpstreamUnavailable()

    async def _raise_for_status(self, upstream: Upstream, response: httpx.Response, request_id: str) -> None:
        status = response.status_code
        await response.aclose()  # the router's body never reaches the customer
        error: GatewayError
        if status in (401, 403):
            log.error(
                "OPERATOR ALERT: upstream %s refused our router auth key (%d); check the pool's auth keys request_id=%s",
                upstream.label,
                status,
                request_id,
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
