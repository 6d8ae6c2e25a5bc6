"""Admission for every /v1 request: per-key and per-organization rate limits, concurrency and plan allowances.

Every admission checks, for the key and for its organization (an organization's keys share its budget,
with the same numbers as a single key): requests per minute, tokens per minute, concurrent in-flight
requests, the plan's short reset window (`window_requests` per `window_seconds`) and the weekly
allowance (`weekly_requests` per ISO week, resetting Monday 00:00 UTC). A plan field of None means no
such limit. Counters are fixed windows keyed by the window's start, so they are exact; every key carries
a TTL. With `settings.REDIS_URL` they live in Redis and one Lua script per admission reads every counter
and only then increments them all, so a denied request consumes nothing and two processes can never
overshoot together. Without Redis (the embedded laptop default) the same checks run against an
in-process store; the check-then-increment runs without an await in between, so it is atomic on the
event loop.

Tokens are reserved before the upstream call (prompt estimate + max_tokens) and settled afterwards from
the real usage, in the window the reservation went to. Only the max_tokens part is capped at what the
tightest tokens per minute limit leaves after the prompt; a prompt whose estimate alone exceeds a limit
(the key's or the organization's) is refused, as it could never fit. A request that named no max_tokens
reserves its alias's cap only as far as the minute has room left now (`spare_tokens`): the length of its
answer was not the client's choice, so it never makes the request wait. Concurrency slots are members of a sorted set
scored by an expiry, pruned by the script, so a crashed process leaks a slot for at most
`PORTAL_LIMITS_SLOT_TTL_S`; `finish()` releases them exactly once. `peek()` reads the counters without
changing them, for the headers of a response refused after authentication but before admission.

Redis unreachable: by default (`PORTAL_LIMITS_FAIL_MODE=open`) admissions fall back to the in-process
store, with one loud log line per 10 s and the `redis_failures` / `fallback_admissions` counters. Refusing
all paying traffic because a cache is down is worse than running for a while with per-process limits
(each process then admits up to the full limit, and starts from zero). `closed` answers 503
`limits_unavailable` instead. Redis calls use 0.25 s socket timeouts, no retries and a hard cap per call,
and after a failure Redis is skipped for one second (a small circuit), so a dead Redis never stalls a
request for long. A burst larger than the connection pool queues for a connection (untimed) rather than
counting as an outage: redis-py's pool raises at once when full, which would fail open under load. A reply lost to a timeout may still have been applied in Redis; its slot then expires
by TTL.

Time: the limiter's clock is injectable (`now`, epoch seconds) so tests can freeze it; window keys are
computed from it, so gateway hosts should run NTP (a skewed host counts into a neighbouring window).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.errors import GatewayError, LimitsUnavailable, QuotaExceeded, RateLimited
from gateway.principal import Principal

if TYPE_CHECKING:
    from billing.selectors import PlanRecord

log = logging.getLogger("gateway.limits")

Surface = Literal["openai", "anthropic", "envelope"]
FailMode = Literal["open", "closed"]

MINUTE_S = 60
WEEK_S = 7 * 86400
MONDAY_OFFSET_S = 4 * 86400  # 1970-01-01 was a Thursday; the first Monday is 1970-01-05
TTL_MARGIN_S = 120  # keys outlive their window a little: a late settle still finds its counter
SOCKET_TIMEOUT_S = 0.25
CALL_TIMEOUT_S = 0.3  # hard cap on one Redis round trip, connect included
CIRCUIT_OPEN_S = 1.0
MAX_PENDING_RELEASES = 10_000  # slot releases kept for retry during an outage; beyond, the TTL frees them
OUTAGE_LOG_EVERY_S = 10.0
DEFAULT_SLOT_TTL_S = 300
SWEEP_EVERY = 4096
DEFAULT_MAX_CONNECTIONS = 50

# The kinds of limit; the names are the plan's field names and appear in error details.
RPM = "requests_per_minute"
TPM = "tokens_per_minute"
CONCURRENCY = "concurrent_requests"
WINDOW = "window_requests"
WEEKLY = "weekly_requests"
QUOTA_KINDS = frozenset({WINDOW, WEEKLY})
REQUEST_KINDS = frozenset({RPM, WINDOW, WEEKLY})
# What `/v1/messages/count_tokens` is admitted against: a request a minute like any other and a concurrency slot
# (released at once), but not the plan's window and weekly allowances (what a plan sells is completions; an
# SDK counting before it sends must not spend them), nor tokens per minute (counting generates none).
COUNTING_KINDS = frozenset({RPM, CONCURRENCY})




# --- What an admission checks ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One limit on one scope: a counter (`slot=False`) or a concurrency set (`slot=True`)."""

    kind: str
    scope: Literal["key", "organization"]
    store_key: str
    limit: int
    amount: int  # added on admission; 1 for requests, the reservation for tokens
    ttl_s: int
    reset_at: float | None  # None for concurrency: a slot frees when a request finishes
    slot: bool = False
    window_s: int = 0
    takes_spare: bool = False  # a tokens per minute counter that also takes the admission's spare tokens


