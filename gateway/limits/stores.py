"""Where the counters live: the Lua scripts run in Redis, the in-process store that mirrors them, the Redis binding."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway.limits.checks import BALANCE, Check, MoneyAsk, Outcome
from gateway.limits.wire import Wire

log = logging.getLogger("gateway.limits")

SOCKET_TIMEOUT_S = 0.25
CALL_TIMEOUT_S = 0.3  # hard cap on one Redis round trip, connect included
# Money fails closed (gateway/limits/money.py): a refusal costs the customer a request, so a call with a balance or a
# spend cap waits longer for Redis, and tries it even while the circuit is open.
MONEY_CALL_TIMEOUT_S = 1.5
SWEEP_EVERY = 4096


# --- Stores ------------------------------------------------------------------------------------------

# KEYS: the counters, then the concurrency sets, then the money keys (a balance: credits and spent; a cap: its counter).
# ARGV: what changes from call to call first (gateway/limits/layout.py packs the rest once per principal and window):
# now_ms, member, tokens, spare, reservation in micro-units; then the counts of counters, sets and money checks and
# slot_ttl_ms; then (limit, amount, ttl_ms) per counter, where an amount of 't' is a tokens per minute counter's: it
# adds `tokens` and takes the spare; then limit per set; then (kind 'b' or 'c', limit, ttl_ms) per money check. Spare
# tokens go to the counters that take them as far as every one of them has room left after its own amount (never a
# reason to refuse). A money key that is missing (never seeded, expired, Redis flushed) stops the admission before
# anything changes: the reply lists those checks, the gateway seeds them from the database and asks again. The
# reply: admitted, the values, the denied counters and sets, the spare tokens granted, the money values (the balance
# available, a cap's spend), the denied money checks, the missing ones.
ADMIT_LUA = """
local now = tonumber(ARGV[1])
local member = ARGV[2]
local tokens = tonumber(ARGV[3])
local spare = tonumber(ARGV[4])
local reserve = tonumber(ARGV[5])
local c = tonumber(ARGV[6])
local z = tonumber(ARGV[7])
local nm = tonumber(ARGV[8])
local slot_ttl = tonumber(ARGV[9])
local values = {}
local denied = {}
local limits = {}
local amounts = {}
local takes = {}
local a = 10
for i = 1, c do
  local cur = tonumber(redis.call('GET', KEYS[i]) or '0')
  values[i] = cur
  limits[i] = tonumber(ARGV[a])
  if ARGV[a + 1] == 't' then
    amounts[i] = tokens
    takes[i] = true
    spare = math.max(0, math.min(spare, limits[i] - cur - tokens))
  else
    amounts[i] = tonumber(ARGV[a + 1])
    takes[i] = false
  end
  a = a + 3
