"""A fast, faithful simulator of a Cortensor router node's HTTP API (pure aiohttp, no Django)."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Self

from aiohttp import web

__all__ = [
    "SimConfig",
    "SimState",
    "SimulatorServer",
    "add_cli_arguments",
    "config_from_options",
    "create_app",
    "estimate_prompt_tokens",
    "main",
    "simulated_tokens",
]

DEFAULT_MAX_TOKENS = 128
MIN_NATURAL_TOKENS = 8
MAX_NATURAL_TOKENS = 40
LAST_BODIES_KEPT = 50

# 32 words: a power of two, so `byte % len(VOCABULARY)` picks without bias.
VOCABULARY: tuple[str, ...] = (
    "the", "router", "answers", "with", "a", "simulated", "reply", "from",
    "miner", "nodes", "that", "stream", "tokens", "quickly", "and", "keep",
    "every", "session", "alive", "while", "tests", "check", "each", "chunk",
    "of", "text", "for", "gateway", "clients", "in", "order", "today",
)  # fmt: skip

# Tokens and their JSON encodings are precomputed so a streamed chunk is only
# byte concatenation, which keeps the simulator cheap as a benchmark upstream.
_FIRST_TOKENS: tuple[str, ...] = VOCABULARY
_NEXT_TOKENS: tuple[str, ...] = tuple(" " + word for word in VOCABULARY)
_TOKEN_JSON: dict[str, bytes] = {
    token: json.dumps(token).encode() for token in _FIRST_TOKENS + _NEXT_TOKENS
}


@dataclasses.dataclass
class SimConfig:
    """Behaviour knobs; a session's overrides are applied on top of the global ones."""

    auth_key: str | None = None
    token_delay_ms: float = 0.0
    first_byte_delay_ms: float = 0.0
    omit_usage: bool = False
    usage_only_at_end: bool = True
    interleave_miners: bool = False
    fail_status: int | None = None
    hang: bool = False
    disconnect_after_tokens: int | None = None
    split_writes: bool = False
    status_fail: bool = False
    # A fixed answer length (benchmarks): this many tokens whatever the prompt, capped by max_tokens.
    answer_tokens: int | None = None


_FIELDS: dict[str, dataclasses.Field[Any]] = {
    f.name: f for f in dataclasses.fields(SimConfig)
}
_BOOL_FIELDS = {
    "omit_usage",
    "usage_only_at_end",
    "interleave_miners",
    "hang",
    "split_writes",
    "status_fail",
}
_FLOAT_FIELDS = {"token_delay_ms", "first_byte_delay_ms"}
_OPTIONAL_INT_FIELDS = {"fail_status", "disconnect_after_tokens", "answer_tokens"}


def _validated_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """Check knob names and types, so a typo in a test fails loudly instead of being ignored."""
    if not isinstance(values, Mapping):
        raise TypeError("config must be a JSON object")
    clean: dict[str, Any] = {}
    for name, value in values.items():
        if name not in _FIELDS:
            raise ValueError(f"unknown config field: {name}")
        if name in _BOOL_FIELDS:
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a boolean")
        elif name in _FLOAT_FIELDS:
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or value < 0
            ):
                raise ValueError(f"{name} must be a non-negative number")
            value = float(value)
        elif name in _OPTIONAL_INT_FIELDS:
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int)
            ):
                raise ValueError(f"{name} must be an integer or null")
            if name == "fail_status" and value is not None and not 100 <= value <= 599:
                raise ValueError("fail_status must be an HTTP status code")
            if name == "disconnect_after_tokens" and value is not None and value < 0:
                raise ValueError("disconnect_after_tokens must be >= 0")
        elif name == "auth_key":
            if value is not None and not isinstance(value, str):
                raise ValueError("auth_key must be a string or null")
            # An empty key would make the router accept "Bearer " with nothing.
            value = value or None
        clean[name] = value
    return clean


def _session_key(session_id: Any) -> str:
    """Normalise session ids (int or str) to the canonical string used as a dict key."""
    if isinstance(session_id, bool):
        raise TypeError(f"invalid session id: {session_id!r}")
    try:
        number = int(session_id)
    except (TypeError, ValueError):
        raise ValueError(f"invalid session id: {session_id!r}") from None
    if number < 0:
        raise ValueError(f"invalid session id: {session_id!r}")
    return str(number)


