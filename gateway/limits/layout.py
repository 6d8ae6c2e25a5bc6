"""What one principal's admissions send and read back, worked out once per principal, kind of admission and window.

Within a window (until the earliest of its counters' windows ends) every admission of a key names the same Redis
keys, limits, TTLs and money checks: only the clock, the request id, the tokens, the spare tokens and the money
reservation change. So the checks, the scripts' keys and constant arguments (packed as RESP bytes: gateway/limits/
wire.py), and what the response headers are computed from are built here once and kept on the principal
(`Principal.limits_layouts`, dropped with it when its key, organization or plan changes: gateway/auth.py caches
principals by those records), and each call formats only what changed (`admit_command`, `finish_command`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.limits.checks import BALANCE, REQUEST_KINDS, TPM, Check, LimitState, MoneyCheck
from gateway.limits.money import money_checks, money_keys
from gateway.limits.wire import arg, bulk

if TYPE_CHECKING:
    from gateway.limits.policy import Limiter
    from gateway.principal import Principal


@dataclass(slots=True, eq=False)
class Layout:
    limiter: Limiter
    prefix: str
    slot_ttl_s: float
    valid_from: float  # the latest start of its windows: the layout holds while valid_from <= now < valid_until
    valid_until: float  # the earliest end of its windows
    checks: tuple[Check, ...]  # counters, then concurrency sets; a tokens per minute counter's amount is per call
    money: tuple[MoneyCheck, ...]
    tpm_limit: int | None  # the tightest tokens per minute limit
    request_states: tuple[tuple[int, int, float], ...]  # (index, limit, reset_at) of the request counters
    token_states: tuple[tuple[int, int, float], ...]  # the same for the tokens per minute counters
    token_keys: tuple[str, ...]
    slot_keys: tuple[str, ...]
    money_keys: tuple[str, ...]
    admit_head: bytes
    admit_tail: bytes
    finish_head: bytes
    finish_tail: bytes

    @property
    def empty(self) -> bool:
        return not self.checks and not self.money

    def holds(self, limiter: Limiter, now: float) -> bool:
        return (
            self.valid_from <= now < self.valid_until
            and self.limiter is limiter
            and self.prefix == limiter.prefix
            and self.slot_ttl_s == limiter.slot_ttl_s
        )

    def admit_command(self, now_ms: int, member: str, tokens: int, spare: int, reserve: int) -> bytes:
        return b"".join(
            (
                self.admit_head,
                b"$%d\r\n%d\r\n" % (len(b"%d" % now_ms), now_ms),
                bulk(member.encode()),
                bulk(b"%d" % tokens),
                bulk(b"%d" % spare),
                bulk(b"%d" % reserve),
                self.admit_tail,
            )
        )

    def finish_command(self, member: str, delta: int, money_delta: int) -> bytes:
        return b"".join(
            (self.finish_head, bulk(b"%d" % delta), bulk(member.encode()), bulk(b"%d" % money_delta), self.finish_tail)
        )

    def tightest(self, values: list[int], now: float, tokens: bool) -> LimitState | None:
        """The limit with the fewest remaining (on a tie, the one that resets last constrains longer)."""
        best: tuple[int, float, int] | None = None
        for index, limit, reset_at in self.token_states if tokens else self.request_states:
            remaining = limit - values[index]
            if remaining < 0:
                remaining = 0
            if best is None or remaining < best[0] or (remaining == best[0] and reset_at > best[1]):
                best = (remaining, reset_at, limit)
        if best is None:
            return None
        remaining, reset_at, limit = best
        return LimitState(limit, remaining, max(1, math.ceil(reset_at - now)), reset_at)


def build(
    limiter: Limiter,
    principal: Principal,
    found: list[Check],
    *,
    now: float,
    kinds: frozenset[str] | None,
    with_money: bool,
    admit_sha: str,
    finish_sha: str,
) -> Layout:
    """The layout of `found`, the limiter's checks of the principal at `now` (Limiter._checks)."""
    if kinds is not None:
        found = [c for c in found if c.kind in kinds]
    counters = [c for c in found if not c.slot]
    sets = [c for c in found if c.slot]
    checks = tuple(counters + sets)
    money = money_checks(principal, prefix=limiter.prefix, now=now) if with_money else ()

    starts: list[float] = [-math.inf]
    ends: list[float] = [math.inf]
    for check in counters:
        assert check.reset_at is not None
        starts.append(check.reset_at - check.window_s)
        ends.append(check.reset_at)
    for mcheck in money:
        if mcheck.reset_at is not None:
            starts.append(mcheck.since)
            ends.append(mcheck.reset_at)

    keys = [c.store_key for c in checks]
    constant: list[int | str] = [len(counters), len(sets), len(money), int(limiter.slot_ttl_s * 1000)]
    for check in counters:
        constant += [check.limit, "t" if check.kind == TPM else check.amount, check.ttl_s * 1000]
    constant += [check.limit for check in sets]
    for mcheck in money:
        if mcheck.kind == BALANCE:
            keys += [mcheck.store_key, mcheck.spent_key]
            constant += ["b", 0, 0]
        else:
            keys.append(mcheck.store_key)
            constant += ["c", mcheck.limit, mcheck.ttl_s * 1000]
    admit_head = b"*%d\r\n" % (3 + len(keys) + 5 + len(constant)) + arg("EVALSHA") + arg(admit_sha) + arg(len(keys))
    admit_head += b"".join(arg(key) for key in keys)

    token_keys = tuple(c.store_key for c in checks if c.kind == TPM)
    slot_keys = tuple(c.store_key for c in sets)
    settled = money_keys(money)
    finish_keys = token_keys + settled + slot_keys
    finish_head = b"*%d\r\n" % (3 + len(finish_keys) + 5) + arg("EVALSHA") + arg(finish_sha) + arg(len(finish_keys))
    finish_head += b"".join(arg(key) for key in finish_keys)

    tpm = [c.limit for c in checks if c.kind == TPM]
    return Layout(
        limiter=limiter,
        prefix=limiter.prefix,
        slot_ttl_s=limiter.slot_ttl_s,
        valid_from=max(starts),
        valid_until=min(ends),
        checks=checks,
        money=money,
        tpm_limit=min(tpm) if tpm else None,
        request_states=tuple(
            (i, c.limit, c.reset_at) for i, c in enumerate(checks) if c.kind in REQUEST_KINDS and c.reset_at is not None
        ),
        token_states=tuple((i, c.limit, c.reset_at) for i, c in enumerate(checks) if c.kind == TPM and c.reset_at is not None),
        token_keys=token_keys,
        slot_keys=slot_keys,
        money_keys=settled,
        admit_head=admit_head,
        admit_tail=b"".join(arg(value) for value in constant),
        finish_head=finish_head,
        finish_tail=arg(len(token_keys)) + arg(len(settled)),
    )
