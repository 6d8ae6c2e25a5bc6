"""Where the counters live: the Lua scripts run in Redis, the in-process store that mirrors them, the Redis binding."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway.limits.checks import Check, Outcome

log = logging.getLogger("gateway.limits")

SOCKET_TIMEOUT_S = 0.25
CALL_TIMEOUT_S = 0.3  # hard cap on one Redis round trip, connect included
SWEEP_EVERY = 4096


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
class RedisBinding:
    loop: asyncio.AbstractEventLoop
    client: aioredis.Redis
    admit: Any  # redis.commands.core.AsyncScript
    finish: Any
    # One permit per pooled connection: a burst queues here, untimed, instead of failing with
    # MaxConnectionsError (redis-py's pool raises at once when full), which would look like an outage.
    permits: asyncio.Semaphore


def mget_call(binding: RedisBinding) -> Callable[..., Any]:
    async def read(*, keys: list[str], args: list[Any]) -> Any:
        return await binding.client.mget(keys)

    return read


def zrem_call(binding: RedisBinding, members: dict[str, list[str]]) -> Callable[..., Any]:
    async def release(*, keys: list[str], args: list[Any]) -> Any:
        pipe = binding.client.pipeline(transaction=False)
        for key, names in members.items():
            pipe.zrem(key, *names)
        return await pipe.execute()

    return release
