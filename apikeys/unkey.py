"""A small client of Unkey's v2 key API (createKey, verifyKey, updateKey, deleteKey); the root key never leaves it.

Unkey v2 is POST-only JSON: answers are `{"meta": {"requestId": …}, "data": {…}}`, failures
`{"meta": …, "error": {"title", "detail", "status", "type"}}`, times are Unix milliseconds. Management calls
(create, update, delete) are synchronous, for services run by views and manage.py; `verify_key` is async, for
the gateway's request path, on one shared `httpx.AsyncClient` per event loop.

Every call has one total deadline (`PORTAL_UNKEY_TIMEOUT_MS`). Whatever goes wrong (a timeout, a transport
error, a 4xx/5xx, a body that is not the documented JSON) becomes `UnkeyError`, whose message names the
operation, the HTTP status and Unkey's request id only: never the root key, never the customer's key, never
Unkey's error body (it may echo what it was sent).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
from django.conf import settings

from portal_project.redact import mask_url_credentials

CREATE = "createKey"
VERIFY = "verifyKey"
UPDATE = "updateKey"
DELETE = "deleteKey"

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,80}$")


class UnkeyError(Exception):
    """Unkey did not give a usable answer. The message is safe to log and never holds a secret."""

    def __init__(
        self, operation: str, reason: str, *, status: int | None = None, request_id: str | None = None, transient: bool = False
    ) -> None:
        self.operation = operation
        self.reason = reason
        self.status = status
        self.request_id = request_id
        # A broken connection or a 5xx: worth one more try. A timeout used the time there was; a 4xx or a malformed
        # answer would be the same again.
        self.transient = transient
        where = f" (Unkey request {request_id})" if request_id else ""
        super().__init__(f"Unkey {operation} failed: {reason}{where}")


@dataclass(frozen=True, slots=True)
class RatelimitSpec:
    """A named limit attached to a key at creation: `limit` per `duration_ms`."""

    name: str
    limit: int
    duration_ms: int
    auto_apply: bool = True

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "limit": self.limit, "duration": self.duration_ms, "autoApply": self.auto_apply}


@dataclass(frozen=True, slots=True)
class CreatedUnkeyKey:
    key_id: str
    key: str = field(repr=False)  # the raw key: shown once to whoever created it, never logged


@dataclass(frozen=True, slots=True)
class RatelimitState:
    """One entry of verifyKey's `data.ratelimits`."""

    name: str
    limit: int
    remaining: int
    reset_ms: int  # Unix ms when the window resets
    exceeded: bool
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Verification:
    """verifyKey's answer: `valid` and `code` decide; the rest identifies the key when Unkey found it."""

    valid: bool
    code: str
    key_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    identity_external_id: str | None = None
    ratelimits: tuple[RatelimitState, ...] = ()
    expires_ms: int | None = None
    credits: int | None = None  # remaining uses, when the key has a limited number of them (None: unlimited)