end
for i = 1, c do
  local need = amounts[i]
  if takes[i] then need = need + spare end
  if values[i] + math.max(need, 1) > limits[i] then denied[#denied + 1] = i end
end
for j = 1, z do
  local key = KEYS[c + j]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local cur = redis.call('ZCARD', key)
  values[c + j] = cur
  if cur + 1 > tonumber(ARGV[a]) then denied[#denied + 1] = c + j end
  a = a + 1
end
local money_a = a
local k = c + z
local mvalues = {}
local mdenied = {}
local missing = {}
for i = 1, nm do
  if ARGV[a] == 'b' then
    local credits = redis.call('GET', KEYS[k + 1])
    local spent = redis.call('GET', KEYS[k + 2])
    if not credits or not spent then
      missing[#missing + 1] = i
      mvalues[i] = 0
    else
      mvalues[i] = tonumber(credits) - tonumber(spent)
      if mvalues[i] < reserve then mdenied[#mdenied + 1] = i end
    end
    k = k + 2
  else
    local cur = redis.call('GET', KEYS[k + 1])
    if not cur then
      missing[#missing + 1] = i
      mvalues[i] = 0
    else
      mvalues[i] = tonumber(cur)
      if mvalues[i] + reserve > tonumber(ARGV[a + 1]) then mdenied[#mdenied + 1] = i end
    end
    k = k + 1
  end
  a = a + 3
end
if #missing > 0 then return {0, values, {}, 0, mvalues, {}, missing} end
if #denied > 0 or #mdenied > 0 then return {0, values, denied, 0, mvalues, mdenied, {}} end
a = 10
for i = 1, c do
  local amount = amounts[i]
  if takes[i] then amount = amount + spare end
  values[i] = redis.call('INCRBY', KEYS[i], amount)
  redis.call('PEXPIRE', KEYS[i], ARGV[a + 2])
  a = a + 3
end
for j = 1, z do
  local key = KEYS[c + j]
  redis.call('ZADD', key, now + slot_ttl, member)
  redis.call('PEXPIRE', key, slot_ttl)
  values[c + j] = redis.call('ZCARD', key)
end
a = money_a
k = c + z
for i = 1, nm do
  if ARGV[a] == 'b' then
    if reserve ~= 0 then redis.call('INCRBY', KEYS[k + 2], reserve) end
    k = k + 2
  else
    redis.call('INCRBY', KEYS[k + 1], reserve)
    if tonumber(ARGV[a + 2]) > 0 then redis.call('PEXPIRE', KEYS[k + 1], ARGV[a + 2]) end
    k = k + 1
  end
  a = a + 3
end
return {1, values, denied, spare, mvalues, {}, {}}
"""

# KEYS: the token counters, the money counters (spent, caps), then the concurrency sets.
# ARGV: token delta, member, money delta, number of token counters, number of money counters. A zero delta leaves
# its counters alone, so one packed head (its keys) serves every settlement of an admission.
FINISH_LUA = """
local delta = tonumber(ARGV[1])
local member = ARGV[2]
local money = tonumber(ARGV[3])
local t = tonumber(ARGV[4])
local m = tonumber(ARGV[5])
if delta ~= 0 then
  for i = 1, t do
    -- Only a counter that still exists: INCRBY on an expired one would create a key without a TTL.
    if redis.call('EXISTS', KEYS[i]) == 1 then
      if redis.call('INCRBY', KEYS[i], delta) < 0 then redis.call('SET', KEYS[i], 0, 'KEEPTTL') end
    end
  end
end
if money ~= 0 then
  -- Exact, never clamped: a money counter is what was spent. A missing one was lost (and is seeded again from the
  -- database, which will hold this request's cost once its usage row is written).
  for i = t + 1, t + m do
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], money) end
  end
end
for j = t + m + 1, #KEYS do redis.call('ZREM', KEYS[j], member) end
return 1
"""

# Seeds money keys from the database. ARGV: the number of items, then (mode, value, version, ttl_ms) per item.
# Mode 'v' (two KEYS: value, version): set both unless the version held is newer (the ledger's credits: a snapshot
# with more entries is a later one, so a late writer never puts an older sum back). Mode 'n' (one KEY): set only if
# missing (what was spent: the counter in Redis, once there, is ahead of the database).
SEED_LUA = """
local n = tonumber(ARGV[1])
local a = 2
local k = 1
for i = 1, n do
  local ttl = tonumber(ARGV[a + 3])
  if ARGV[a] == 'v' then
    local held = tonumber(redis.call('GET', KEYS[k + 1]) or '-1')
    if redis.call('EXISTS', KEYS[k]) == 0 or tonumber(ARGV[a + 2]) > held then
      if ttl > 0 then
        redis.call('SET', KEYS[k], ARGV[a + 1], 'PX', ttl)
        redis.call('SET', KEYS[k + 1], ARGV[a + 2], 'PX', ttl)
      else
        redis.call('SET', KEYS[k], ARGV[a + 1])
        redis.call('SET', KEYS[k + 1], ARGV[a + 2])
      end
    end
    k = k + 2
  else
    if ttl > 0 then
      redis.call('SET', KEYS[k], ARGV[a + 1], 'NX', 'PX', ttl)
    else
      redis.call('SET', KEYS[k], ARGV[a + 1], 'NX')
    end
    k = k + 1
  end
  a = a + 4
end
return 1
"""


class LocalStore:
    """The in-process store: the same checks as the Lua script, run without an await in between."""

    def __init__(self) -> None:
        self._counters: dict[str, tuple[int, float]] = {}  # key -> (value, expires at)
        self._slots: dict[str, dict[str, float]] = {}  # key -> {member: expires at}
        self._lock = threading.Lock()  # the event loop needs none; a stray thread must not corrupt the dicts
        self._ops = 0

    def admit(
        self,
        checks: Sequence[Check],
        *,
        now: float,
        member: str,
        slot_ttl_s: float,
        spare: int = 0,
        money: MoneyAsk | None = None,
    ) -> Outcome:
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
            money_values: list[int] = []
            money_denied: list[int] = []
            missing: list[int] = []
            reserve = money.reserve if money is not None else 0
            for index, mcheck in enumerate(money.checks if money is not None else ()):
                held = self._money_get(mcheck.store_key, now)
                if mcheck.kind == BALANCE:
                    spent = self._money_get(mcheck.spent_key, now)
                    if held is None or spent is None:
                        missing.append(index)
                        money_values.append(0)
                        continue
                    money_values.append(held - spent)
                    if held - spent < reserve:
                        money_denied.append(index)
                elif held is None:
                    missing.append(index)
                    money_values.append(0)
                else:
                    money_values.append(held)
                    if held + reserve > mcheck.limit:
                        money_denied.append(index)
            if missing:
                return Outcome(False, values, [], money_values=money_values, missing=missing)
            if denied or money_denied:
                return Outcome(False, values, denied, money_values=money_values, money_denied=money_denied)
            for index, check in enumerate(checks):
                if check.slot:
                    slots = self._slots.setdefault(check.store_key, {})
                    slots[member] = now + slot_ttl_s
                    values[index] = len(slots)
                else:
                    values[index] += check.amount + (spare if check.takes_spare else 0)
                    self._counters[check.store_key] = (values[index], now + check.ttl_s)
            for mcheck in money.checks if money is not None else ():
                if mcheck.kind == BALANCE:
                    self._money_add(mcheck.spent_key, reserve)
                else:
                    self._counters[mcheck.store_key] = (
                        self._counters[mcheck.store_key][0] + reserve,
                        now + mcheck.ttl_s if mcheck.ttl_s else math.inf,
                    )
            return Outcome(True, values, denied, spare, money_values=money_values)

    def _money_get(self, key: str, now: float) -> int | None:
        entry = self._counters.get(key)
        return entry[0] if entry is not None and entry[1] > now else None

    def _money_add(self, key: str, amount: int) -> None:
        entry = self._counters.get(key)
        if entry is not None:
            self._counters[key] = (entry[0] + amount, entry[1])

    def forget(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._counters.pop(key, None)

    def seed(self, items: Sequence[SeedItem], *, now: float) -> None:
        """SEED_LUA's rules in process: a versioned value is set unless a newer one is held, the others if missing."""
        with self._lock:
            for item in items:
                expires_at = now + item.ttl_s if item.ttl_s else math.inf
                if item.version_key:
                    held = self._money_get(item.version_key, now)
                    if self._money_get(item.key, now) is None or held is None or item.version > held:
                        self._counters[item.key] = (item.value, expires_at)
                        self._counters[item.version_key] = (item.version, expires_at)
                elif self._money_get(item.key, now) is None:
                    self._counters[item.key] = (item.value, expires_at)

    def finish(
        self,
        *,
        token_keys: Sequence[str],
        delta: int,
        slot_keys: Sequence[str],
        member: str,
        money_keys: Sequence[str] = (),
        money_delta: int = 0,
    ) -> None:
        with self._lock:
            if money_delta:
                for key in money_keys:
                    self._money_add(key, money_delta)
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


@dataclass(frozen=True, slots=True)
class SeedItem:
    """One money key seeded from the database: with a `version_key`, set unless a newer version is held; else only if
    missing. ttl_s 0: no expiry."""

    key: str
    value: int
    ttl_s: int
    version_key: str = ""
    version: int = 0


def seed_args(items: Sequence[SeedItem]) -> tuple[list[str], list[Any]]:
    """SEED_LUA's KEYS and ARGV for these items."""
    keys: list[str] = []
    args: list[Any] = [len(items)]
    for item in items:
        keys += [item.key, item.version_key] if item.version_key else [item.key]
        args += ["v" if item.version_key else "n", item.value, item.version, item.ttl_s * 1000]
    return keys, args


class RedisUnavailable(Exception):
    """Redis did not answer in time or refused; the limiter decides what that means."""


@dataclass
class RedisBinding:
    loop: asyncio.AbstractEventLoop
    client: aioredis.Redis  # the rare calls (gateway/limits/wire.py carries the admissions and settlements)
    seed: Any  # redis.commands.core.AsyncScript
    # One permit per pooled connection: a burst queues here, untimed, instead of failing with
    # MaxConnectionsError (redis-py's pool raises at once when full), which would look like an outage.
    permits: asyncio.Semaphore
    wire: Wire


def zrem_call(binding: RedisBinding, members: dict[str, list[str]]) -> Callable[..., Any]:
    async def release(*, keys: list[str], args: list[Any]) -> Any:
        pipe = binding.client.pipeline(transaction=False)
        for key, names in members.items():
            pipe.zrem(key, *names)
        return await pipe.execute()

    return release
