"""The public HTTP API: thin async views over the pipeline; no ORM work on the request path."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import dbpool, lifecycle, metrics, stored_responses
from gateway.auth import authenticate
from gateway.db import db_call
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    LimitsUnavailable,
    ModelNotFound,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
)
from gateway.limits import COUNTING_KINDS, limiter
from gateway.pipeline import Exchange, _read_body, handle_completion
from gateway.principal import Principal
from gateway.recorder import recorder
from gateway.state import state
from gateway.surfaces import ANTHROPIC_MESSAGES, ENVELOPE, OPENAI_CHAT, OPENAI_RESPONSES, Surface, json_response, surface_for_path
from gateway.translate.anthropic_messages import parse_messages_request
from gateway.translate.common import estimate_tokens, json_compact, unsupported_value
from gateway.translate.prompt import render_prompt
from gateway.upstream import upstreams
from routerpools.selectors import AliasRoute


def _only(method: str, request: HttpRequest, surface: Surface) -> HttpResponse | None:
    methods = method.split(", ")
    if request.method in methods:
        return None
    ex = Exchange(request=request, surface=surface)
    accepts = f"{method} only" if len(methods) == 1 else " or ".join(methods)
    response = json_response(
        surface.error_body(InvalidRequest(f"this route accepts {accepts}"), request_id=ex.request_id),
        status=405,
        headers=ex.headers(),
    )
    response["Allow"] = method
    return _logged(ex, response)


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    return _only("POST", request, OPENAI_CHAT) or await handle_completion(request, OPENAI_CHAT)


@csrf_exempt
async def completions(request: HttpRequest) -> HttpResponseBase:
    return _only("POST", request, ENVELOPE) or await handle_completion(request, ENVELOPE)


@csrf_exempt
async def messages(request: HttpRequest) -> HttpResponseBase:
    return _only("POST", request, ANTHROPIC_MESSAGES) or await handle_completion(request, ANTHROPIC_MESSAGES)


@csrf_exempt
async def responses(request: HttpRequest) -> HttpResponseBase:
    return _only("POST", request, OPENAI_RESPONSES) or await handle_completion(request, OPENAI_RESPONSES)


@csrf_exempt
async def response_detail(request: HttpRequest, response_id: str) -> HttpResponse:
    """`GET` a stored response (the object as it was sent) or `DELETE` it; another organization's id is a 404.

    Admitted like a request (requests per minute, a concurrency slot released at once), not against allowances or
    tokens: looking a response up costs a query, but generates nothing.
    """
    if refused := _only("GET, DELETE", request, OPENAI_RESPONSES):
        return refused
    ex, refused = await _authenticated(request, OPENAI_RESPONSES)
    if refused:
        return refused
    assert ex.principal is not None
    try:
        if request.method == "GET" and request.GET.get("stream", "").lower() in ("true", "1"):
            raise unsupported_value("stream", "a stored response is retrieved whole; it cannot be streamed again.")
        admission = await limiter.admit(
            ex.principal, request_id=ex.request_id, surface=ex.surface.limits_surface, kinds=COUNTING_KINDS
        )
    except GatewayError as err:
        if isinstance(err, (RateLimited, QuotaExceeded, LimitsUnavailable)):
            ex.admission = None  # the refusal carries the counters and retry-after of the limit it hit
        return _error(ex, err)
    try:
        if request.method == "DELETE":
            found = await stored_responses.delete(response_id, ex.principal.organization_id)
            body = json_compact({"id": response_id, "object": "response.deleted", "deleted": True}) if found else None
        else:
            record = await stored_responses.find(response_id, ex.principal.organization_id)
            body = record[0].body if record is not None else None
    except GatewayError as err:  # the database cannot be read (503)
        return _error(ex, err)
    finally:
        await limiter.finish(admission)
    ex.admission = await limiter.peek(ex.principal, surface=ex.surface.limits_surface)  # headers: after this request
    if body is None:
        return _error(ex, stored_responses.not_found(response_id))
    response = HttpResponse(body, content_type="application/json")
    response["Content-Length"] = str(len(response.content))
    for name, value in ex.headers().items():
        response[name] = value
    return _logged(ex, response)


async def _authenticated(request: HttpRequest, surface: Surface) -> tuple[Exchange, HttpResponse | None]:
    ex = Exchange(request=request, surface=surface)
    try:
        await state.ensure_started()
        recorder.ensure_started()
        ex.principal = await authenticate(request.headers, surface=surface.limits_surface)
    except GatewayError as err:
        return ex, _error(ex, err)
    # Every /v1 response that passed authentication reports the rate limits (docs/surfaces.md); read, not consumed.
    ex.admission = await limiter.peek(ex.principal, surface=surface.limits_surface)
    return ex, None


def _error(ex: Exchange, err: GatewayError) -> HttpResponse:
    response = ex.surface.error_response(err, request_id=ex.request_id)
    for name, value in ex.headers().items():
        response[name] = value
    return _logged(ex, response)


def _logged(ex: Exchange, response: HttpResponse) -> HttpResponse:
    """A request log row for every /v1 request, as the completion routes write (RequestLog: one per request seen)."""
    recorder.ensure_started()
    recorder.record(usage=None, log_row=ex.log_row(response.status_code))
    return response


def _models_surface(request: HttpRequest) -> Surface:
    """Whose shape `/v1/models` answers in: Anthropic's for a client that sends `anthropic-version` (the Anthropic SDKs
    always do; no OpenAI client does), OpenAI's otherwise. Errors then come in the same shape."""
    return ANTHROPIC_MESSAGES if request.headers.get("anthropic-version", "").strip() else OPENAI_CHAT


