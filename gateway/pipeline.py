"""The request path, top to bottom: authenticate → resolve alias → translate → call the router → translate back → record."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils import timezone

from billing.services import Price, request_cost_micros, usage_cost_micros
from gateway import metrics
from gateway.auth import authenticate
from gateway.errors import (
    GatewayError,
    InsufficientBalance,
    InvalidRequest,
    LimitsUnavailable,
    ModelNotFound,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    RequestTooLarge,
    SpendCapReached,
    UpstreamError,
    UpstreamUnavailable,
    UsageBacklogFull,
)
from gateway.limits import Admission, limiter
from gateway.logs import new_request_id as new_request_id  # where it used to live; made once per request in asgi.py
from gateway.logs import request_id_of, request_id_var
from gateway.principal import Principal
from gateway.recorder import recorder
from gateway.relay import StreamRelay
from gateway.state import state
from gateway.surfaces import ENVELOPE_ROUTE, AnswerContext, StreamWriter, Surface, json_response
from gateway.translate.bounds import JSONTooDeep, loads_bounded
from gateway.translate.common import CompletionRequest, Usage, cut_at_stop, estimate_tokens
from gateway.translate.prompt import render_prompt
from gateway.translate.router import build_router_body, parse_router_completion
from gateway.upstream import UpstreamCall, upstreams
from routerpools.selectors import AliasRoute
from usage.services import RequestLogRecord, UsageRecord

log = logging.getLogger("gateway")


CLIENT_CLOSED = 499  # recorded when the client hung up before any response was sent


def ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


@dataclass(slots=True)
class Exchange:
    """One customer request as it moves through the pipeline; what the usage and log rows are made of."""

    request: HttpRequest
    surface: Surface
    request_id: str = ""  # the HTTP request's one id (gateway/asgi.py), read from the request unless given
    started: float = field(default_factory=time.perf_counter)
    created_at: datetime = field(default_factory=timezone.now)
    principal: Principal | None = None
    route: AliasRoute | None = None
    model: str | None = None
    admission: Admission | None = None
    upstream_started: float | None = None
    upstream_answered: float | None = None
    end_user: str = ""  # the customer's id of their end user, for the usage row (end_user_of)
    price: Price | None = None  # the alias's price on the organization's plan (state.price); None: unpriced
    cost_micros: int = 0  # what the request is billed: set by usage_row, settled with the reservation by release

    def __post_init__(self) -> None:
        if not self.request_id:
            self.request_id = request_id_of(self.request)

    def headers(self) -> dict[str, str]:
        headers = {"x-request-id": self.request_id}
        if self.surface.anthropic:
            headers["request-id"] = self.request_id
        if self.admission is not None:
            headers.update(self.admission.headers())
        return headers

    def overhead(self) -> float:
        """Seconds the gateway itself spent so far: everything but the wait for the upstream's answer."""
        now = time.perf_counter()
        if self.upstream_started is None or self.upstream_answered is None:
            return now - self.started
        return (self.upstream_started - self.started) + (now - self.upstream_answered)

    def stamp_overhead(self, response: HttpResponseBase) -> None:
        overhead = self.overhead()
        response["x-gateway-overhead-ms"] = f"{overhead * 1000:.2f}"
        metrics.OVERHEAD.labels(self.surface.route).observe(overhead)

    def record(self, *, usage: UsageRecord | None, log_row: RequestLogRecord) -> None:
        """Queue the rows for the database and count the request in the metrics."""
        recorder.record(usage=usage, log_row=log_row)
        alias = self.route.alias if self.route else ""
        metrics.REQUESTS.labels(self.surface.route, alias, str(log_row.status)).inc()
        if usage is not None and usage.upstream_latency_ms is not None:
            metrics.UPSTREAM_LATENCY.labels(alias).observe(usage.upstream_latency_ms / 1000)
        if usage is not None and usage.ttfb_ms is not None:
            metrics.TTFB.labels(alias).observe(usage.ttfb_ms / 1000)

    async def release(self, actual_tokens: int | None) -> None:
        """Settle the token reservation, the money reservation (to the cost usage_row priced, 0 before it ran) and free
        the concurrency slot (idempotent)."""
        if self.admission is not None:
            await limiter.finish(self.admission, actual_tokens=actual_tokens, actual_cost_micros=self.cost_micros)

    def log_row(self, status: int) -> RequestLogRecord:
        meta = self.request.META
        return RequestLogRecord(
            request_id=self.request_id,
            method=self.request.method or "",
            path=_storable(self.request.path, 300),
            status=status,
            created_at=self.created_at,
            organization_id=self.principal.organization_id if self.principal else None,
            client_ip=meta.get("REMOTE_ADDR") or None,
            user_agent=_storable(meta.get("HTTP_USER_AGENT", ""), 300),
            duration_ms=ms(time.perf_counter() - self.started),
            client_request_id=_storable(meta.get("HTTP_X_REQUEST_ID", ""), 128),
            key_id=self.principal.key_id if self.principal else None,
        )

    def usage_row(
        self,
        *,
        status: str,
        http_status: int,
        call: UpstreamCall | None,
        streamed: bool,
        usage: Usage | None,
        error_code: str = "",
        ttfb: float | None = None,
    ) -> UsageRecord | None:
        if self.route is None or self.principal is None:
            return None  # refused before a model was chosen: a request log row only
        now = time.perf_counter()
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        # Priced once, here, from the final tokens: the header, the usage row and the ledger debit all carry this.
        self.cost_micros = usage_cost_micros(
            organization_id=self.principal.organization_id,
            status=status,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            price=self.price,
            total_tokens=usage.total_tokens if usage else 0,
        )
        return UsageRecord(
            request_id=self.request_id,
            organization_id=self.principal.organization_id,
            api_key_id=self.principal.key_id,
            alias=self.route.alias,
            route=self.surface.route,
            status=status,
            http_status=http_status,
            created_at=self.created_at,
            pool=self.route.pool_name,
            endpoint_url=call.upstream.base_url if call else "",
            session_id=call.upstream.session_id if call else None,
            streamed=streamed,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=usage.total_tokens if usage else 0,
            estimated=usage.estimated if usage else False,
            error_code=error_code,
            upstream_latency_ms=ms(now - call.started) if call else None,
            ttfb_ms=ms(ttfb) if ttfb is not None else None,
            duration_ms=ms(now - self.started),
            end_user=self.end_user,
            cost_micros=self.cost_micros,
        )


