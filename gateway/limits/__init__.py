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

Money (`money`): a prepaid plan's balance and the spend caps of the key and the organization (per UTC day and
calendar month) are reserved in the same script (price x (prompt estimate + max tokens)) and settled to the request's
real cost; their keys are seeded from the database when missing. Money never fails open: with Redis away, a request
that has a balance or a cap to check gets 503 `limits_unavailable` whatever the fail mode, and its Redis calls wait
longer (MONEY_CALL_TIMEOUT_S) and ignore the circuit below.

Redis unreachable: by default (`PORTAL_LIMITS_FAIL_MODE=open`) admissions fall back to the in-process
store, with one loud log line per 10 s and the `redis_failures` / `fallback_admissions` counters. Refusing
all paying traffic because a cache is down is worse than running for a while with per-process limits
(each process then admits up to the full limit, and starts from zero). `closed` answers 503
`limits_unavailable` instead. The admission and the settlement go on the limiter's own pipelined connection per
lane (`wire`): 0.3 s for a call without money (1.5 s with), no retries; the oldest call of a lane left unanswered
past that closes its connection and fails the calls waiting on it. After a failure Redis is skipped for one second
(a small circuit), so a dead Redis never stalls a request for long. `finish()` does not wait for Redis's reply: the
settlement is written with the other calls of its event-loop turn on the connection every later call of the process
takes, and a failed reply keeps the slot for release as before. A reply lost to a timeout may still have been
applied in Redis; its slot then expires by TTL.

Time: the limiter's clock is injectable (`now`, epoch seconds) so tests can freeze it; window keys are
computed from it, so gateway hosts should run NTP (a skewed host counts into a neighbouring window).

The package: `checks` (the kinds of limit, a check, an admission), `windows` (window arithmetic), `headers` (the
OpenAI and Anthropic rate-limit headers), `stores` (the Lua scripts, the in-process store, the Redis binding),
`wire` (the pipelined Redis connection of the admissions and settlements), `layout` (a principal's checks and
packed script arguments, built once per window), `policy` (the Limiter and the process's `limiter`), `read` (the
public read API the portal's pages use). Import
from the package: the names below are its interface.
"""

from __future__ import annotations

from gateway.errors import LimitsUnavailable
from gateway.limits.checks import (
    CONCURRENCY,
    COUNTING_KINDS,
    QUOTA_KINDS,
    REQUEST_KINDS,
    RPM,
    TPM,
    WEEKLY,
    WINDOW,
    Admission,
    Check,
    LimitState,
    Outcome,
)
from gateway.limits.headers import anthropic_headers, format_duration, openai_headers, rfc3339
from gateway.limits.policy import Limiter, limiter
from gateway.limits.read import AllowanceCounter, allowance_counters
from gateway.limits.stores import LocalStore, RedisUnavailable
from gateway.limits.windows import MONDAY_OFFSET_S, WEEK_S, week_start

__all__ = [
    "CONCURRENCY",
    "COUNTING_KINDS",
    "QUOTA_KINDS",
    "REQUEST_KINDS",
    "RPM",
    "TPM",
    "WEEKLY",
    "WINDOW",
    "MONDAY_OFFSET_S",
    "WEEK_S",
    "Admission",
    "AllowanceCounter",
    "Check",
    "LimitState",
    "Limiter",
    "LimitsUnavailable",
    "LocalStore",
    "Outcome",
    "RedisUnavailable",
    "allowance_counters",
    "anthropic_headers",
    "format_duration",
    "limiter",
    "openai_headers",
    "rfc3339",
    "week_start",
]