def usd_per_token(micros_per_million: int) -> str:
    """OpenRouter's price string: exact USD per token (micro-units per million tokens / 10^12), no exponent."""
    return format(Decimal(micros_per_million).scaleb(-12).normalize(), "f")


def _pricing(principal: Principal, route: AliasRoute) -> dict[str, str] | None:
    plan_id = principal.plan.plan_id if principal.plan else None
    price = state.price(plan_id, route.alias)
    if price is None:
        return None
    return {
        "prompt": usd_per_token(price.input_micros_per_million),
        "completion": usd_per_token(price.output_micros_per_million),
    }


def _listed(principal: Principal, route: AliasRoute) -> bool:
    """The aliases the key may call: its plan's, and on a paid plan only priced ones (pipeline._price refuses others)."""
    if not principal.may_use(route.alias):
        return False
    plan = principal.plan
    return not (plan is not None and plan.paid and state.price(plan.plan_id, route.alias) is None)


def _openai_model(route: AliasRoute, principal: Principal) -> dict[str, object]:
    # OpenAI's four fields, then ours: the SDKs' model types keep fields they do not declare. max_output_tokens is
    # also what a request without max_tokens gets; context_length is null when staff did not state it; pricing is
    # OpenRouter's (USD per token, strings) on the caller's plan, null for an unpriced alias on a free plan.
    return {
        "id": route.alias,
        "object": "model",
        "created": route.created,
        "owned_by": "cortensor",
        "display_name": route.display_name,
        "max_output_tokens": route.max_tokens_cap,
        "context_length": route.context_length,
        "pricing": _pricing(principal, route),
    }