COST_MICROS_HEADER = "x-cortensor-cost-micros"
COST_USD_HEADER = "x-cortensor-cost-usd"


def cost_headers(cost_micros: int) -> dict[str, str]:
    """What a non-streamed answer cost: integer micro-units, and the same as an exact USD decimal."""
    dollars, fraction = divmod(cost_micros, 1_000_000)
    return {COST_MICROS_HEADER: str(cost_micros), COST_USD_HEADER: f"{dollars}.{fraction:06d}"}


def _storable(text: str, limit: int) -> str:
    """Client-sent text for a log row: PostgreSQL refuses NUL in text (`/v1/models/%00` is a path with one)."""
    return text.replace("\x00", "\ufffd")[:limit]


def end_user_of(creq: CompletionRequest) -> str:
    """The request's end-user id (OpenAI `user`, Anthropic `metadata.user_id`; bounded by the parsers) as PostgreSQL
    stores it: JSON may carry NUL and lone surrogates, which a text column and UTF-8 refuse, and a refused row would
    be dropped from the usage batch."""
    user = creq.user
    if not user:
        return ""
    if user.isascii():
        return user.replace("\x00", "\ufffd")
    return user.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _read_body(request: HttpRequest) -> object:
    limit = settings.PORTAL_MAX_BODY_BYTES
    declared = request.META.get("CONTENT_LENGTH")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"request body is larger than {limit} bytes")
    try:
        raw = request.body
    except RequestDataTooBig:
        raise RequestTooLarge(f"request body is larger than {limit} bytes") from None
    if len(raw) > limit:
        raise RequestTooLarge(f"request body is larger than {limit} bytes")
    if not raw:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        return loads_bounded(raw)
    except JSONTooDeep as exc:
        raise InvalidRequest(f"the request body is nested deeper than {exc.limit} levels") from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON") from None


