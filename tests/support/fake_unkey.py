"""A fake Unkey v2 key API for tests: an aiohttp server on 127.0.0.1 in a background thread.

It follows the documented shapes: POST-only JSON, `{"meta": {"requestId"}, "data": {...}}` answers and
`{"meta", "error": {"title", "detail", "status", "type"}}` failures, Unix-millisecond times. It implements
createKey, verifyKey (enabled flag, expiry, credits, named fixed-window rate limits), updateKey and deleteKey,
and checks `Authorization: Bearer <root key>` on every call.

Knobs: `delay_s` (answer late, plus up to `delay_jitter_s`), `fail_status` (answer that HTTP status with an error body), `malformed`
(answer 200 with a body that is not JSON), `verify_code` (verifyKey answers that code for every found key),
each limited to some operations with `only`; `fail_next` (the next N calls answer `fail_status`, 503 if unset, then
the fake is well again) and `drop_next` (the next N calls get their connection closed, no answer) for one-off
hiccups; `advance(ms)` moves the fake's clock. Every request is recorded
(operation, JSON body, whether it was authorized); the Authorization header itself is never kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from simulator.server import BackgroundServer

OPERATIONS = ("createKey", "verifyKey", "updateKey", "deleteKey")
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def base58(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, rest = divmod(number, 58)
        out = BASE58[rest] + out
    return BASE58[0] * (len(data) - len(data.lstrip(b"\0"))) + out


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class FakeRatelimit:
    name: str
    limit: int
    duration: int
    auto_apply: bool


@dataclass
class FakeKey:
    key_id: str
    digest: str
    api_id: str
    prefix: str
    name: str | None
    external_id: str | None
    identity_id: str | None
    meta: dict[str, Any]
    expires: int | None
    enabled: bool
    credits: int | None
    ratelimits: dict[str, FakeRatelimit]
    created_at: int


@dataclass(frozen=True)
class RecordedRequest:
    operation: str
    body: Any
    authorized: bool


@dataclass
class Knobs:
    delay_s: float = 0.0
    delay_jitter_s: float = 0.0  # plus up to this much more, uniformly (the benchmark's 20-40 ms Unkey)
    fail_status: int | None = None
    malformed: bool = False
    verify_code: str | None = None
    fail_next: int = 0
    drop_next: int = 0
    only: frozenset[str] | None = None  # None: every operation

    def applies(self, operation: str) -> bool:
        return self.only is None or operation in self.only


class ApiError(Exception):
    def __init__(self, status: int, title: str, detail: str, kind: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.kind = status, title, detail, kind


@dataclass
class FakeUnkey:
    """The fake's state; safe to read and change from the test thread while the server runs."""

    root_key: str
    api_id: str
    keys: dict[str, FakeKey] = field(default_factory=dict)
    by_digest: dict[str, str] = field(default_factory=dict)
    windows: dict[tuple[str, str, int], int] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    knobs: Knobs = field(default_factory=Knobs)
    clock_offset_ms: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- test helpers ------------------------------------------------------------------------------
    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.clock_offset_ms

    def advance(self, ms: int) -> None:
        with self.lock:
            self.clock_offset_ms += ms

    def configure(self, **knobs: Any) -> None:
        with self.lock:
            if "only" in knobs and knobs["only"] is not None:
                knobs["only"] = frozenset(knobs["only"])
            for name, value in knobs.items():
                if not hasattr(self.knobs, name):
                    raise ValueError(f"unknown knob {name}")
                setattr(self.knobs, name, value)

    def reset(self) -> None:
        with self.lock:
            self.keys.clear()
            self.by_digest.clear()
            self.windows.clear()
            self.requests.clear()
            self.knobs = Knobs()
            self.clock_offset_ms = 0

    def recorded(self, operation: str) -> list[Any]:
        with self.lock:
            return [r.body for r in self.requests if r.operation == operation]

    def key(self, key_id: str) -> FakeKey:
        with self.lock:
            return self.keys[key_id]

    def set_ratelimit(self, key_id: str, name: str, *, limit: int, duration: int = 60_000) -> None:
        with self.lock:
            self.keys[key_id].ratelimits[name] = FakeRatelimit(name, limit, duration, True)

    # --- the API ---------------------------------------------------------------------------------------
    def create_key(self, body: dict[str, Any]) -> dict[str, Any]:
        api_id = _need(body, "apiId", str)
        if api_id != self.api_id:
            raise ApiError(
                404, "Not Found", "The requested API does not exist.", "https://unkey.com/docs/errors/unkey/data/api_not_found"
            )
        prefix = body.get("prefix") or ""
        byte_length = body.get("byteLength", 16)
        if not isinstance(byte_length, int) or not 16 <= byte_length <= 255:
            raise _bad_request("byteLength must be an integer from 16 to 255")
        expires = body.get("expires")
        if expires is not None and (not isinstance(expires, int) or expires <= self.now_ms()):
            raise _bad_request("expires must be a Unix time in milliseconds in the future")
        meta = body.get("meta") or {}
        if not isinstance(meta, dict):
            raise _bad_request("meta must be an object")
        ratelimits: dict[str, FakeRatelimit] = {}
        for item in body.get("ratelimits") or []:
            if not isinstance(item, dict):
                raise _bad_request("ratelimits must be objects")
            name = _need(item, "name", str)
            limit, duration = _need(item, "limit", int), _need(item, "duration", int)
            if limit < 0 or duration < 1000:
                raise _bad_request("a ratelimit needs limit >= 0 and duration >= 1000 ms")
            ratelimits[name] = FakeRatelimit(name, limit, duration, bool(item.get("autoApply", False)))
        credits = body.get("credits")
        remaining = credits.get("remaining") if isinstance(credits, dict) else None
        random_part = base58(secrets.token_bytes(byte_length))
        raw = f"{prefix}_{random_part}" if prefix else random_part
        key_id = "key_" + base58(secrets.token_bytes(16))
        external_id = body.get("externalId")
        key = FakeKey(
            key_id=key_id,
            digest=_digest(raw),
            api_id=api_id,
            prefix=prefix,
            name=body.get("name"),
            external_id=external_id,
            identity_id=("id_" + hashlib.sha256(external_id.encode()).hexdigest()[:16]) if external_id else None,
            meta=meta,
            expires=expires,
            enabled=body.get("enabled", True) is not False,
            credits=remaining if isinstance(remaining, int) else None,
            ratelimits=ratelimits,
            created_at=self.now_ms(),
        )
        self.keys[key_id] = key
        self.by_digest[key.digest] = key_id
        return {"keyId": key_id, "key": raw}

    def update_key(self, body: dict[str, Any]) -> dict[str, Any]:
        key = self._existing(_need(body, "keyId", str))
        if "enabled" in body:
            if not isinstance(body["enabled"], bool):
                raise _bad_request("enabled must be a boolean")
            key.enabled = body["enabled"]
        if "expires" in body:
            key.expires = body["expires"]
        if "meta" in body:
            key.meta = body["meta"] or {}
        if "name" in body:
            key.name = body["name"]
        if "ratelimits" in body:
            key.ratelimits = {
                r["name"]: FakeRatelimit(r["name"], r["limit"], r["duration"], bool(r.get("autoApply", False)))
                for r in body["ratelimits"] or []
            }
        return {}

    def delete_key(self, body: dict[str, Any]) -> dict[str, Any]:
        key = self._existing(_need(body, "keyId", str))
        del self.keys[key.key_id]
        self.by_digest.pop(key.digest, None)
        return {}

    def verify_key(self, body: dict[str, Any]) -> dict[str, Any]:
        raw = _need(body, "key", str)
        key_id = self.by_digest.get(_digest(raw))
        if key_id is None:
            return {"valid": False, "code": "NOT_FOUND"}
        key = self.keys[key_id]
        now = self.now_ms()
        base: dict[str, Any] = {
            "keyId": key.key_id,
            "name": key.name,
            "meta": key.meta,
            "enabled": key.enabled,
            "expires": key.expires,
            "permissions": [],
            "roles": [],
        }
        if key.external_id:
            base["identity"] = {"id": key.identity_id, "externalId": key.external_id, "meta": {}, "ratelimits": []}
        if self.knobs.verify_code is not None:
            return {**base, "valid": self.knobs.verify_code == "VALID", "code": self.knobs.verify_code}
        if not key.enabled:
            return {**base, "valid": False, "code": "DISABLED"}
        if key.expires is not None and now >= key.expires:
            return {**base, "valid": False, "code": "EXPIRED"}
        cost = 1
        credits = body.get("credits")
        if isinstance(credits, dict) and isinstance(credits.get("cost"), int):
            cost = credits["cost"]
        if key.credits is not None and key.credits < cost:
            return {**base, "valid": False, "code": "USAGE_EXCEEDED", "credits": key.credits}
        # Named limits: those asked for, with their cost, and every auto-applied one not asked for, cost 1.
        asked: dict[str, int] = {}
        for item in body.get("ratelimits") or []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                asked[item["name"]] = int(item.get("cost", 1))
        applied = [(rl, asked[name]) for name, rl in key.ratelimits.items() if name in asked]
        applied += [(rl, 1) for name, rl in key.ratelimits.items() if name not in asked and rl.auto_apply]
        results: list[dict[str, Any]] = []
        exceeded = False
        windows: list[tuple[tuple[str, str, int], int]] = []
        for rl, rl_cost in applied:
            start = now // rl.duration * rl.duration
            slot = (key.key_id, rl.name, start)
            used = self.windows.get(slot, 0)
            over = used + rl_cost > rl.limit
            exceeded = exceeded or over
            windows.append((slot, rl_cost))
            results.append(
                {
                    "id": f"rl_{rl.name}",
                    "name": rl.name,
                    "limit": rl.limit,
                    "duration": rl.duration,
                    "reset": start + rl.duration,
                    "remaining": max(0, rl.limit - used - (0 if over else rl_cost)),
                    "exceeded": over,
                    "autoApply": rl.auto_apply,
                }
            )
        if exceeded:
            return {**base, "valid": False, "code": "RATE_LIMITED", "ratelimits": results}
        for slot, rl_cost in windows:
            self.windows[slot] = self.windows.get(slot, 0) + rl_cost
        answer = {**base, "valid": True, "code": "VALID", "ratelimits": results}
        if key.credits is not None:
            key.credits -= cost
            answer["credits"] = key.credits
        return answer

    def _existing(self, key_id: str) -> FakeKey:
        key = self.keys.get(key_id)
        if key is None:
            raise ApiError(
                404, "Not Found", "The requested key does not exist.", "https://unkey.com/docs/errors/unkey/data/key_not_found"
            )
        return key