@functools.lru_cache(maxsize=4096)
def _tokens_cached(prompt: str, max_tokens: int) -> tuple[tuple[str, ...], str]:
    digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()
    # 64 bytes of material: byte 0 picks the length, bytes 1..40 pick the words.
    material = digest + hashlib.sha256(digest).digest()
    span = MAX_NATURAL_TOKENS - MIN_NATURAL_TOKENS + 1
    natural = MIN_NATURAL_TOKENS + material[0] % span
    count = max(0, min(natural, max_tokens))
    size = len(VOCABULARY)
    tokens = tuple(
        (_FIRST_TOKENS if i == 0 else _NEXT_TOKENS)[material[1 + i] % size]
        for i in range(count)
    )
    return tokens, ("length" if count < natural else "stop")


@functools.lru_cache(maxsize=64)
def _fixed_tokens(count: int, max_tokens: int) -> tuple[tuple[str, ...], str]:
    emitted = min(count, max_tokens)
    tokens = tuple((_FIRST_TOKENS if i == 0 else _NEXT_TOKENS)[i % len(VOCABULARY)] for i in range(emitted))
    return tokens, ("length" if emitted < count else "stop")


def simulated_tokens(prompt: str, max_tokens: int) -> tuple[list[str], str]:
    """Return the deterministic answer tokens for a prompt and the finish reason."""
    tokens, reason = _tokens_cached(prompt, max_tokens)
    return list(tokens), reason


def estimate_prompt_tokens(prompt: str) -> int:
    """Rough prompt token count the simulator reports: about 4 characters a token."""
    return max(1, math.ceil(len(prompt) / 4))


class SimState:
    """Mutable simulator state: start-up config, runtime overrides and counters.

    Only touched from the event loop's thread, which is what keeps it race-free
    without locks; `SimulatorServer` hops onto that loop to mutate it.
    """

    def __init__(self, startup: SimConfig) -> None:
        self.startup = dataclasses.replace(startup)
        self.global_config = dataclasses.replace(startup)
        self.session_overrides: dict[str, dict[str, Any]] = {}
        self._effective_cache: dict[str, SimConfig] = {}
        self.task_ids = itertools.count(100_000)
        self.reset_stats()

    def reset_stats(self) -> None:
        self.requests: collections.Counter[str] = collections.Counter()
        self.requests_total = 0
        self.requests_open = 0
        self.requests_aborted_by_client = 0
        self.streams_open = 0
        self.streams_completed = 0
        self.streams_aborted_by_client = 0
        self.streams_truncated_by_server = 0
        self.statuses: collections.Counter[str] = collections.Counter()
        self.last_request: dict[str, Any] | None = None
        self.last_bodies: collections.deque[Any] = collections.deque(
            maxlen=LAST_BODIES_KEPT
        )

    def reset(self) -> None:
        self.global_config = dataclasses.replace(self.startup)
        self.session_overrides = {}
        self._effective_cache = {}
        self.reset_stats()

    def apply(
        self,
        global_: Mapping[str, Any] | None = None,
        sessions: Mapping[Any, Mapping[str, Any] | None] | None = None,
    ) -> dict[str, Any]:
        """Merge knob values; a session mapped to None drops all its overrides."""
        # Validate everything before changing anything, so a bad request is all-or-nothing.
        new_global = _validated_fields(global_ or {})
        new_sessions: dict[str, dict[str, Any] | None] = {}
        for sid, values in (sessions or {}).items():
            new_sessions[_session_key(sid)] = (
                None if values is None else _validated_fields(values)
            )
        self.global_config = dataclasses.replace(self.global_config, **new_global)
        for key, values in new_sessions.items():
            if values is None:
                self.session_overrides.pop(key, None)
            else:
                self.session_overrides.setdefault(key, {}).update(values)
        self._effective_cache = {}
        return self.config_snapshot()

    def effective(self, session_key: str) -> SimConfig:
        cached = self._effective_cache.get(session_key)
        if cached is None:
            overrides = self.session_overrides.get(session_key)
            cached = (
                dataclasses.replace(self.global_config, **overrides)
                if overrides
                else self.global_config
            )
            self._effective_cache[session_key] = cached
        return cached

    def any_status_fail(self) -> bool:
        return self.global_config.status_fail or any(
            o.get("status_fail") for o in self.session_overrides.values()
        )

    def config_snapshot(self) -> dict[str, Any]:
        return {
            "global": dataclasses.asdict(self.global_config),
            "sessions": {k: dict(v) for k, v in self.session_overrides.items()},
            "startup": dataclasses.asdict(self.startup),
        }

    def stats_snapshot(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "requests_total": self.requests_total,
            "requests_open": self.requests_open,
            "requests_aborted_by_client": self.requests_aborted_by_client,
            "streams_open": self.streams_open,
            "streams_completed": self.streams_completed,
            "streams_aborted_by_client": self.streams_aborted_by_client,
            "streams_truncated_by_server": self.streams_truncated_by_server,
            "statuses": dict(self.statuses),
            "last_request": None
            if self.last_request is None
            else dict(self.last_request),
            "last_bodies": list(self.last_bodies),
        }


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