def _resolve(model: str | None, principal: Principal, surface: Surface) -> AliasRoute:
    if not model:
        if surface.route != ENVELOPE_ROUTE or not settings.PORTAL_DEFAULT_MODEL:
            raise InvalidRequest("you must provide a model parameter", param="model")
        model = settings.PORTAL_DEFAULT_MODEL
    route = state.route(model)
    if route is None:
        raise ModelNotFound(f"the model '{model[:100]}' does not exist", param="model")
    if not principal.may_use(route.alias):
        raise PermissionDenied(f"your plan does not include the model '{route.alias}'", param="model", code="model_not_allowed")
    if route.pool_draining:
        raise UpstreamUnavailable()
    return route


def _price(principal: Principal, route: AliasRoute) -> Price | None:
    """The alias's price on the principal's plan; a paid plan is never served an alias that has no price (it would be
    billed nothing), a free plan is (its requests cost 0)."""
    plan = principal.plan
    price = state.price(plan.plan_id if plan else None, route.alias)
    if price is None and plan is not None and plan.paid:
        raise PermissionDenied(
            f"the model '{route.alias}' has no price on your plan yet, so it cannot be billed; use another model",
            param="model",
            code="model_not_priced",
        )
    return price


def _cost_of(organization_id: int, price: Price | None) -> Callable[[Usage], int]:
    """A completed stream's cost for its final usage event: what usage_row will price the same tokens at."""

    def cost(usage: Usage) -> int:
        return usage_cost_micros(
            organization_id=organization_id,
            status="ok",
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            price=price,
            total_tokens=usage.total_tokens,
        )

    return cost


def _prompt(creq: CompletionRequest, route: AliasRoute) -> str:
    if creq.messages is not None:
        return render_prompt(creq.messages, route.prompt_format, system=creq.system)
    return creq.prompt or ""


def _attempt_timeout(route: AliasRoute) -> int:
    """How long one upstream may take: the alias's timeout (what the router itself is told), never above the gateway's."""
    return min(route.timeout_s, settings.PORTAL_UPSTREAM_TIMEOUT_S)


def _router_body(creq: CompletionRequest, route: AliasRoute, prompt: str, request_id: str) -> dict[str, Any]:
    # No max_tokens asked: the alias's cap, the same number /v1/models shows (max_output_tokens), never a smaller
    # hidden default that would cut answers short with no reason the client could see.
    max_tokens = min(creq.max_tokens or route.max_tokens_cap, route.max_tokens_cap)
    return build_router_body(
        prompt=prompt,
        stream=creq.stream,
        max_tokens=max_tokens,
        timeout_s=_attempt_timeout(route),
        request_id=request_id,
        temperature=creq.temperature,
        top_p=creq.top_p,
        top_k=creq.top_k,
        presence_penalty=creq.presence_penalty,
        frequency_penalty=creq.frequency_penalty,
        stop=creq.stop or None,
        prompt_type=route.prompt_type,
        prompt_template=route.prompt_template or None,
    )