def _need(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise _bad_request(f"{name} is required and must be a {kind.__name__}")
    return value


def _bad_request(detail: str) -> ApiError:
    return ApiError(400, "Bad Request", detail, "https://unkey.com/docs/errors/unkey/application/invalid_input")


def _request_id() -> str:
    return "req_" + secrets.token_hex(8)


def _error_response(err: ApiError) -> web.Response:
    body = {
        "meta": {"requestId": _request_id()},
        "error": {"title": err.title, "detail": err.detail, "status": err.status, "type": err.kind},
    }
    return web.json_response(body, status=err.status)


def create_app(fake: FakeUnkey) -> web.Application:
    handlers = {
        "createKey": fake.create_key,
        "verifyKey": fake.verify_key,
        "updateKey": fake.update_key,
        "deleteKey": fake.delete_key,
    }

    async def handle(request: web.Request) -> web.Response:
        operation = request.match_info["operation"]
        if operation not in handlers:
            return _error_response(
                ApiError(404, "Not Found", "no such route", "https://unkey.com/docs/errors/unkey/application/not_found")
            )
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        authorization = request.headers.get("Authorization", "")
        authorized = secrets.compare_digest(authorization.encode(), f"Bearer {fake.root_key}".encode())
        with fake.lock:
            fake.requests.append(RecordedRequest(operation, body, authorized))
            knobs = Knobs(**vars(fake.knobs))
            # One-off failures count down under the lock, so N means exactly N calls however they interleave.
            fail_once = drop_once = False
            if fake.knobs.applies(operation) and fake.knobs.drop_next > 0:
                fake.knobs.drop_next -= 1
                drop_once = True
            elif fake.knobs.applies(operation) and fake.knobs.fail_next > 0:
                fake.knobs.fail_next -= 1
                fail_once = True
        if knobs.applies(operation) and (knobs.delay_s or knobs.delay_jitter_s):
            await asyncio.sleep(knobs.delay_s + random.uniform(0, knobs.delay_jitter_s))
        if drop_once:
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)  # never reaches the client: the connection is gone
        if fail_once:
            status = knobs.fail_status or 503
            return _error_response(
                ApiError(
                    status, "Service Unavailable", "simulated failure", "https://unkey.com/docs/errors/unkey/application/internal"
                )
            )
        if knobs.applies(operation) and knobs.fail_status is not None:
            return _error_response(
                ApiError(
                    knobs.fail_status,
                    "Internal Server Error",
                    "simulated failure",
                    "https://unkey.com/docs/errors/unkey/application/internal",
                )
            )
        if knobs.applies(operation) and knobs.malformed:
            return web.Response(body=b'{"meta": {"requestId": "req_x"}, "data": {"valid": tr', content_type="application/json")
        if not authorization.startswith("Bearer "):
            return _error_response(
                ApiError(
                    400,
                    "Bad Request",
                    "Authorization header must be 'Bearer <root key>'",
                    "https://unkey.com/docs/errors/unkey/authentication/malformed",
                )
            )
        if not authorized:
            return _error_response(
                ApiError(
                    401,
                    "Unauthorized",
                    "The provided root key is invalid.",
                    "https://unkey.com/docs/errors/unkey/authentication/key_not_found",
                )
            )
        if not isinstance(body, dict):
            return _error_response(_bad_request("the body must be a JSON object"))
        try:
            with fake.lock:
                data = handlers[operation](body)
        except ApiError as err:
            return _error_response(err)
        return web.json_response({"meta": {"requestId": _request_id()}, "data": data})

    app = web.Application()
    app.router.add_post("/v2/keys.{operation}", handle)
    return app


class FakeUnkeyServer(BackgroundServer):
    """Serves the fake from a thread of its own (the simulator's BackgroundServer); `fake` is its state."""

    thread_name = "fake-unkey"

    def __init__(self, *, root_key: str, api_id: str, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.fake = FakeUnkey(root_key=root_key, api_id=api_id)

    def make_app(self) -> web.Application:
        return create_app(self.fake)
