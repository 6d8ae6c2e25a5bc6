"""The simulated router's HTTP API (completions, status, sessions) and the `/_sim/*` control API, as an aiohttp app."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from typing import Any

from aiohttp import web

from simulator.config import SimConfig, validated_fields
from simulator.state import SimState
from simulator.tokens import TOKEN_JSON, estimate_prompt_tokens, fixed_answer, prompt_answer, second_miner_prompt

DEFAULT_MAX_TOKENS = 128

STATE_KEY: web.AppKey[SimState] = web.AppKey("router_simulator_state", SimState)


def _json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(payload, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


class _ClientGone(Exception):
    """The client closed its connection while we were still answering."""


async def _sleep_watching_client(request: web.Request, seconds: float) -> None:
    """Sleep, but notice a client disconnect promptly even without handler cancellation.

    Runners created with handler_cancellation=True cancel us on disconnect anyway;
    polling the transport covers runners that do not (e.g. aiohttp's TestServer).
    """
    deadline = time.monotonic() + seconds
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise _ClientGone()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        await asyncio.sleep(min(remaining, 0.05))


def _check_auth(request: web.Request, auth_key: str | None) -> web.Response | None:
    if auth_key is None:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return web.Response(status=401, text="Invalid Authorization header format")
    if token != auth_key:
        return _json_response({"error": "unauthorized"}, status=401)
    return None


def _bad_request(message: str) -> web.Response:
    return _json_response({"error": message}, status=400)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _new_completion_id() -> str:
    return "cmpl-" + uuid.uuid4().hex


async def _handle_completion(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    session_key = request.match_info["session_id"].lstrip("0") or "0"
    raw = await request.read()
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = None
        invalid_json = True
    else:
        invalid_json = False

    state.requests[session_key] += 1
    state.requests_total += 1
    record = dict(body) if isinstance(body, dict) else {"_body": body}
    if invalid_json:
        record = {"_invalid_json": raw[:200].decode("utf-8", "replace")}
    state.last_bodies.append(body)
    # Presence only: the key itself must never leak through the stats endpoint.
    record["authorization"] = "Authorization" in request.headers
    record["session_id"] = session_key
    record["accept"] = request.headers.get("Accept")
    state.last_request = record

    config = state.effective(session_key)
    is_stream = isinstance(body, dict) and bool(body.get("stream"))
    state.requests_open += 1
    if is_stream:
        state.streams_open += 1
    response: web.StreamResponse | None = None
    try:
        response = await _answer(request, state, config, body, invalid_json, is_stream)
        return response
    except (_ClientGone, ConnectionResetError, asyncio.CancelledError) as exc:
        state.requests_aborted_by_client += 1
        if is_stream:
            state.streams_aborted_by_client += 1
        if isinstance(exc, asyncio.CancelledError):
            raise
        # Returning (rather than raising) keeps aiohttp from logging a 500: writing
        # this response to the dead transport fails with ConnectionError, which
        # aiohttp treats as an ordinary premature client disconnection.
        return web.Response(status=499, text="client closed request")
    finally:
        state.requests_open -= 1
        if is_stream:
            state.streams_open -= 1
        if response is not None:
            state.statuses[str(response.status)] += 1


async def _answer(
    request: web.Request,
    state: SimState,
    config: SimConfig,
    body: Any,
    invalid_json: bool,
    is_stream: bool,
) -> web.StreamResponse:
    if config.first_byte_delay_ms > 0:
        await _sleep_watching_client(request, config.first_byte_delay_ms / 1000)
    denied = _check_auth(request, config.auth_key)
    if denied is not None:
        return denied
    if config.fail_status is not None:
        return _json_response({"detail": "simulated failure"}, status=config.fail_status)
    if config.hang:
        while True:
            await _sleep_watching_client(request, 3600)

    if invalid_json:
        return _bad_request("invalid JSON body")
    if not isinstance(body, dict):
        return _bad_request("body must be a JSON object")
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        return _bad_request("prompt is required and must be a string")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        return _bad_request("max_tokens must be a positive integer")

    if config.answer_tokens:
        tokens, reason = fixed_answer(config.answer_tokens, max_tokens)
    else:
        tokens, reason = prompt_answer(prompt, max_tokens)
    prompt_tokens = estimate_prompt_tokens(prompt)
    created = int(time.time())
    completion_id = _new_completion_id()
    task_id = next(state.task_ids)
    if config.interleave_miners:
        other_tokens, other_reason = prompt_answer(second_miner_prompt(prompt), max_tokens)
        other = (_new_completion_id(), next(state.task_ids), other_tokens, other_reason)
    else:
        other = None

    if not is_stream:
        return _non_stream_answer(
            config,
            completion_id,
            task_id,
            created,
            tokens,
            reason,
            prompt_tokens,
            other,
        )
    return await _stream_answer(
        request,
        state,
        config,
        completion_id,
        task_id,
        created,
        tokens,
        reason,
        prompt_tokens,
        other,
    )


def _non_stream_answer(
    config: SimConfig,
    completion_id: str,
    task_id: int,
    created: int,
    tokens: tuple[str, ...],
    reason: str,
    prompt_tokens: int,
    other: tuple[str, int, tuple[str, ...], str] | None,
) -> web.Response:
    choices = [{"index": 0, "text": "".join(tokens), "finish_reason": reason, "logprobs": None}]
    if other is not None:
        choices.append(
            {
                "index": 1,
                "text": "".join(other[2]),
                "finish_reason": other[3],
                "logprobs": None,
            }
        )
    payload: dict[str, Any] = {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": "default",
        "task_id": task_id,
        "choices": choices,
    }
    if not config.omit_usage:
        payload["usage"] = _usage(prompt_tokens, len(tokens))
    return _json_response(payload)


class _ChunkWriter:
    """Builds one miner's SSE events from precomputed byte fragments."""

    __slots__ = ("config", "head", "prompt_tokens", "reason", "tokens")

    def __init__(
        self,
        config: SimConfig,
        completion_id: str,
        task_id: int,
        created: int,
        tokens: tuple[str, ...],
        reason: str,
        prompt_tokens: int,
    ) -> None:
        self.head = (
            f'data: {{"id":"{completion_id}","task_id":{task_id},"object":"text_completion",'
            f'"created":{created},"choices":[{{"index":0,"text":'
        ).encode()
        self.tokens = tokens
        self.reason = reason
        self.prompt_tokens = prompt_tokens
        self.config = config

    def _usage_bytes(self, completion_tokens: int) -> bytes:
        return b',"usage":' + json.dumps(_usage(self.prompt_tokens, completion_tokens), separators=(",", ":")).encode()

    def token_event(self, index: int) -> bytes:
        tail = b',"finish_reason":null}],"model":"default"'
        if not self.config.omit_usage and not self.config.usage_only_at_end:
            tail += self._usage_bytes(index + 1)
        return self.head + TOKEN_JSON[self.tokens[index]] + tail + b"}\n\n"

    def final_event(self) -> bytes:
        tail = b',"finish_reason":' + json.dumps(self.reason).encode() + b'}],"model":"default"'
        if not self.config.omit_usage:
            tail += self._usage_bytes(len(self.tokens))
        return self.head + b'""' + tail + b"}\n\n"


async def _stream_answer(
    request: web.Request,
    state: SimState,
    config: SimConfig,
    completion_id: str,
    task_id: int,
    created: int,
    tokens: tuple[str, ...],
    reason: str,
    prompt_tokens: int,
    other: tuple[str, int, tuple[str, ...], str] | None,
) -> web.StreamResponse:
    main = _ChunkWriter(config, completion_id, task_id, created, tokens, reason, prompt_tokens)
    decoy = None if other is None else _ChunkWriter(config, other[0], other[1], created, other[2], other[3], prompt_tokens)

    # Each item is one SSE event; the stream is a flat list so delays, splits and
    # truncation all apply uniformly. True marks a token of the real miner.
    events: list[tuple[bytes, bool]] = []
    for i in range(max(len(tokens), len(decoy.tokens) if decoy else 0)):
        if i < len(tokens):
            events.append((main.token_event(i), True))
        if decoy is not None and i < len(decoy.tokens):
            events.append((decoy.token_event(i), False))
    cut = config.disconnect_after_tokens
    if cut is not None:
        real_seen = 0
        for position, (_, is_real) in enumerate(events):
            if is_real:
                if real_seen == cut:
                    events = events[:position]
                    break
                real_seen += 1
    else:
        events.append((main.final_event(), False))
        if decoy is not None:
            events.append((decoy.final_event(), False))
        events.append((b"data: [DONE]\n\n", False))

    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )
    await response.prepare(request)
    delay = config.token_delay_ms / 1000
    if delay <= 0 and not config.split_writes:
        # Without pacing, one write for the whole stream is far cheaper; the client
        # must cope with several events in one read anyway (docs/router.md).
        await response.write(b": keep-alive\n\n" + b"".join(event for event, _ in events))
    else:
        await _write_event(request, response, b": keep-alive\n\n", config.split_writes)
        for position, (event, _) in enumerate(events):
            if delay > 0 and position > 0:
                await _sleep_watching_client(request, delay)
            await _write_event(request, response, event, config.split_writes)

    if cut is not None:
        state.streams_truncated_by_server += 1
        transport = request.transport
        if transport is not None:
            # close() (not abort()) flushes what was written, then drops the TCP
            # connection mid chunked body, which clients see as a truncated stream.
            transport.close()
        return response
    await response.write_eof()
    state.streams_completed += 1
    return response