def _second_miner_prompt(prompt: str) -> str:
    # A fixed suffix gives the decoy miner a different but still deterministic text.
    return prompt + "\x00second-miner"


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
        return _json_response(
            {"detail": "simulated failure"}, status=config.fail_status
        )
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
    elif (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or max_tokens < 1
    ):
        return _bad_request("max_tokens must be a positive integer")

    if config.answer_tokens:
        tokens, reason = _fixed_tokens(config.answer_tokens, max_tokens)
    else:
        tokens, reason = _tokens_cached(prompt, max_tokens)
    prompt_tokens = estimate_prompt_tokens(prompt)
    created = int(time.time())
    completion_id = _new_completion_id()
    task_id = next(state.task_ids)
    if config.interleave_miners:
        other_tokens, other_reason = _tokens_cached(
            _second_miner_prompt(prompt), max_tokens
        )
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
    choices = [
        {"index": 0, "text": "".join(tokens), "finish_reason": reason, "logprobs": None}
    ]
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
        return (
            b',"usage":'
            + json.dumps(
                _usage(self.prompt_tokens, completion_tokens), separators=(",", ":")
            ).encode()
        )

    def token_event(self, index: int) -> bytes:
        tail = b',"finish_reason":null}],"model":"default"'
        if not self.config.omit_usage and not self.config.usage_only_at_end:
            tail += self._usage_bytes(index + 1)
        return self.head + _TOKEN_JSON[self.tokens[index]] + tail + b"}\n\n"

    def final_event(self) -> bytes:
        tail = (
            b',"finish_reason":'
            + json.dumps(self.reason).encode()
            + b'}],"model":"default"'
        )
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
    main = _ChunkWriter(
        config, completion_id, task_id, created, tokens, reason, prompt_tokens
    )
    decoy = (
        None
        if other is None
        else _ChunkWriter(
            config, other[0], other[1], created, other[2], other[3], prompt_tokens
        )
    )

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
        # must cope with several events in one read anyway (ROUTER.md).
        await response.write(
            b": keep-alive\n\n" + b"".join(event for event, _ in events)
        )
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


async def _write_event(
    request: web.Request, response: web.StreamResponse, event: bytes, split: bool
) -> None:
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
        return _json_response(
            {"status": "error", "detail": "simulated unhealthy router"}, status=503
        )
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
    return sorted(
        {int(k) for k in state.requests} | {int(k) for k in state.session_overrides}
    )


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
    return _json_response(
        {"sessions": [_session_payload(state, sid) for sid in _known_sessions(state)]}
    )


