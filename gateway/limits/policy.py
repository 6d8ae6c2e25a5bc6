"""The limiter: the checks of a key and its organization, admitted atomically in Redis or in process, with the
fail-open/closed policy when Redis is away (the package docstring says how)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import redis.asyncio as aioredis
from django.conf import settings
from hiredis import ReplyError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from billing.selectors import organization_ledger_money
from gateway.db import db_call
from gateway.errors import GatewayError, LimitsUnavailable, QuotaExceeded, RateLimited
from gateway.limits.checks import (
    CONCURRENCY,
    QUOTA_KINDS,
    REQUEST_KINDS,
    RPM,
    TPM,
    WEEKLY,
    WINDOW,
    Admission,
    Check,
    LimitState,
    MoneyAsk,
    Outcome,
)
from gateway.limits.headers import format_duration, rfc3339
from gateway.limits.layout import Layout
from gateway.limits.layout import build as build_layout
from gateway.limits.money import CREDITS_TTL_S, money_denial, money_root, seed_items
from gateway.limits.stores import (
    ADMIT_LUA,
    CALL_TIMEOUT_S,
    FINISH_LUA,
    MONEY_CALL_TIMEOUT_S,
    SEED_LUA,
    LocalStore,
    RedisBinding,
    RedisUnavailable,
    SeedItem,
    seed_args,
    zrem_call,
)
from gateway.limits.windows import MINUTE_S, WEEK_S, week_start, window_label
from gateway.limits.wire import Wire, command, script_sha
from gateway.principal import Principal

if TYPE_CHECKING:
    from billing.selectors import PlanRecord

log = logging.getLogger("gateway.limits")

Surface = Literal["openai", "anthropic", "envelope"]
FailMode = Literal["open", "closed"]

TTL_MARGIN_S = 120  # keys outlive their window a little: a late settle still finds its counter
CIRCUIT_OPEN_S = 1.0
MAX_PENDING_RELEASES = 10_000  # slot releases kept for retry during an outage; beyond, the TTL frees them
OUTAGE_LOG_EVERY_S = 10.0
DEFAULT_SLOT_TTL_S = 300
DEFAULT_MAX_CONNECTIONS = 50
ADMIT_SHA = script_sha(ADMIT_LUA)
FINISH_SHA = script_sha(FINISH_LUA)


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
    _binding: RedisBinding | None = field(default=None, repr=False)
    _circuit_open_until: float = 0.0
    _last_outage_log: float = field(default=-math.inf)
    # Concurrency slots whose release Redis did not take (an outage, a timeout): released as soon as
    # Redis answers again, before the next admission, instead of staying taken until their TTL.
    _pending_releases: list[Admission] = field(default_factory=list, repr=False)
    _background: set[asyncio.Future[Any]] = field(default_factory=set, repr=False)  # settlements sent again

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
        reserve_micros: int | None = None,
    ) -> Admission:
        """Admit the request or raise RateLimited / QuotaExceeded (LimitsUnavailable when failing closed).

        `tokens` must fit the tokens per minute limits whole (the prompt: a request whose prompt alone is over a
        limit is refused as one that can never fit); `up_to_tokens` is reserved as far as the tightest limit leaves
        room after them (max_tokens: an answer may be asked longer than a minute's budget, and runs when the
        minute is otherwise unused). `spare_tokens` is reserved only as far as every tokens per minute counter has
        room left now, after the rest: never a reason to refuse (the answer of a request that named no max_tokens,
        whose length the client did not choose: reserving the alias's whole cap would turn such requests away
        whenever the minute is partly used). `kinds` limits the checks to those kinds of limit (None: all of them).
        `reserve_micros` (None: no money checks) is reserved against the prepaid balance and the spend caps that
        apply (gateway/limits/money.py), in the same script; InsufficientBalance / SpendCapReached when it does not fit.
        """
        now = self.now()
        tokens = max(0, int(tokens))
        layout = self._layout(principal, now, kinds, reserve_micros is not None)
        if layout.empty:
            return Admission(request_id=request_id, surface=surface, now=now, requests=None, tokens=None)
        budget = layout.tpm_limit  # every scope's limit (the key's and the organization's), the tightest
        if budget is not None and tokens > budget:
            self._refuse_oversized_reservation(list(layout.checks), now=now, tokens=tokens, surface=surface)
        if up_to_tokens > 0:
            extra = int(up_to_tokens) if budget is None else min(int(up_to_tokens), budget - tokens)
            if extra > 0:
                tokens += extra
        spare = max(0, int(spare_tokens)) if budget is not None else 0  # only a tokens per minute counter takes it
        money = layout.money
        reserve = max(0, int(reserve_micros or 0)) if money else 0

        backend: Literal["redis", "local"] = "local"
        outcome: Outcome | None = None
        if self.redis_url:
            if self._pending_releases and time.monotonic() >= self._circuit_open_until:
                await self._retry_releases()
            try:
                outcome = await self._redis_admit(layout, now=now, member=request_id, tokens=tokens, spare=spare, reserve=reserve)
                if outcome.missing:
                    missing = MoneyAsk(principal.organization_id, principal.key_id, reserve, money)
                    await self._redis_seed(await self._seed_items(missing, outcome.missing))
                    outcome = await self._redis_admit(
                        layout, now=now, member=request_id, tokens=tokens, spare=spare, reserve=reserve
                    )
                backend = "redis"
            except RedisUnavailable as exc:
                self._on_redis_failure(exc)
                # Money never fails open: per-process counters would let every process spend the whole balance or
                # cap again. Requests with no balance or cap to check keep the limiter's policy.
                if self.fail_mode == "closed" or money:
                    raise LimitsUnavailable(headers={"retry-after": "1"}) from exc
                self.fallback_admissions += 1
        if outcome is None:
            checks = [replace(c, amount=tokens, takes_spare=spare > 0) if c.kind == TPM else c for c in layout.checks]
            ask: MoneyAsk | None = MoneyAsk(principal.organization_id, principal.key_id, reserve, money) if money else None
            outcome = self.local.admit(checks, now=now, member=request_id, slot_ttl_s=self.slot_ttl_s, spare=spare, money=ask)
            if outcome.missing:
                assert ask is not None
                self.local.seed(await self._seed_items(ask, outcome.missing), now=now)
                outcome = self.local.admit(checks, now=now, member=request_id, slot_ttl_s=self.slot_ttl_s, spare=spare, money=ask)
        if outcome.missing:
            # Seeded and gone again at once (a flush meanwhile, or a Redis evicting keys): nothing to trust.
            log.error("money keys missing right after seeding them; refusing (503)")
            raise LimitsUnavailable(headers={"retry-after": "1"})

        admission = Admission(
            request_id=request_id,
            surface=surface,
            now=now,
            requests=layout.tightest(outcome.values, now, False),
            tokens=layout.tightest(outcome.values, now, True),
            reserved_tokens=tokens + outcome.spare,
            backend=backend,
            token_keys=layout.token_keys,
            slot_keys=layout.slot_keys,
            money_keys=layout.money_keys,
            reserved_micros=reserve,
            layout=layout,
        )
        if not outcome.admitted:
            self.denials += 1
            if outcome.money_denied:
                raise money_denial(MoneyAsk(principal.organization_id, principal.key_id, reserve, money), outcome, admission)
            raise self._denial(list(layout.checks), outcome, admission)
        return admission

    def _layout(self, principal: Principal, now: float, kinds: frozenset[str] | None, with_money: bool) -> Layout:
        """The principal's layout for this kind of admission, built again when its window ended (or the limiter's
        prefix or slot TTL changed: tests set them)."""
        layouts = principal.limits_layouts
        key = (kinds, with_money)
        found: Layout | None = layouts.get(key)
        if found is not None and found.holds(self, now):
            return found
        found = build_layout(
            self,
            principal,
            self._checks(principal, now=now, tokens=0),
            now=now,
            kinds=kinds,
            with_money=with_money,
            admit_sha=ADMIT_SHA,
            finish_sha=FINISH_SHA,
        )
        if len(layouts) > 8:  # a handful of kinds at most; never grows with the windows
            layouts.clear()
        layouts[key] = found
        return found

    @staticmethod
    async def _seed_items(money: MoneyAsk, missing: list[int]) -> list[SeedItem]:
        """What the missing money keys hold, read from the database; with the database away too, nothing to go by:
        503, never an unchecked request."""
        try:
            return await db_call(seed_items, money, missing)
        except Exception as exc:
            log.error("money keys cannot be seeded, the database failed (%s); refusing (503)", exc.__class__.__name__)
            raise LimitsUnavailable(headers={"retry-after": "1"}) from exc

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
                values = [int(v or 0) for v in await self._redis_read([c.store_key for c in checks])]
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

    async def finish(
        self, admission: Admission, *, actual_tokens: int | None = None, actual_cost_micros: int | None = None
    ) -> None:
        """Settle the token reservation (None keeps it) and the money reservation to the real cost (None keeps it),
        and release the concurrency slot; idempotent."""
        if admission.finished:
            return
        admission.finished = True  # before any await: a second finish racing this one does nothing
        delta = 0 if actual_tokens is None or not admission.token_keys else int(actual_tokens) - admission.reserved_tokens
        money_delta = (
            0 if actual_cost_micros is None or not admission.money_keys else int(actual_cost_micros) - admission.reserved_micros
        )
        if not admission.slot_keys and not delta and not money_delta:
            return
        if admission.backend == "local":
            self.local.finish(
                token_keys=admission.token_keys,
                delta=delta,
                slot_keys=admission.slot_keys,
                member=admission.request_id,
                money_keys=admission.money_keys,
                money_delta=money_delta,
            )
            return
        if admission.backend == "redis":
            money = bool(money_delta and admission.money_keys)
            binding = self._binding
            line = binding.wire.ready(money) if binding is not None and binding.loop is asyncio.get_running_loop() else None
            if line is None or (not money and time.monotonic() < self._circuit_open_until):
                # Not connected (or the circuit is open): the general path, which connects or gives up.
                # Shielded: finish runs in the `finally` of a request whose client may just have gone away,
                # and a cancelled release would hold the slot until its TTL.
                await asyncio.shield(self._release_in_redis(admission, delta=delta, money_delta=money_delta))
                return
            # Not waited for: the settlement is written at the end of this turn of the event loop (with the other
            # calls of the turn; daphne writes the response that follows it in a later turn), on the connection
            # every later admission of this process takes, which Redis answers in order: no admission sent after
            # it can miss the freed slot or the refund, and other processes see it within Redis's own turn. Its
            # reply only matters when it is a failure, which a callback handles as the awaited path does (slot
            # kept for release, failure counted).
            packed = admission.layout.finish_command(admission.request_id, delta, money_delta)
            line.send(packed).add_done_callback(partial(self._on_settled, admission, delta=delta, money_delta=money_delta))

    def _on_settled(self, admission: Admission, reply: asyncio.Future[Any], *, delta: int, money_delta: int) -> None:
        failure = reply.exception()  # never cancelled: nobody awaits it
        if failure is None and isinstance(reply.result(), ReplyError):
            # An error reply (NOSCRIPT after a Redis restart: nothing ran) goes the awaited way, which loads the
            # script and sends it again, or records the failure.
            task = asyncio.ensure_future(self._release_in_redis(admission, delta=delta, money_delta=money_delta))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        elif failure is not None:
            self._release_failed(admission, RedisUnavailable(f"{failure.__class__.__name__}: {failure}"))

    async def _release_in_redis(self, admission: Admission, *, delta: int, money_delta: int = 0) -> None:
        try:
            await self._redis_finish(admission, delta=delta, money_delta=money_delta)
        except RedisUnavailable as exc:
            self._release_failed(admission, exc)

    def _release_failed(self, admission: Admission, exc: RedisUnavailable) -> None:
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
            await self._call(lambda b: zrem_call(b, members), [], [])
        except RedisUnavailable as exc:
            self._pending_releases[:0] = pending
            self._on_redis_failure(exc)
            return
        self.releases_retried += len(pending)

    async def aclose(self) -> None:
        binding, self._binding = self._binding, None
        if binding is not None and binding.loop is asyncio.get_running_loop():
            # The settlements written and not answered yet: their replies, or their lane's timeout.
            await binding.wire.drain()
            if self._background:
                await asyncio.wait(list(self._background), timeout=MONEY_CALL_TIMEOUT_S)
            binding.wire.close()
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
        checks: list[Check] = []
        minute = now // MINUTE_S * MINUTE_S
        windows.append((RPM, plan.requests_per_minute, 1, MINUTE_S, minute))
        if plan.tokens_per_minute is not None:
            windows.append((TPM, plan.tokens_per_minute, tokens, MINUTE_S, minute))
        if plan.window_requests is not None and plan.window_seconds > 0:
            length = plan.window_seconds
            windows.append((WINDOW, plan.window_requests, 1, length, now // length * length))
        if plan.weekly_requests is not None:
            windows.append((WEEKLY, plan.weekly_requests, 1, WEEK_S, week_start(now)))
        if principal.key_requests_per_minute is not None:
            # The key's own rate limit, below its plan's: one more counter in the key's scope.
            checks.append(
                Check(
                    kind=RPM,
                    scope="key",
                    store_key=f"{scopes[0][1]}:own-rpm:{MINUTE_S}:{int(minute)}",
                    limit=principal.key_requests_per_minute,
                    amount=1,
                    ttl_s=MINUTE_S + TTL_MARGIN_S,
                    reset_at=minute + MINUTE_S,
                    window_s=MINUTE_S,
                )
            )
        checks += [
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
            WINDOW: f"{window_label(binding.window_s)} request allowance",
            WEEKLY: "weekly request allowance",
        }[binding.kind]
        error_class = QuotaExceeded if binding.kind in QUOTA_KINDS else RateLimited
        return error_class(
            f"{_scope_word(binding.scope)} {label} of {binding.limit} reached; {when}",
            details={"limit": binding.kind, "scope": binding.scope, "limit_value": binding.limit, "reset_seconds": retry_after},
            headers={"retry-after": str(retry_after), **admission.headers()},
        )

    # --- Redis ----------------------------------------------------------------------------------------
    def _bound(self) -> RedisBinding:
        loop = asyncio.get_running_loop()
        binding = self._binding
        if binding is None or binding.loop is not loop:
            # A client's connections belong to the loop that opened them: one client per running loop.
            assert self.redis_url is not None
            client = aioredis.from_url(
                self.redis_url,
                # The socket timeouts are the money calls' (the longer: a burst opens connections on a busy host);
                # every call's own cap is _call's timeout, 0.3 s for the rate limits alone.
                socket_timeout=MONEY_CALL_TIMEOUT_S,
                socket_connect_timeout=MONEY_CALL_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),  # the default retries three times with back-off: seconds on a dead host
                health_check_interval=0,
                max_connections=self.max_connections,
            )
            binding = RedisBinding(
                loop,
                client,
                client.register_script(SEED_LUA),
                asyncio.Semaphore(self.max_connections),
                Wire(
                    self.redis_url,
                    timeouts=(CALL_TIMEOUT_S, MONEY_CALL_TIMEOUT_S),
                    scripts={ADMIT_SHA: ADMIT_LUA, FINISH_SHA: FINISH_LUA},
                ),
            )
            self._binding = binding
        return binding

    async def _call(self, pick: Callable[[RedisBinding], Any], keys: list[str], args: list[Any], *, money: bool = False) -> Any:
        if not money and time.monotonic() < self._circuit_open_until:
            raise RedisUnavailable("circuit open after a recent failure")
        binding = self._bound()
        async with binding.permits:
            # Checked again after queueing: calls ahead of us may have found Redis dead meanwhile.
            if not money and time.monotonic() < self._circuit_open_until:
                raise RedisUnavailable("circuit open after a recent failure")
            try:
                async with asyncio.timeout(MONEY_CALL_TIMEOUT_S if money else CALL_TIMEOUT_S):
                    return await pick(binding)(keys=keys, args=args)
            except (RedisError, OSError, TimeoutError) as exc:
                raise RedisUnavailable(f"{exc.__class__.__name__}: {exc}") from exc

    async def _redis_admit(self, layout: Layout, *, now: float, member: str, tokens: int, spare: int, reserve: int) -> Outcome:
        money = bool(layout.money)
        if not money and time.monotonic() < self._circuit_open_until:
            raise RedisUnavailable("circuit open after a recent failure")
        packed = layout.admit_command(int(now * 1000), member, tokens, spare, reserve)
        try:
            reply = await self._bound().wire.call(packed, money=money, script=ADMIT_SHA)
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"{exc.__class__.__name__}: {exc}") from exc
        admitted, values, denied, granted, money_values, money_denied, missing = reply
        if admitted:
            return Outcome(True, values, denied, granted, money_values=money_values)
        return Outcome(
            False,
            values,
            [i - 1 for i in denied],
            granted,
            money_values=money_values,
            money_denied=[i - 1 for i in money_denied],
            missing=[i - 1 for i in missing],
        )

    async def _redis_read(self, keys: list[str]) -> list[Any]:
        """MGET on the wire: after every settlement this process wrote, in Redis's order as in ours."""
        if time.monotonic() < self._circuit_open_until:
            raise RedisUnavailable("circuit open after a recent failure")
        try:
            reply: list[Any] = await self._bound().wire.call(command("MGET", *keys), money=False)
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"{exc.__class__.__name__}: {exc}") from exc
        return reply

    async def _redis_seed(self, items: list[SeedItem]) -> None:
        keys, args = seed_args(items)
        await self._call(lambda b: b.seed, keys, args, money=True)

    async def _redis_finish(self, admission: Admission, *, delta: int, money_delta: int = 0) -> None:
        money = bool(money_delta and admission.money_keys)
        if not money and time.monotonic() < self._circuit_open_until:
            raise RedisUnavailable("circuit open after a recent failure")
        packed = admission.layout.finish_command(admission.request_id, delta, money_delta)
        try:
            await self._bound().wire.call(packed, money=money, script=FINISH_SHA)
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"{exc.__class__.__name__}: {exc}") from exc

    def credits_push_local(self, organization_id: int) -> None:
        """credits_push without Redis: the in-process store, read from the ledger now (a sync caller: the writer)."""
        root = money_root(self.prefix, organization_id)
        ledger = organization_ledger_money(organization_id)
        item = SeedItem(f"{root}:cred", ledger.credits_micros, CREDITS_TTL_S, f"{root}:credn", ledger.credit_entries)
        self.local.seed([item], now=self.now())

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


def _seconds_until(reset_at: float, now: float) -> int:
    return max(1, math.ceil(reset_at - now))


def _scope_word(scope: str) -> str:
    return "API key" if scope == "key" else "organization"


limiter = Limiter.from_settings()