@dataclass(frozen=True, slots=True)
class LimitState:
    """What a response header reports about one limit."""

    limit: int
    remaining: int
    reset_seconds: int
    reset_at: float


@dataclass(slots=True)
class Admission:
    """An admitted request: what its headers report and what `finish()` must undo."""

    request_id: str
    surface: str
    now: float
    requests: LimitState | None
    tokens: LimitState | None
    reserved_tokens: int = 0
    backend: Literal["redis", "local", "none"] = "none"
    token_keys: tuple[str, ...] = ()
    slot_keys: tuple[str, ...] = ()
    finished: bool = False

    def headers(self) -> dict[str, str]:
        return anthropic_headers(self) if self.surface == "anthropic" else openai_headers(self)


@dataclass(slots=True)
class Outcome:
    """A store's answer: admitted or not, the counter values (after admission; as read when denied)."""

    admitted: bool
    values: list[int]
    denied: list[int]  # indexes into the checks
    spare: int = 0  # the spare tokens granted: what every counter taking them had room for


# --- Header formats -----------------------------------------------------------------------------------


def format_duration(seconds: int) -> str:
    """OpenAI's reset format: `1s`, `6m0s`, `1h2m3s`."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(math.ceil(epoch), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def openai_headers(admission: Admission) -> dict[str, str]:
    headers: dict[str, str] = {}
    for suffix, state in (("requests", admission.requests), ("tokens", admission.tokens)):
        if state is not None:
            headers[f"x-ratelimit-limit-{suffix}"] = str(state.limit)
            headers[f"x-ratelimit-remaining-{suffix}"] = str(state.remaining)
            headers[f"x-ratelimit-reset-{suffix}"] = format_duration(state.reset_seconds)
    return headers


def anthropic_headers(admission: Admission) -> dict[str, str]:
    headers: dict[str, str] = {}
    for part, state in (("requests", admission.requests), ("tokens", admission.tokens)):
        if state is not None:
            headers[f"anthropic-ratelimit-{part}-limit"] = str(state.limit)
            headers[f"anthropic-ratelimit-{part}-remaining"] = str(state.remaining)
            headers[f"anthropic-ratelimit-{part}-reset"] = rfc3339(state.reset_at)
    return headers


# --- Stores ------------------------------------------------------------------------------------------

# KEYS: the counters, then the concurrency sets.
# ARGV: now_ms, counters, sets, slot_ttl_ms, member, spare, then (limit, amount, ttl_ms, takes_spare) per counter,
# then limit per set. Spare tokens go to the counters that take them as far as every one of them has room left
# after its own amount (never a reason to refuse); the reply ends with how many were granted.
ADMIT_LUA = """
local now = tonumber(ARGV[1])
local c = tonumber(ARGV[2])
local z = tonumber(ARGV[3])
local slot_ttl = tonumber(ARGV[4])
local member = ARGV[5]
local spare = tonumber(ARGV[6])
local values = {}
local denied = {}
local a = 7
for i = 1, c do
  local cur = tonumber(redis.call('GET', KEYS[i]) or '0')
  values[i] = cur
  if ARGV[a + 3] == '1' then
    spare = math.max(0, math.min(spare, tonumber(ARGV[a]) - cur - tonumber(ARGV[a + 1])))
  end
  a = a + 4