async def _handle_session(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    session_id = int(request.match_info["session_id"])
    payload = _session_payload(state, session_id)
    return _json_response(
        payload, status=503 if payload["state"] == "unhealthy" else 200
    )


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
    startup = dataclasses.replace(config or SimConfig(), **_validated_fields(overrides))
    return _build_app(SimState(startup))


def _build_app(state: SimState) -> web.Application:
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


class SimulatorServer:
    """Runs the simulator in a background thread with its own event loop (for tests).

    stop() then start() serves the same state again on the same port, which lets a
    test take a router down and bring it back.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        self.host = host
        self.port = port
        self.app = create_app(**config)
        self.state = self.app[STATE_KEY]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def completions_url(self, session_id: int | str) -> str:
        return f"{self.base_url}/api/v3/completions/{session_id}"

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        async def boot() -> None:
            # handler_cancellation makes a client disconnect cancel the handler at
            # once, so abort counters are exact; a short shutdown_timeout keeps
            # stop() quick even while a "hang" request is still open.
            self.app = _build_app(self.state)
            runner = web.AppRunner(
                self.app,
                handler_cancellation=True,
                access_log=None,
                shutdown_timeout=0.2,
            )
            await runner.setup()
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
            self._runner = runner
            self.port = runner.addresses[0][1]

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(boot())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(
            target=run, name="router-simulator", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            self._loop = None
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None:
            return
        if runner is not None and not loop.is_closed():
            # Stopping must not fail a test teardown, whatever state the server is in.
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(
                    timeout=5
                )
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        self._loop = self._thread = self._runner = None

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn on the server's loop thread, so state is never mutated concurrently."""
        if self._loop is None:
            return fn(*args)

        async def invoke() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(timeout=5)

    def configure(
        self,
        global_: Mapping[str, Any] | None = None,
        sessions: Mapping[Any, Mapping[str, Any] | None] | None = None,
        **global_fields: Any,
    ) -> dict[str, Any]:
        """Merge knobs (same semantics as POST /_sim/config); returns the whole config."""
        merged = {**(global_ or {}), **global_fields}
        return self._call(self.state.apply, merged, sessions)

    def reset(self) -> dict[str, Any]:
        return self._call(self._reset)

    def _reset(self) -> dict[str, Any]:
        self.state.reset()
        return self.state.config_snapshot()

    def stats(self) -> dict[str, Any]:
        return self._call(self.state.stats_snapshot)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI flags shared by `python -m routerpools.simulator` and the management command."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5010)
    parser.add_argument(
        "--auth-key", default=None, help="require 'Authorization: Bearer KEY'"
    )
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--first-byte-delay-ms", type=float, default=0.0)
    parser.add_argument("--no-usage", action="store_true", help="answer without usage")
    parser.add_argument(
        "--usage-every-chunk", action="store_true", help="running usage on every chunk"
    )
    parser.add_argument("--interleave-miners", action="store_true")
    parser.add_argument("--fail-status", type=int, default=None)
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--disconnect-after-tokens", type=int, default=None)
    parser.add_argument("--split-writes", action="store_true")
    parser.add_argument("--status-fail", action="store_true")
    parser.add_argument("--answer-tokens", type=int, default=None, help="a fixed answer length (benchmarks)")


def config_from_options(options: Mapping[str, Any] | argparse.Namespace) -> SimConfig:
    """Turn parsed CLI options into a SimConfig."""
    values = vars(options) if isinstance(options, argparse.Namespace) else dict(options)
    return SimConfig(
        **_validated_fields(
            {
                "auth_key": values.get("auth_key"),
                "token_delay_ms": values.get("token_delay_ms") or 0.0,
                "first_byte_delay_ms": values.get("first_byte_delay_ms") or 0.0,
                "omit_usage": bool(values.get("no_usage")),
                "usage_only_at_end": not values.get("usage_every_chunk"),
                "interleave_miners": bool(values.get("interleave_miners")),
                "fail_status": values.get("fail_status"),
                "hang": bool(values.get("hang")),
                "disconnect_after_tokens": values.get("disconnect_after_tokens"),
                "split_writes": bool(values.get("split_writes")),
                "status_fail": bool(values.get("status_fail")),
                "answer_tokens": values.get("answer_tokens"),
            }
        )
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket up front so the real port is known before serving."""
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, socktype, proto, _, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    return sock


def serve(
    config: SimConfig,
    host: str,
    port: int,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Run the simulator in the foreground until interrupted."""
    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
    line = f"router simulator listening on http://{host}:{bound_port}"

    def print_ready(_message: str = "") -> None:
        if announce is not None:
            announce(line)
        else:
            print(line, flush=True)

    web.run_app(
        create_app(config),
        sock=sock,
        print=print_ready,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=1.0,
    )


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Cortensor router simulator")
    add_cli_arguments(parser)
    options = parser.parse_args(None if argv is None else list(argv))
    try:
        config = config_from_options(options)
    except ValueError as exc:
        parser.error(str(exc))
    serve(config, options.host, options.port)


if __name__ == "__main__":
    main(sys.argv[1:])