async def _write_event(request: web.Request, response: web.StreamResponse, event: bytes, split: bool) -> None:
    if split and len(event) > 1:
        middle = len(event) // 2
        await response.write(event[:middle])
        # A short pause lets the first half leave as its own TCP segment.
        await _sleep_watching_client(request, 0.002)
        await response.write(event[middle:])
    else:
        await response.write(event)


def _status_payload(state: SimState) -> dict[str, Any]:
    return {
        "status": "ok",
        "simulator": True,
        "uptime_seconds": round(time.monotonic() - _STARTED, 3),
        "sessions": len(_known_sessions(state)),
        "requests_total": state.requests_total,
        "streams_open": state.streams_open,
    }


async def _handle_status(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if state.any_status_fail():
        return _json_response({"status": "error", "detail": "simulated unhealthy router"}, status=503)
    return _json_response(_status_payload(state))


async def _handle_ping(request: web.Request) -> web.Response:
    # A health probe may use ping instead of status, so it fails the same way.
    if request.app[STATE_KEY].any_status_fail():
        return _json_response({"pong": False}, status=503)
    return _json_response({"pong": True})


async def _handle_info(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return _json_response(
        {
            "name": "cortensor-router-simulator",
            "version": "sim-1",
            "simulator": True,
            "api": {"completions": "/api/v3/completions/{session_id}"},
            "auth_required": state.global_config.auth_key is not None,
            "default_model": "default",
            "sessions": _known_sessions(state),
        }
    )


def _known_sessions(state: SimState) -> list[int]:
    return sorted({int(k) for k in state.requests} | {int(k) for k in state.session_overrides})


def _session_payload(state: SimState, session_id: int) -> dict[str, Any]:
    key = str(session_id)
    config = state.effective(key)
    return {
        "id": session_id,
        "session_id": session_id,
        "state": "unhealthy" if config.status_fail else "active",
        "model": "default",
        "mode": "dedicated",
        "redundancy": 2 if config.interleave_miners else 1,
        "auth_required": config.auth_key is not None,
        "requests": state.requests.get(key, 0),
    }


async def _handle_sessions(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return _json_response({"sessions": [_session_payload(state, sid) for sid in _known_sessions(state)]})


async def _handle_session(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    session_id = int(request.match_info["session_id"])
    payload = _session_payload(state, session_id)
    return _json_response(payload, status=503 if payload["state"] == "unhealthy" else 200)


async def _handle_sim_config(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if request.method == "GET":
        return _json_response(state.config_snapshot())
    try:
        body = await request.json() if request.can_read_body else {}
        if not isinstance(body, dict):
            raise TypeError("body must be a JSON object")
        unknown = set(body) - {"global", "sessions"}
        if unknown:
            raise ValueError(f"unknown keys: {sorted(unknown)}")
        return _json_response(state.apply(body.get("global"), body.get("sessions")))
    except (TypeError, ValueError) as exc:
        return _json_response({"detail": str(exc)}, status=400)


async def _handle_sim_reset(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.reset()
    return _json_response(state.config_snapshot())


async def _handle_sim_stats(request: web.Request) -> web.Response:
    return _json_response(request.app[STATE_KEY].stats_snapshot())


_STARTED = time.monotonic()


def create_app(config: SimConfig | None = None, **overrides: Any) -> web.Application:
    """Build the simulator application; keyword arguments are SimConfig fields."""
    startup = dataclasses.replace(config or SimConfig(), **validated_fields(overrides))
    return build_app(SimState(startup))


def build_app(state: SimState) -> web.Application:
    # An Application binds to one event loop, so a restarted SimulatorServer needs
    # a fresh one around the same state.
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_post(r"/api/v3/completions/{session_id:\d+}", _handle_completion)
    app.router.add_get("/api/v1/status", _handle_status)
    app.router.add_get("/api/v1/ping", _handle_ping)
    app.router.add_get("/api/v1/info", _handle_info)
    app.router.add_get("/api/v1/sessions", _handle_sessions)
    app.router.add_get(r"/api/v1/sessions/{session_id:\d+}", _handle_session)
    app.router.add_route("*", "/_sim/config", _handle_sim_config)
    app.router.add_post("/_sim/reset", _handle_sim_reset)
    app.router.add_get("/_sim/stats", _handle_sim_stats)
    return app