class UnkeyClient:
    """One Unkey API (`api_id`) reached with one root key. Thread-safe for the sync calls; async per event loop."""

    __slots__ = ("base_url", "api_id", "timeout_s", "_root_key", "_sync", "_sync_lock", "_async", "_async_loop")

    def __init__(self, *, root_key: str, api_id: str, base_url: str, timeout_s: float) -> None:
        if not root_key or not api_id:
            raise UnkeyError("setup", "PORTAL_UNKEY_ROOT_KEY and PORTAL_UNKEY_API_ID must be set")
        self.base_url = base_url.rstrip("/")
        self.api_id = api_id
        self.timeout_s = timeout_s
        self._root_key = root_key
        self._sync: httpx.Client | None = None
        self._sync_lock = threading.Lock()
        self._async: httpx.AsyncClient | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"UnkeyClient(base_url={mask_url_credentials(self.base_url)!r}, api_id={self.api_id!r}, root_key=<hidden>)"

    def uses(self, *, root_key: str, api_id: str, base_url: str, timeout_s: float) -> bool:
        return (self._root_key, self.api_id, self.base_url, self.timeout_s) == (root_key, api_id, base_url.rstrip("/"), timeout_s)

    # --- management calls (sync) -------------------------------------------------------------------
    def create_key(
        self,
        *,
        name: str,
        external_id: str,
        meta: dict[str, Any],
        prefix: str,
        byte_length: int,
        expires_ms: int | None = None,
        ratelimits: list[RatelimitSpec] | None = None,
    ) -> CreatedUnkeyKey:
        body: dict[str, Any] = {
            "apiId": self.api_id,
            "prefix": prefix,
            "name": name,
            "byteLength": byte_length,
            "externalId": external_id,
            "meta": meta,
        }
        if expires_ms is not None:
            body["expires"] = expires_ms
        if ratelimits:
            body["ratelimits"] = [r.as_json() for r in ratelimits]
        data = self._post_sync(CREATE, body)
        key_id, key = data.get("keyId"), data.get("key")
        if not isinstance(key_id, str) or not key_id or not isinstance(key, str) or not key:
            raise UnkeyError(CREATE, "the answer has no keyId or key")
        return CreatedUnkeyKey(key_id=key_id, key=key)

    def update_key(self, key_id: str, **fields: Any) -> None:
        self._post_sync(UPDATE, {"keyId": key_id, **fields})

    def disable_key(self, key_id: str) -> None:
        """Revocation at Unkey: the key stays (for its analytics) but every verification says DISABLED."""
        self.update_key(key_id, enabled=False)

    def delete_key(self, key_id: str) -> None:
        self._post_sync(DELETE, {"keyId": key_id})

    # --- verification (async, the gateway's hot path) ----------------------------------------------------
    async def verify_key(
        self, key: str, *, ratelimits: list[dict[str, Any]] | None = None, timeout_s: float | None = None
    ) -> Verification:
        """`timeout_s`, when given, replaces the client's deadline for this call (a retry gets what is left)."""
        body: dict[str, Any] = {"key": key}
        if ratelimits:
            body["ratelimits"] = ratelimits
        return parse_verification(await self._post_async(VERIFY, body, timeout_s=timeout_s))

    async def aclose(self) -> None:
        client, self._async = self._async, None
        if client is not None and self._async_loop is asyncio.get_running_loop():
            await client.aclose()
        self._async_loop = None

    def close(self) -> None:
        with self._sync_lock:
            client, self._sync = self._sync, None
        if client is not None:
            client.close()

    # --- transport ----------------------------------------------------------------------------------------
    def _url(self, operation: str) -> str:
        return f"{self.base_url}/v2/keys.{operation}"

    def _headers(self) -> dict[str, str]:
        # Per request, not as client defaults, so no client object (or its repr) holds the root key.
        return {"Authorization": f"Bearer {self._root_key}", "Content-Type": "application/json"}

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout_s)

    def _sync_client(self) -> httpx.Client:
        with self._sync_lock:
            if self._sync is None:
                self._sync = httpx.Client(timeout=self._timeout(), trust_env=False)
            return self._sync

    def _async_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop:
            # A client's connections belong to the loop that opened them: one client per running loop.
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=50, keepalive_expiry=30)
            self._async = httpx.AsyncClient(timeout=self._timeout(), limits=limits, trust_env=False)
            self._async_loop = loop
        return self._async

    def _post_sync(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._sync_client().post(self._url(operation), content=_dumps(body), headers=self._headers())
        except httpx.TimeoutException:
            raise UnkeyError(operation, f"no answer within {self.timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            raise UnkeyError(operation, f"transport error ({exc.__class__.__name__})") from None
        return decode_answer(operation, response.status_code, response.content)

    async def _post_async(self, operation: str, body: dict[str, Any], *, timeout_s: float | None = None) -> dict[str, Any]:
        client = self._async_client()
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            # One total deadline: httpx's timeouts are per phase (connect, each read), not per call.
            async with asyncio.timeout(timeout_s):
                response = await client.post(self._url(operation), content=_dumps(body), headers=self._headers())
        except (TimeoutError, httpx.TimeoutException):
            raise UnkeyError(operation, f"no answer within {self.timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            raise UnkeyError(operation, f"transport error ({exc.__class__.__name__})", transient=True) from None
        return decode_answer(operation, response.status_code, response.content)


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def decode_answer(operation: str, status: int, content: bytes) -> dict[str, Any]:
    """`data` of a successful answer; UnkeyError for anything else, without quoting Unkey's body."""
    try:
        payload = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        raise UnkeyError(
            operation, f"HTTP {status} with a body that is not JSON", status=status, transient=status >= 500
        ) from None
    if not isinstance(payload, dict):
        raise UnkeyError(
            operation, f"HTTP {status} with a body that is not a JSON object", status=status, transient=status >= 500
        )
    meta = payload.get("meta")
    request_id = meta.get("requestId") if isinstance(meta, dict) else None
    if not isinstance(request_id, str) or not _REQUEST_ID_RE.match(request_id):
        request_id = None
    if status >= 400 or "error" in payload:
        hint = {401: " (the root key was refused)", 403: " (the root key lacks a permission)"}.get(status, "")
        raise UnkeyError(operation, f"HTTP {status}{hint}", status=status, request_id=request_id, transient=status >= 500)
    data = payload.get("data")
    if status != 200 or not isinstance(data, dict):
        raise UnkeyError(operation, f"HTTP {status} without a data object", status=status, request_id=request_id)
    return data


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_verification(data: dict[str, Any]) -> Verification:
    valid, code = data.get("valid"), data.get("code")
    if not isinstance(valid, bool) or not isinstance(code, str):
        raise UnkeyError(VERIFY, "the answer has no valid/code")
    key_id = data.get("keyId")
    if valid and (not isinstance(key_id, str) or not key_id):
        raise UnkeyError(VERIFY, "a valid answer without a keyId")
    meta = data.get("meta")
    identity = data.get("identity")
    external_id = identity.get("externalId") if isinstance(identity, dict) else None
    states: list[RatelimitState] = []
    for item in data.get("ratelimits") or ():
        if not isinstance(item, dict):
            continue
        limit, remaining, reset = _int(item.get("limit")), _int(item.get("remaining")), _int(item.get("reset"))
        if limit is None or remaining is None or reset is None:
            continue
        states.append(
            RatelimitState(
                name=str(item.get("name") or ""),
                limit=limit,
                remaining=max(0, remaining),
                reset_ms=reset,
                exceeded=item.get("exceeded") is True,
                duration_ms=_int(item.get("duration")),
            )
        )
    return Verification(
        valid=valid,
        code=code,
        key_id=key_id if isinstance(key_id, str) and key_id else None,
        meta=meta if isinstance(meta, dict) else {},
        identity_external_id=external_id if isinstance(external_id, str) else None,
        ratelimits=tuple(states),
        expires_ms=_int(data.get("expires")),
        credits=_int(data.get("credits")),
    )


# --- the process's client, from settings -------------------------------------------------------------

_client: UnkeyClient | None = None
_client_lock = threading.Lock()


def unkey_client() -> UnkeyClient:
    """The client for the configured Unkey API; rebuilt only when the settings change (tests override them)."""
    global _client
    config: dict[str, Any] = {
        "root_key": settings.PORTAL_UNKEY_ROOT_KEY,
        "api_id": settings.PORTAL_UNKEY_API_ID,
        "base_url": settings.PORTAL_UNKEY_BASE_URL,
        "timeout_s": settings.PORTAL_UNKEY_TIMEOUT_S,
    }
    client = _client
    if client is not None and client.uses(**config):
        return client
    with _client_lock:
        if _client is None or not _client.uses(**config):
            _client = UnkeyClient(**config)
        return _client