async def handle_completion(request: HttpRequest, surface: Surface, *, principal: Principal | None = None) -> HttpResponseBase:
    """The whole request path. `principal` is given by callers that authenticated otherwise (the portal's playground)."""
    ex = Exchange(request=request, surface=surface)
    request_id_var.set(ex.request_id)  # every log line of this request (and its stream task) carries it
    creq: CompletionRequest | None = None
    try:
        await state.ensure_started()
        recorder.ensure_started()
        upstreams.ensure_health_checks(state.routes)
        ex.principal = principal or await authenticate(request.headers, surface=surface.limits_surface)
        if recorder.usage_backlog_full:  # the database is away and usage rows reached their bound (recorder.py)
            raise UsageBacklogFull(headers={"retry-after": "5"})
        creq = surface.parse(_read_body(request))
        if surface.prepare is not None:  # a surface's own step (/v1/responses: a previous response's conversation)
            await surface.prepare(creq, ex.principal.organization_id)
        ex.model = creq.model
        ex.end_user = end_user_of(creq)
        ex.route = _resolve(creq.model, ex.principal, surface)
        ex.model = ex.route.alias
        ex.price = _price(ex.principal, ex.route)
        prompt = _prompt(creq, ex.route)
        body = _router_body(creq, ex.route, prompt, ex.request_id)
        ctx = AnswerContext(
            request_id=ex.request_id,
            model=ex.route.alias,
            pool_name=ex.route.pool_name,
            created=int(time.time()),
            prompt_tokens_estimate=estimate_tokens(prompt),
            include_usage=creq.include_usage,
            organization_id=ex.principal.organization_id,
            api_key_id=ex.principal.key_id,
            request=creq,
            cost_of=_cost_of(ex.principal.organization_id, ex.price),
        )
        ex.admission = await limiter.admit(
            ex.principal,
            request_id=ex.request_id,
            tokens=ctx.prompt_tokens_estimate,  # must fit whole: a prompt over the limit is refused
            # max_tokens as asked: capped at what the minute's budget leaves. Not asked (the alias's cap): only as far
            # as the minute has room now, so a request naming no max_tokens never waits for its default's sake.
            up_to_tokens=body["max_tokens"] if creq.max_tokens else 0,
            spare_tokens=0 if creq.max_tokens else body["max_tokens"],
            surface=ex.surface.limits_surface,
            # What the request may cost at most: its prompt estimate and every token its answer may have, at its
            # price (an unpriced alias on a free plan: 0). A router count above the estimate is billed all the same.
            reserve_micros=request_cost_micros(
                prompt_tokens=ctx.prompt_tokens_estimate,
                completion_tokens=body["max_tokens"],
                input_micros_per_million=ex.price.input_micros_per_million,
                output_micros_per_million=ex.price.output_micros_per_million,
            )
            if ex.price is not None
            else 0,
        )
        # The gateway's timeout bounds the request, every attempt included; each attempt gets the alias's timeout.
        deadline = time.monotonic() + settings.PORTAL_UPSTREAM_TIMEOUT_S
        if creq.stream:
            return await _stream(ex, creq, ctx, body, deadline)
        return await _complete(ex, creq, ctx, body, deadline)
    except GatewayError as err:
        await ex.release(0)  # refused or failed before any token was produced
        if (
            ex.admission is None
            and ex.principal is not None
            and not isinstance(err, (RateLimited, QuotaExceeded, LimitsUnavailable, InsufficientBalance, SpendCapReached))
        ):
            # Refused after authentication but before admission (bad body, model not allowed, pool draining):
            # the rate-limit headers still report the counters, read without consuming anything.
            ex.admission = await limiter.peek(ex.principal, surface=ex.surface.limits_surface)
        return _refuse(ex, err)
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError):
            # The client hung up before an answer began (Django cancels the view): the request still
            # leaves its usage event and log line, with nginx's 499 "client closed request".
            usage = ex.usage_row(
                status="cancelled", http_status=CLIENT_CLOSED, call=None, streamed=bool(creq and creq.stream), usage=None
            )
            ex.record(usage=usage, log_row=ex.log_row(CLIENT_CLOSED))
        await ex.release(None)
        raise


def _refuse(ex: Exchange, err: GatewayError, call: UpstreamCall | None = None) -> HttpResponse:
    pool = ex.route.pool_name if ex.route else None
    response = ex.surface.error_response(err, request_id=ex.request_id, model=ex.model, pool_name=pool)
    for name, value in ex.headers().items():
        response[name] = value
    ex.stamp_overhead(response)
    status = response.status_code
    usage = ex.usage_row(
        status="error", http_status=status, call=call, streamed=False, usage=None, error_code=err.code or err.envelope_code
    )
    ex.record(usage=usage, log_row=ex.log_row(status))
    return response