end
a = 7
for i = 1, c do
  local need = tonumber(ARGV[a + 1])
  if ARGV[a + 3] == '1' then need = need + spare end
  if values[i] + math.max(need, 1) > tonumber(ARGV[a]) then denied[#denied + 1] = i end
  a = a + 4
end
for j = 1, z do
  local key = KEYS[c + j]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local cur = redis.call('ZCARD', key)
  values[c + j] = cur
  if cur + 1 > tonumber(ARGV[a]) then denied[#denied + 1] = c + j end
  a = a + 1
end
if #denied > 0 then return {0, values, denied, 0} end
a = 7
for i = 1, c do
  local amount = tonumber(ARGV[a + 1])
  if ARGV[a + 3] == '1' then amount = amount + spare end
  values[i] = redis.call('INCRBY', KEYS[i], amount)
  redis.call('PEXPIRE', KEYS[i], ARGV[a + 2])
  a = a + 4
end
for j = 1, z do
  local key = KEYS[c + j]
  redis.call('ZADD', key, now + slot_ttl, member)
  redis.call('PEXPIRE', key, slot_ttl)
  values[c + j] = redis.call('ZCARD', key)
end
return {1, values, denied, spare}
"""

# KEYS: the token counters, then the concurrency sets. ARGV: token delta, number of token counters, member.
FINISH_LUA = """
local delta = tonumber(ARGV[1])
local t = tonumber(ARGV[2])
if delta ~= 0 then
  for i = 1, t do
    -- Only a counter that still exists: INCRBY on an expired one would create a key without a TTL.
    if redis.call('EXISTS', KEYS[i]) == 1 then
      if redis.call('INCRBY', KEYS[i], delta) < 0 then redis.call('SET', KEYS[i], 0, 'KEEPTTL') end
    end
  end
end
for j = t + 1, #KEYS do redis.call('ZREM', KEYS[j], ARGV[3]) end
return 1
"""


class LocalStore:
    """The in-process store: the same checks as the Lua script, run without an await in between."""

    def __init__(self) -> None:
        self._counters: dict[str, tuple[int, float]] = {}  # key -> (value, expires at)
        self._slots: dict[str, dict[str, float]] = {}  # key -> {member: expires at}
        self._lock = threading.Lock()  # the event loop needs none; a stray thread must not corrupt the dicts
        self._ops = 0

    def admit(self, checks: Sequence[Check], *, now: float, member: str, slot_ttl_s: float, spare: int = 0) -> Outcome:
        with self._lock:
            self._ops += 1
            if self._ops % SWEEP_EVERY == 0:
                self._sweep(now)
            for check in checks:
                if check.takes_spare:
                    value, expires_at = self._counters.get(check.store_key, (0, 0.0))
                    current = value if expires_at > now else 0
                    spare = max(0, min(spare, check.limit - current - check.amount))
            if not any(check.takes_spare for check in checks):
                spare = 0
            values: list[int] = []
            denied: list[int] = []
            for index, check in enumerate(checks):
                if check.slot:
                    slots = self._slots.get(check.store_key)
                    if slots and len(slots) >= check.limit:
                        # Expired slots only matter at the limit; the periodic sweep drops the rest.
                        for expired in [m for m, exp in slots.items() if exp <= now]:
                            del slots[expired]
                    current = len(slots) if slots else 0
                    if current + 1 > check.limit:
                        denied.append(index)
                else:
                    value, expires_at = self._counters.get(check.store_key, (0, 0.0))
                    current = value if expires_at > now else 0
                    need = check.amount + (spare if check.takes_spare else 0)
                    if current + max(need, 1) > check.limit:
                        denied.append(index)
                values.append(current)
            if denied:
                return Outcome(False, values, denied)
            for index, check in enumerate(checks):
                if check.slot:
                    slots = self._slots.setdefault(check.store_key, {})
                    slots[member] = now + slot_ttl_s
                    values[index] = len(slots)
                else:
                    values[index] += check.amount + (spare if check.takes_spare else 0)
                    self._counters[check.store_key] = (values[index], now + check.ttl_s)
            return Outcome(True, values, denied, spare)

    def finish(self, *, token_keys: Sequence[str], delta: int, slot_keys: Sequence[str], member: str) -> None:
        with self._lock:
            if delta:
                for key in token_keys:
                    entry = self._counters.get(key)
                    if entry is not None:
                        self._counters[key] = (max(0, entry[0] + delta), entry[1])
            for key in slot_keys:
                slots = self._slots.get(key)
                if slots is not None:
                    slots.pop(member, None)
                    if not slots:
                        del self._slots[key]

    def peek(self, checks: Sequence[Check], *, now: float) -> list[int]:
        """The counters' current values; changes nothing."""
        with self._lock:
            values: list[int] = []
            for check in checks:
                value, expires_at = self._counters.get(check.store_key, (0, 0.0))
                values.append(value if expires_at > now else 0)
            return values

    def _sweep(self, now: float) -> None:
        self._counters = {k: v for k, v in self._counters.items() if v[1] > now}
        for key in list(self._slots):
            live = {m: exp for m, exp in self._slots[key].items() if exp > now}
            if live:
                self._slots[key] = live
            else:
                del self._slots[key]

    def clear(self) -> None:
        with self._lock:
            self._counters.clear()
            self._slots.clear()


class RedisUnavailable(Exception):
    """Redis did not answer in time or refused; the limiter decides what that means."""


@dataclass
class _RedisBinding:
    loop: asyncio.AbstractEventLoop
    client: aioredis.Redis
    admit: Any  # redis.commands.core.AsyncScript
    finish: Any
    # One permit per pooled connection: a burst queues here, untimed, instead of failing with
    # MaxConnectionsError (redis-py's pool raises at once when full), which would look like an outage.
    permits: asyncio.Semaphore


# --- The limiter --------------------------------------------------------------------------------------


def week_start(now: float) -> float:
    """Monday 00:00 UTC of the ISO week holding `now`."""
    return (now - MONDAY_OFFSET_S) // WEEK_S * WEEK_S + MONDAY_OFFSET_S


def _window_label(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}-hour"
    if seconds % 60 == 0:
        return f"{seconds // 60}-minute"
    return f"{seconds}-second"


@dataclass
class Limiter:
    redis_url: str | None = None
    prefix: str = "lim"
    fail_mode: FailMode = "open"
    slot_ttl_s: float = DEFAULT_SLOT_TTL_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    now: Callable[[], float] = time.time  # epoch seconds; timezone.now() costs a datetime per call on the hot path
    # Operational counters, read by health and metrics.
    redis_failures: int = 0
    fallback_admissions: int = 0
    denials: int = 0
    releases_retried: int = 0
    local: LocalStore = field(default_factory=LocalStore)
    _binding: _RedisBinding | None = field(default=None, repr=False)
    _circuit_open_until: float = 0.0
    _last_outage_log: float = field(default=-math.inf)
    # Concurrency slots whose release Redis did not take (an outage, a timeout): released as soon as
    # Redis answers again, before the next admission, instead of staying taken until their TTL.
    _pending_releases: list[Admission] = field(default_factory=list, repr=False)

    @classmethod
    def from_settings(cls) -> Limiter:
        fail_mode = str(getattr(settings, "PORTAL_LIMITS_FAIL_MODE", "open") or "open").lower()
        if fail_mode not in ("open", "closed"):
            raise ValueError(f"PORTAL_LIMITS_FAIL_MODE must be 'open' or 'closed', got {fail_mode!r}")
        return cls(
            redis_url=getattr(settings, "REDIS_URL", None) or None,
            prefix=getattr(settings, "PORTAL_LIMITS_PREFIX", "lim") or "lim",
            fail_mode=fail_mode,  # type: ignore[arg-type]
            slot_ttl_s=float(getattr(settings, "PORTAL_LIMITS_SLOT_TTL_S", DEFAULT_SLOT_TTL_S)),
            max_connections=int(getattr(settings, "PORTAL_LIMITS_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS)),
        )

    # --- public API ---------------------------------------------------------------------------------
    async def admit(
        self,
        principal: Principal,
        *,
        request_id: str,
        tokens: int = 0,
        up_to_tokens: int = 0,
        spare_tokens: int = 0,
        surface: Surface = "openai",
        kinds: frozenset[str] | None = None,
    ) -> Admission:
        """Admit the request or raise RateLimited / QuotaExceeded (LimitsUnavailable when failing closed).

        `tokens` must fit the tokens per minute limits whole (the prompt: a request whose prompt alone is over a
        limit is refused as one that can never fit); `up_to_tokens` is reserved as far as the tightest limit leaves
        room after them (max_tokens: an answer may be asked longer than a minute's budget, and runs when the
        minute is otherwise unused). `spare_tokens` is reserved only as far as every tokens per minute counter has
        room left now, after the rest: never a reason to refuse (the answer of a request that named no max_tokens,
        whose length the client did not choose: reserving the alias's whole cap would turn such requests away
        whenever the minute is partly used). `kinds` limits the checks to those kinds of limit (None: all of them).
        """
        now = self.now()
        tokens = max(0, int(tokens))
        checks = self._checks(principal, now=now, tokens=tokens)
        if kinds is not None:
            checks = [c for c in checks if c.kind in kinds]
        if not checks:
            return Admission(request_id=request_id, surface=surface, now=now, requests=None, tokens=None)
        self._refuse_oversized_reservation(checks, now=now, tokens=tokens, surface=surface)
        if up_to_tokens > 0:
            # Every scope's limit (the key's and the organization's), the tightest wins.
            budget = min((c.limit for c in checks if c.kind == TPM), default=None)
            extra = int(up_to_tokens) if budget is None else min(int(up_to_tokens), budget - tokens)
            if extra > 0:
                tokens += extra
                checks = [replace(c, amount=tokens) if c.kind == TPM else c for c in checks]
        spare = max(0, int(spare_tokens))
        if spare:
            checks = [replace(c, takes_spare=True) if c.kind == TPM else c for c in checks]

        backend: Literal["redis", "local"] = "local"
        outcome: Outcome | None = None
        if self.redis_url:
            if self._pending_releases and time.monotonic() >= self._circuit_open_until:
                await self._retry_releases()
            try:
                outcome = await self._redis_admit(checks, now=now, member=request_id, spare=spare)
                backend = "redis"
            except RedisUnavailable as exc:
                self._on_redis_failure(exc)
                if self.fail_mode == "closed":
                    raise LimitsUnavailable(headers={"retry-after": "1"}) from exc
                self.fallback_admissions += 1
        if outcome is None:
            outcome = self.local.admit(checks, now=now, member=request_id, slot_ttl_s=self.slot_ttl_s, spare=spare)

        admission = Admission(
            request_id=request_id,
            surface=surface,
            now=now,
            requests=self._tightest(checks, outcome.values, REQUEST_KINDS, now),
            tokens=self._tightest(checks, outcome.values, frozenset({TPM}), now),
            reserved_tokens=tokens + outcome.spare,
            backend=backend,
            token_keys=tuple(c.store_key for c in checks if c.kind == TPM),
            slot_keys=tuple(c.store_key for c in checks if c.slot),
        )
        if not outcome.admitted:
            self.denials += 1
            raise self._denial(checks, outcome, admission)
        return admission

    async def peek(self, principal: Principal, *, surface: Surface = "openai") -> Admission | None:
        """The counters as they stand, for the headers of a response refused before admission; consumes nothing.

        None when the plan sets no limit, or when failing closed and the counters cannot be read.
        """
        now = self.now()
        checks = [c for c in self._checks(principal, now=now, tokens=0) if not c.slot]
        if not checks:
            return None
        values: list[int] | None = None
        if self.redis_url:
            try:
                reply = await self._call(_mget, [c.store_key for c in checks], [])
                values = [int(v or 0) for v in reply]
            except RedisUnavailable as exc:
                self._on_redis_failure(exc)
                if self.fail_mode == "closed":
                    return None
        if values is None:
            values = self.local.peek(checks, now=now)
        return Admission(
            request_id="",
            surface=surface,
            now=now,
            requests=self._tightest(checks, values, REQUEST_KINDS, now),
            tokens=self._tightest(checks, values, frozenset({TPM}), now),
            finished=True,  # nothing to settle or release
        )

    async def finish(self, admission: Admission, *, actual_tokens: int | None = None) -> None:
        """Settle the token reservation (None keeps it) and release the concurrency slot; idempotent."""
        if admission.finished:
            return
        admission.finished = True  # before any await: a second finish racing this one does nothing
        delta = 0 if actual_tokens is None or not admission.token_keys else int(actual_tokens) - admission.reserved_tokens
        if not admission.slot_keys and not delta:
            return
        if admission.backend == "local":
            self.local.finish(
                token_keys=admission.token_keys, delta=delta, slot_keys=admission.slot_keys, member=admission.request_id
            )
            return
        if admission.backend == "redis":
            # Shielded: finish runs in the `finally` of a request whose client may just have gone away,
            # and a cancelled release would hold the slot until its TTL.
            await asyncio.shield(self._release_in_redis(admission, delta=delta))

    async def _release_in_redis(self, admission: Admission, *, delta: int) -> None:
        try:
            await self._redis_finish(admission, delta=delta)
        except RedisUnavailable as exc:
            # The slot is released again once Redis answers (or expires by its TTL). The token settlement
            # is not retried: a timed-out call may have been applied, and applying it twice would refund
            # twice; the reservation stands, which errs on the customer's limit, not on our bill.
            self._on_redis_failure(exc)
            if admission.slot_keys and len(self._pending_releases) < MAX_PENDING_RELEASES:
                self._pending_releases.append(admission)

    async def _retry_releases(self) -> None:
        """Release the slots a failed finish left taken: one ZREM per slot set with all its members, in one
        pipelined round trip (ZREM is idempotent, so a release Redis did take is harmless to repeat)."""
        pending, self._pending_releases = self._pending_releases, []
        members: dict[str, list[str]] = {}
        for admission in pending:
            for key in admission.slot_keys:
                members.setdefault(key, []).append(admission.request_id)
        try:
            await self._call(lambda b: _zrem_members(b, members), [], [])
        except RedisUnavailable as exc:
            self._pending_releases[:0] = pending
            self._on_redis_failure(exc)
            return
        self.releases_retried += len(pending)

    async def aclose(self) -> None:
        binding, self._binding = self._binding, None
        if binding is not None and binding.loop is asyncio.get_running_loop():
            await binding.client.aclose()

    # --- building the checks --------------------------------------------------------------------------
    def _checks(self, principal: Principal, *, now: float, tokens: int) -> list[Check]:
        plan: PlanRecord | None = principal.plan
        if plan is None:
            return []
        # One hash tag per organization: every key an admission touches hashes to the same cluster slot.
        base = f"{self.prefix}:{{o{principal.organization_id}}}"
        scopes: tuple[tuple[Literal["key", "organization"], str], ...] = (
            ("key", f"{base}:k{principal.key_id}"),
            ("organization", f"{base}:org"),
        )
        # (kind, limit, amount, window length, window start) of each fixed-window counter the plan has.
        windows: list[tuple[str, int, int, int, float]] = []
        minute = now // MINUTE_S * MINUTE_S
        windows.append((RPM, plan.requests_per_minute, 1, MINUTE_S, minute))
        if plan.tokens_per_minute is not None:
            windows.append((TPM, plan.tokens_per_minute, tokens, MINUTE_S, minute))
        if plan.window_requests is not None and plan.window_seconds > 0:
            length = plan.window_seconds
            windows.append((WINDOW, plan.window_requests, 1, length, now // length * length))
        if plan.weekly_requests is not None:
            windows.append((WEEKLY, plan.weekly_requests, 1, WEEK_S, week_start(now)))
        checks = [
            Check(
                kind=kind,
                scope=scope,
                store_key=f"{root}:{kind}:{length}:{int(start)}",
                limit=limit,
                amount=amount,
                ttl_s=length + TTL_MARGIN_S,
                reset_at=start + length,
                window_s=length,
            )
            for scope, root in scopes
            for kind, limit, amount, length, start in windows
        ]
        # Concurrency sets go last: the Lua script takes the counters first, then the sets.
        if plan.concurrent_requests is not None:
            for scope, root in scopes:
                checks.append(
                    Check(
                        kind=CONCURRENCY,
                        scope=scope,
                        store_key=f"{root}:conc",
                        limit=plan.concurrent_requests,
                        amount=1,
                        ttl_s=int(self.slot_ttl_s),
                        reset_at=None,
                        slot=True,
                    )
                )
        return checks

    def _refuse_oversized_reservation(self, checks: list[Check], *, now: float, tokens: int, surface: Surface) -> None:
        """Tokens that must fit whole but exceed a scope's whole budget never will: say so instead of a misleading retry."""
        for check in checks:
            if check.kind == TPM and tokens > check.limit:
                assert check.reset_at is not None
                state = LimitState(check.limit, check.limit, _seconds_until(check.reset_at, now), check.reset_at)
                admission = Admission(request_id="", surface=surface, now=now, requests=None, tokens=state)
                self.denials += 1
                raise RateLimited(
                    f"request needs at least {tokens} tokens for its prompt, more than the {_scope_word(check.scope)} "
                    f"tokens per minute limit of {check.limit}, so it can never be admitted; shorten the prompt",
                    details={
                        "limit": TPM,
                        "scope": check.scope,
                        "limit_value": check.limit,
                        "reset_seconds": state.reset_seconds,
                        "requested_tokens": tokens,
                    },
                    headers={"retry-after": str(state.reset_seconds), **admission.headers()},
                )

    # --- results ------------------------------------------------------------------------------------------
    @staticmethod
    def _tightest(checks: list[Check], values: list[int], kinds: frozenset[str], now: float) -> LimitState | None:
        best: LimitState | None = None
        for check, value in zip(checks, values, strict=True):
            if check.kind not in kinds or check.reset_at is None:
                continue
            state = LimitState(check.limit, max(0, check.limit - value), _seconds_until(check.reset_at, now), check.reset_at)
            # Fewest remaining wins; on a tie, the one that resets last constrains longer.
            if best is None or (state.remaining, -state.reset_at) < (best.remaining, -best.reset_at):
                best = state
        return best

    @staticmethod
    def _denial(checks: list[Check], outcome: Outcome, admission: Admission) -> GatewayError:
        now = admission.now

        def wait(check: Check) -> int:
            return 1 if check.reset_at is None else _seconds_until(check.reset_at, now)

        # Retrying before the last of the hit limits resets fails again: name that one (the key on a tie).
        hit = [checks[i] for i in outcome.denied]
        binding = max(hit, key=wait)
        retry_after = max(1, wait(binding))
        if binding.kind == CONCURRENCY:
            when = f"retry when one of the {binding.limit} in-flight requests finishes"
        else:
            assert binding.reset_at is not None
            when = f"resets in {format_duration(retry_after)}"
            if binding.kind in QUOTA_KINDS:
                when += f" (at {rfc3339(binding.reset_at)})"
        label = {
            RPM: "requests per minute limit",
            TPM: "tokens per minute limit",
            CONCURRENCY: "concurrent requests limit",
            WINDOW: f"{_window_label(binding.window_s)} request allowance",
            WEEKLY: "weekly request allowance",
        }[binding.kind]
        error_class = QuotaExceeded if binding.kind in QUOTA_KINDS else RateLimited
        return error_class(
            f"{_scope_word(binding.scope)} {label} of {binding.limit} reached; {when}",
            details={"limit": binding.kind, "scope": binding.scope, "limit_value": binding.limit, "reset_seconds": retry_after},
            headers={"retry-after": str(retry_after), **admission.headers()},
        )

    # --- Redis ----------------------------------------------------------------------------------------
    def _bound(self) -> _RedisBinding:
        loop = asyncio.get_running_loop()
        binding = self._binding
        if binding is None or binding.loop is not loop:
            # A client's connections belong to the loop that opened them: one client per running loop.
            assert self.redis_url is not None
            client = aioredis.from_url(
                self.redis_url,
                socket_timeout=SOCKET_TIMEOUT_S,
                socket_connect_timeout=SOCKET_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),  # the default retries three times with back-off: seconds on a dead host
                health_check_interval=0,
                max_connections=self.max_connections,
            )
            binding = _RedisBinding(
                loop,
                client,
                client.register_script(ADMIT_LUA),
                client.register_script(FINISH_LUA),
                asyncio.Semaphore(self.max_connections),
            )
            self._binding = binding
        return binding

    async def _call(self, pick: Callable[[_RedisBinding], Any], keys: list[str], args: list[Any]) -> Any:
        if time.monotonic() < self._circuit_open_until:
            raise RedisUnavailable("circuit open after a recent failure")
        binding = self._bound()
        async with binding.permits:
            # Checked again after queueing: calls ahead of us may have found Redis dead meanwhile.
            if time.monotonic() < self._circuit_open_until:
                raise RedisUnavailable("circuit open after a recent failure")
            try:
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    return await pick(binding)(keys=keys, args=args)
            except (RedisError, OSError, TimeoutError) as exc:
                raise RedisUnavailable(f"{exc.__class__.__name__}: {exc}") from exc

    async def _redis_admit(self, checks: list[Check], *, now: float, member: str, spare: int = 0) -> Outcome:
        counters = [c for c in checks if not c.slot]
        sets = [c for c in checks if c.slot]
        takes_spare = any(c.takes_spare for c in counters)
        args: list[Any] = [
            int(now * 1000),
            len(counters),
            len(sets),
            int(self.slot_ttl_s * 1000),
            member,
            spare if takes_spare else 0,
        ]
        for check in counters:
            args += [check.limit, check.amount, check.ttl_s * 1000, 1 if check.takes_spare else 0]
        args += [check.limit for check in sets]
        reply = await self._call(lambda b: b.admit, [c.store_key for c in checks], args)
        admitted, values, denied, granted = reply
        return Outcome(bool(admitted), [int(v) for v in values], [int(i) - 1 for i in denied], int(granted))

    async def _redis_finish(self, admission: Admission, *, delta: int) -> None:
        token_keys = list(admission.token_keys) if delta else []
        await self._call(
            lambda b: b.finish,
            token_keys + list(admission.slot_keys),
            [delta, len(token_keys), admission.request_id],
        )

    def _on_redis_failure(self, exc: RedisUnavailable) -> None:
        circuit_was_open = time.monotonic() < self._circuit_open_until
        if not circuit_was_open:
            self.redis_failures += 1
            self._circuit_open_until = time.monotonic() + CIRCUIT_OPEN_S
        mono = time.monotonic()
        if mono - self._last_outage_log >= OUTAGE_LOG_EVERY_S:
            self._last_outage_log = mono
            action = "failing OPEN to per-process limits" if self.fail_mode == "open" else "failing CLOSED (503)"
            log.error("rate-limit store unreachable (%s); %s; failures so far: %d", exc, action, self.redis_failures)


def _mget(binding: _RedisBinding) -> Callable[..., Any]:
    async def read(*, keys: list[str], args: list[Any]) -> Any:
        return await binding.client.mget(keys)

    return read


def _zrem_members(binding: _RedisBinding, members: dict[str, list[str]]) -> Callable[..., Any]:
    async def release(*, keys: list[str], args: list[Any]) -> Any:
        pipe = binding.client.pipeline(transaction=False)
        for key, names in members.items():
            pipe.zrem(key, *names)
        return await pipe.execute()

    return release


def _seconds_until(reset_at: float, now: float) -> int:
    return max(1, math.ceil(reset_at - now))


def _scope_word(scope: str) -> str:
    return "API key" if scope == "key" else "organization"


limiter = Limiter.from_settings()


# --- A read-only look at an organization's allowances, for the portal's billing page ----------------------


@dataclass(frozen=True, slots=True)
class AllowanceCounter:
    """One of an organization's request allowances (the short window or the week) as the limiter counts it now."""

    kind: str  # WINDOW or WEEKLY
    limit: int
    window_s: int
    starts_at: float  # epoch seconds: the fixed window's start, included
    resets_at: float  # epoch seconds: the next window's start
    used: int | None  # the organization's counter; None when not read (no Redis, or it did not answer)


def allowance_counters(
    organization_id: int, plan: PlanRecord | None, *, now: float, source: Limiter | None = None
) -> list[AllowanceCounter]:
    """The organization's window and weekly allowances, with the windows and store keys admission uses; writes nothing.

    Sync, for the portal's sync views: one MGET on a short-lived client with the limiter's socket timeouts. The
    in-process store is never read (it holds one process's admissions only): `used` is None without Redis, and
    the caller counts usage rows instead.
    """
    import redis as sync_redis
    from redis.retry import Retry as SyncRetry

    source = source or limiter
    organization = Principal(key_id=0, organization_id=organization_id, organization_slug="", plan=plan)
    checks = [c for c in source._checks(organization, now=now, tokens=0) if c.scope == "organization" and c.kind in QUOTA_KINDS]
    used: list[int | None] = [None] * len(checks)
    if checks and source.redis_url:
        client = sync_redis.Redis.from_url(
            source.redis_url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry=SyncRetry(NoBackoff(), 0),
        )
        try:
            used = [int(value or 0) for value in client.mget([c.store_key for c in checks])]
        except (RedisError, OSError) as exc:
            log.warning("allowance counters unreadable (%s: %s); counting usage rows instead", exc.__class__.__name__, exc)
        finally:
            client.close()
    return [
        AllowanceCounter(
            kind=check.kind,
            limit=check.limit,
            window_s=check.window_s,
            starts_at=check.reset_at - check.window_s,
            resets_at=check.reset_at,
            used=value,
        )
        for check, value in zip(checks, used, strict=True)
        if check.reset_at is not None
    ]