def _anthropic_model(route: AliasRoute) -> dict[str, object]:
    """A ModelInfo of the Anthropic SDK (anthropic/types/model_info.py): `lifecycle` is required there."""
    return {
        "type": "model",
        "id": route.alias,
        "display_name": route.display_name,
        "created_at": datetime.fromtimestamp(route.created, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lifecycle": "active",
        "max_input_tokens": route.context_length,
        "max_tokens": route.max_tokens_cap,
    }


ANTHROPIC_PAGE_DEFAULT = 20  # Anthropic's own default and bounds for `limit`
ANTHROPIC_PAGE_MAX = 1000
_LIFECYCLES = ("active", "deprecated", "retired")


def _anthropic_page(request: HttpRequest, routes: list[AliasRoute]) -> dict[str, object]:
    """Anthropic's list: newest first, `limit` / `after_id` / `before_id` cursors, `lifecycle` filter (every alias
    is active); a bad parameter is an InvalidRequest naming it."""
    query = request.GET
    raw_limit = query.get("limit")
    limit = ANTHROPIC_PAGE_DEFAULT
    if raw_limit is not None:
        if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= ANTHROPIC_PAGE_MAX:
            raise InvalidRequest(f"limit: must be an integer from 1 to {ANTHROPIC_PAGE_MAX}", param="limit")
        limit = int(raw_limit)
    lifecycles = query.getlist("lifecycle[]") + query.getlist("lifecycle")
    for stage in lifecycles:
        if stage not in _LIFECYCLES:
            raise InvalidRequest(f"lifecycle: must be one of {', '.join(_LIFECYCLES)}", param="lifecycle")
    if lifecycles and "active" not in lifecycles:
        routes = []
    after_id, before_id = query.get("after_id"), query.get("before_id")
    if after_id is not None and before_id is not None:
        raise InvalidRequest("before_id: cannot be used together with after_id", param="before_id")
    ordered = sorted(routes, key=lambda r: (-r.created, r.alias))  # "more recently released models are listed first"
    ids = [r.alias for r in ordered]
    for name, cursor in (("after_id", after_id), ("before_id", before_id)):
        if cursor is not None and cursor not in ids:
            raise InvalidRequest(f"{name}: '{cursor[:100]}' is not a model in this list", param=name)
    if before_id is not None:
        end = ids.index(before_id)
        page = ordered[max(0, end - limit) : end]
        has_more = end - limit > 0
    else:
        start = ids.index(after_id) + 1 if after_id is not None else 0
        page = ordered[start : start + limit]
        has_more = start + limit < len(ordered)
    return {
        "data": [_anthropic_model(r) for r in page],
        "has_more": has_more,
        "first_id": page[0].alias if page else None,
        "last_id": page[-1].alias if page else None,
    }


@csrf_exempt
async def list_models(request: HttpRequest) -> HttpResponse:
    surface = _models_surface(request)
    if refused := _only("GET", request, surface):
        return refused
    ex, refused = await _authenticated(request, surface)
    if refused:
        return refused
    assert ex.principal is not None
    principal = ex.principal
    routes = [r for r in sorted(state.snapshot.routes.values(), key=lambda r: r.alias) if _listed(principal, r)]
    if surface.anthropic:
        try:
            body = _anthropic_page(request, routes)
        except GatewayError as err:
            return _error(ex, err)
    else:
        body = {"object": "list", "data": [_openai_model(r, principal) for r in routes]}
    return _logged(ex, json_response(body, headers=ex.headers()))


@csrf_exempt
async def retrieve_model(request: HttpRequest, alias: str) -> HttpResponse:
    surface = _models_surface(request)
    if refused := _only("GET", request, surface):
        return refused
    ex, refused = await _authenticated(request, surface)
    if refused:
        return refused
    assert ex.principal is not None
    route = state.route(alias)
    if route is None or not _listed(ex.principal, route):
        return _error(ex, ModelNotFound(f"the model '{alias[:100]}' does not exist", param="model"))
    entry = _anthropic_model(route) if surface.anthropic else _openai_model(route, ex.principal)
    return _logged(ex, json_response(entry, headers=ex.headers()))


@csrf_exempt
async def count_tokens(request: HttpRequest) -> HttpResponse:
    if refused := _only("POST", request, ANTHROPIC_MESSAGES):
        return refused
    ex, refused = await _authenticated(request, ANTHROPIC_MESSAGES)
    if refused:
        return refused
    assert ex.principal is not None
    try:
        body = _read_body(request)
        if isinstance(body, dict) and "max_tokens" not in body:
            body = {**body, "max_tokens": 1}  # count_tokens does not take max_tokens
        creq = parse_messages_request(body)
        route = state.route(creq.model or "")
        if route is None:
            raise ModelNotFound(f"the model '{(creq.model or '')[:100]}' does not exist", param="model")
        if not ex.principal.may_use(route.alias):  # as /v1/messages refuses it: the plan's list and the org's exceptions
            raise PermissionDenied(
                f"your plan does not include the model '{route.alias}'", param="model", code="model_not_allowed"
            )
        prompt = render_prompt(creq.messages or [], route.prompt_format, system=creq.system)
        # Admitted like a request (requests per minute, a concurrency slot), not against allowances or tokens
        # (limits.COUNTING_KINDS says why), and released at once: counting holds nothing.
        admission = await limiter.admit(
            ex.principal, request_id=ex.request_id, surface=ex.surface.limits_surface, kinds=COUNTING_KINDS
        )
    except GatewayError as err:
        if isinstance(err, (RateLimited, QuotaExceeded, LimitsUnavailable)):
            ex.admission = None  # the refusal carries the counters and retry-after of the limit it hit
        return _error(ex, err)
    input_tokens = estimate_tokens(prompt)
    await limiter.finish(admission)
    ex.admission = await limiter.peek(ex.principal, surface=ex.surface.limits_surface)  # headers: after this request
    return _logged(ex, json_response({"input_tokens": input_tokens}, headers=ex.headers()))


@csrf_exempt
async def not_found(request: HttpRequest) -> HttpResponse:
    surface = surface_for_path(request.path)
    ex = Exchange(request=request, surface=surface)
    err = InvalidRequest(f"unknown route {request.method} {request.path[:100]}")
    return _logged(ex, json_response(surface.error_body(err, request_id=ex.request_id), status=404, headers=ex.headers()))


def _database_ok() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone() == (1,)


def _operator(request: HttpRequest) -> bool:
    """Whether the request carries PORTAL_METRICS_TOKEN as a Bearer token (anyone, when no token is set: DEBUG only)."""
    token = settings.PORTAL_METRICS_TOKEN
    if not token:
        return True
    # Bytes: compare_digest refuses non-ASCII str, and a client may send any latin-1 byte in a header.
    sent = request.headers.get("authorization", "").encode("latin-1", "replace")
    return hmac.compare_digest(sent, b"Bearer " + token.encode())


PROBE_CHECK_TIMEOUT_S = 2.0  # each dependency check of /health and /ready; the probe answers within about this long
_probes: dict[str, asyncio.Future[str]] = {}  # a check still running, shared by the probes that arrive meanwhile


def _state_loaded() -> bool:
    # The routing table and plans in memory: what every request is answered from while the database is away.
    return state.loaded


async def _single_flight(name: str, check: Callable[[], Awaitable[str]]) -> str:
    """The check's result, bounded by PROBE_CHECK_TIMEOUT_S; a probe arriving while one runs waits for that one.

    A database that hangs (a black-holed host) would otherwise tie up one worker thread per probe, every probe
    interval, until the threads the requests need are gone.
    """
    running = _probes.get(name)
    if running is None or running.get_loop() is not asyncio.get_running_loop():
        running = _probes[name] = asyncio.ensure_future(check())

        def finished(done: asyncio.Future[str]) -> None:
            if _probes.get(name) is done:
                del _probes[name]
            if not done.cancelled():
                done.exception()  # retrieved: a check that failed after its probe gave up is not logged as lost

        running.add_done_callback(finished)
    try:
        return await asyncio.wait_for(asyncio.shield(running), PROBE_CHECK_TIMEOUT_S)
    except TimeoutError:
        return "error: timeout"
    except Exception as exc:
        return f"error: {exc.__class__.__name__}"


async def _check_database() -> str:
    return "ok" if await db_call(_database_ok) else "error"


async def _check_cache() -> str:
    await cache.aset("health:probe", "1", 10)
    return "ok" if await cache.aget("health:probe") == "1" else "error"


async def _check_state() -> str:
    await state.ensure_started()
    return "ok"


async def _checks() -> dict[str, str]:
    names = ("database", "cache", "state")
    results = await asyncio.gather(
        _single_flight("database", _check_database), _single_flight("cache", _check_cache), _single_flight("state", _check_state)
    )
    checks = dict(zip(names, results, strict=True))
    if not _state_loaded():
        checks["state"] = checks["state"] if checks["state"] != "ok" else "error: not loaded"
    pool = dbpool.status()
    if pool is not None:
        checks["pool"] = pool
    return checks


def _probe_response(
    request: HttpRequest, body: dict[str, object], *, status: int, checks: dict[str, str], started: float
) -> HttpResponse:
    if _operator(request):
        routes = sorted(state.snapshot.routes.values(), key=lambda r: r.alias)
        body["checks"] = checks
        body["pools"] = [
            {
                "alias": r.alias,
                "pool": r.pool_name,
                "draining": r.pool_draining,
                "endpoints": len({u.base_url for u in r.upstreams}),
                "sessions": len({u.session_id for u in r.upstreams}),
                "upstreams": len(r.upstreams),
                "healthy": upstreams.healthy_count(r),
            }
            for r in routes
        ]
        body["db_pool"] = dbpool.stats()
        body["usage_queue_depth"] = recorder.depth
        body["cache_epoch"] = state.position  # the newest cache change applied (gateway/state.py)
        body["duration_ms"] = round((time.perf_counter() - started) * 1000, 2)
    response = json_response(body, status=status)
    response["Cache-Control"] = "no-store"
    return response


async def health(request: HttpRequest) -> HttpResponse:
    """Liveness, the load balancer's probe: 200 while this process can answer requests, from its cache if need be.

    A database or cache that is away makes the status `degraded` (the failing checks named) but not a 503: the
    gateway serves keys, routes and plans from memory through an outage, and a 503 here would take every process of
    the fleet out of rotation at once. 503 only when this process cannot serve: it is draining (SIGTERM), or its
    routing table and plans never loaded. With PORTAL_METRICS_TOKEN as a Bearer token: also every check, each
    alias's pool size and healthy upstream count, the usage queue depth, the cache epoch and how long the checks
    took. Never URLs or secrets.
    """
    started = time.perf_counter()
    checks = await _checks()
    # The load balancer's first probe starts the routers' probes: a dead router shows before any traffic meets it.
    upstreams.ensure_health_checks(state.routes)
    failing = sorted(name for name, result in checks.items() if result != "ok")
    if lifecycle.draining():
        body: dict[str, object] = {"status": "draining"}
        status = 503
    elif not _state_loaded():
        body = {"status": "starting", "failing": failing}
        status = 503
    else:
        body = {"status": "degraded" if failing else "ok"}
        status = 200
    body["models"] = sorted(r.alias for r in state.snapshot.routes.values())
    if failing and status == 200:
        body["failing"] = failing
    return _probe_response(request, body, status=status, checks=checks, started=started)


async def ready(request: HttpRequest) -> HttpResponse:
    """Readiness, for deploy gating and alerting (never the load balancer's probe): 200 only when the database, the
    cache, the database pool and the loaded state all are; else 503 naming what failed. Draining is not ready."""
    started = time.perf_counter()
    checks = await _checks()
    failing = sorted(name for name, result in checks.items() if result != "ok")
    if lifecycle.draining():
        failing.append("draining")
    body: dict[str, object] = {"status": "ready" if not failing else "not_ready"}
    if failing:
        body["failing"] = failing
    return _probe_response(request, body, status=503 if failing else 200, checks=checks, started=started)


async def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition of this process (scrape every process: counters are per process); PORTAL_METRICS_TOKEN only."""
    if not _operator(request):
        response = HttpResponse(
            "unauthorized: send Authorization: Bearer <PORTAL_METRICS_TOKEN>\n", status=401, content_type="text/plain"
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)