async def _complete(
    ex: Exchange, creq: CompletionRequest, ctx: AnswerContext, body: dict[str, Any], deadline: float
) -> HttpResponse:
    assert ex.route is not None
    ex.upstream_started = time.perf_counter()
    call = await upstreams.call(
        route=ex.route,
        body=body,
        stream=False,
        request_id=ex.request_id,
        deadline=deadline,
        attempt_timeout=_attempt_timeout(ex.route),
    )
    ex.upstream_answered = time.perf_counter()
    try:
        data = json.loads(call.response.content)
        result = parse_router_completion(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: JSON nested a thousand levels deep
        log.warning("upstream %s sent a body that is not JSON request_id=%s", call.upstream.label, ex.request_id)
        await ex.release(0)
        return _refuse(ex, UpstreamError(), call)
    except UpstreamError as err:
        log.warning("upstream %s sent an answer without text request_id=%s", call.upstream.label, ex.request_id)
        await ex.release(0)
        return _refuse(ex, err, call)
    text, matched = cut_at_stop(result.text, creq.stop)
    finish = "stop_sequence" if matched else result.finish_reason
    usage = result.usage or Usage(ctx.prompt_tokens_estimate, estimate_tokens(text), estimated=True)
    answer = ex.surface.answer(ctx, text=text, finish_reason=finish, stop_sequence=matched, usage=usage, raw=result.raw)
    ttfb = call.headers_at - ex.started
    row = ex.usage_row(status="ok", http_status=200, call=call, streamed=False, usage=usage, ttfb=ttfb)  # prices it
    await ex.release(usage.total_tokens)
    response = json_response(answer, headers={**ex.headers(), **cost_headers(ex.cost_micros)})
    ex.stamp_overhead(response)
    ex.record(usage=row, log_row=ex.log_row(200))
    return response


class RelayResponse(StreamingHttpResponse):
    """A streamed answer that can settle itself when the client leaves before its first byte: its generator never
    runs then, so the generator's `finally` cannot. gateway/asgi.py awaits `on_abandon` once the send is over."""

    def __init__(self, streaming_content: AsyncIterator[bytes], *, on_abandon: Callable[[], Awaitable[None]]) -> None:
        super().__init__(streaming_content, content_type="text/event-stream")
        self.on_abandon = on_abandon
        # The relay's own generator, which gateway/asgi.py sends part by part (bytes already) and closes with
        # `aclosing`: iterating the response itself goes through Django's two wrapping generators per part.
        self.parts = streaming_content


async def _stream(
    ex: Exchange, creq: CompletionRequest, ctx: AnswerContext, body: dict[str, Any], deadline: float
) -> HttpResponseBase:
    assert ex.route is not None
    ex.upstream_started = time.perf_counter()
    call = await upstreams.call(
        route=ex.route,
        body=body,
        stream=True,
        request_id=ex.request_id,
        deadline=deadline,
        attempt_timeout=_attempt_timeout(ex.route),
    )
    ex.upstream_answered = time.perf_counter()
    writer = ex.surface.stream_writer(ctx)
    started = [False]

    async def on_abandon() -> None:
        # The client left before the stream began: the generator never ran, so its
        # `finally` will not either. Close, release and record here instead.
        if started[0]:
            return
        await call.response.aclose()
        ex.record(
            usage=ex.usage_row(
                status="cancelled",
                http_status=200,
                call=call,
                streamed=True,
                usage=Usage(ctx.prompt_tokens_estimate, 0, estimated=True),
            ),
            log_row=ex.log_row(200),
        )
        await ex.release(0)  # after the row: the money reservation settles to what the row bills

    response = RelayResponse(_relay(ex, creq, ctx, call, writer, started), on_abandon=on_abandon)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in ex.headers().items():
        response[name] = value
    ex.stamp_overhead(response)  # for a stream: the time to its first byte, minus the upstream's
    return response


async def _relay(
    ex: Exchange,
    creq: CompletionRequest,
    ctx: AnswerContext,
    call: UpstreamCall,
    writer: StreamWriter,
    started: list[bool],
) -> AsyncIterator[bytes]:
    """The async shell around the pure relay (gateway/relay.py): reads the router within its deadline, writes what the
    relay makes of each read, and in `finally` closes the upstream, settles the reservation and records the usage."""
    started[0] = True
    metrics.INFLIGHT_STREAMS.inc()
    relay = StreamRelay(writer, stops=creq.stop, ctx=ctx)
    status = "cancelled"  # unless the loop below reaches an end of its own
    error_code = ""
    first_byte_at: float | None = None
    protocol_errors = 0
    raw_iter: AsyncIterator[bytes] | None = None
    try:
        yield relay.start()
        raw_iter = call.response.aiter_raw()
        # The bytes of the read that ended the stream (the router's end, or its end of file) leave in one write with
        # the last frames: one send fewer per stream, and no moment between the last token and the end.
        out = b""
        while not relay.ended:
            remaining = call.deadline - time.monotonic()  # the stream, too, ends when its upstream's time is up
            try:
                async with asyncio.timeout(max(0.001, remaining)):  # not wait_for: no task per chunk
                    chunk = await raw_iter.__anext__()
            except StopAsyncIteration:
                out = relay.close()
                break
            if first_byte_at is None:
                first_byte_at = time.perf_counter()
            out = relay.feed(chunk)
            if relay.reader.protocol_errors != protocol_errors:
                protocol_errors = relay.reader.protocol_errors
                log.warning(
                    "upstream %s sent a data line that is not JSON; skipped request_id=%s", call.upstream.label, ex.request_id
                )
            if out and not relay.ended:
                yield out
                out = b""
        last = relay.finish()
        if relay.failure is not None:
            log.warning("stream from %s failed: %s request_id=%s", call.upstream.label, relay.failure.message, ex.request_id)
            status, error_code = "error", relay.failure.code or "upstream_error"
        else:
            status = "ok"
        yield out + last if out else last
    except (TimeoutError, httpx.TransportError):
        err = UpstreamError("the upstream model server failed mid-stream")
        log.warning("stream from %s failed: %s request_id=%s", call.upstream.label, err.message, ex.request_id)
        status, error_code = "error", err.code or "upstream_error"
        yield relay.fail(err)
    finally:
        metrics.INFLIGHT_STREAMS.dec()
        ttfb = (first_byte_at - ex.started) if first_byte_at is not None else None

        def record() -> int:
            usage = relay.usage()
            ex.record(
                usage=ex.usage_row(
                    status=status, http_status=200, call=call, streamed=True, usage=usage, error_code=error_code, ttfb=ttfb
                ),
                log_row=ex.log_row(200),
            )
            return usage.total_tokens

        if status == "cancelled" and raw_iter is not None and relay.awaits_usage():
            # The client left after text and before the router's count (a client reading every delta and hanging
            # up just before the final chunk): read on for the usage chunk, briefly, in a task of its own, so a
            # second cancellation of this one cannot cut it short; it records the row whatever happens.
            settle = asyncio.ensure_future(_settle_cancelled(ex, call, relay, record))
            recorder.track(settle)
            await asyncio.shield(settle)
        else:
            # Recorded before anything is awaited: SDKs hang up as soon as they read the last event, Django then
            # cancels this task, and the CancelledError lands on the first await here; the awaits are shielded
            # so the upstream is still closed and the reservation still settled.
            total = record()
            try:
                await asyncio.shield(call.response.aclose())
            finally:
                await asyncio.shield(ex.release(total))


async def _settle_cancelled(ex: Exchange, call: UpstreamCall, relay: StreamRelay, record: Callable[[], int]) -> None:
    """After the client left: up to PORTAL_CANCEL_USAGE_GRACE_MS for the router's usage chunk, then record, close, release.

    Only what carries no text is awaited: the next text chunk means the answer was not at its end (the client
    left mid-answer), so its usage is not due, and the upstream is closed at once. The cancellation that ended
    the relay was thrown into its iterator, which is finished: the response's byte stream is read afresh (on the
    default aiohttp transport the connection is untouched; httpx's own transport closes it on a cancelled read,
    and then there is nothing to wait for).
    """
    try:
        grace = min(settings.PORTAL_CANCEL_USAGE_GRACE_S, call.deadline - time.monotonic())
        if grace > 0:
            raw: AsyncIterator[bytes] = aiter(call.response.stream)  # type: ignore[arg-type]
            async with asyncio.timeout(grace):
                while not relay.settle_feed(await anext(raw)):
                    pass
    except (TimeoutError, StopAsyncIteration, UpstreamError, httpx.HTTPError):
        pass  # no usage within the grace: the estimate of the delivered text stands
    except Exception:
        log.exception("reading a cancelled stream's usage failed; billed from the delivered text request_id=%s", ex.request_id)
    finally:
        total = record()  # whatever happened, this task's own cancellation included
        try:
            await asyncio.shield(call.response.aclose())
        finally:
            await asyncio.shield(ex.release(total))
