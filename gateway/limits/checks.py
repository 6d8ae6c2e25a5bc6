"""What an admission checks and what it answers: the kinds of limit, one check, an admission, a store's outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.limits.headers import anthropic_headers, openai_headers

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
# Money (gateway/limits/money.py): a prepaid plan's balance, and spend caps per UTC day and calendar month.
BALANCE = "prepaid_balance"
SPEND_DAILY = "spend_cap_daily"
SPEND_MONTHLY = "spend_cap_monthly"


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
class MoneyCheck:
    """One money item of an admission. BALANCE: `store_key` holds the ledger's credits (with `count_key`, their
    number, the version a newer snapshot wins by) and `spent_key` what was spent since (usage debited, settled and
    reserved); available = credits - spent. A spend cap: `store_key` counts the period's spend, settled and reserved.
    A missing key is seeded from the database (`since`: the start of a cap's period) before the admission runs."""

    kind: str
    scope: Literal["key", "organization"]
    store_key: str
    limit: int = 0  # a cap's micro-units; unused for the balance
    ttl_s: int = 0  # 0: no expiry
    reset_at: float | None = None
    since: float = 0.0  # epoch seconds: the period a cap counts from
    count_key: str = ""
    spent_key: str = ""


@dataclass(slots=True)
class MoneyAsk:
    """What an admission reserves in money: `reserve` micro-units (the price of the prompt estimate plus the most
    the answer may use) against every check."""

    organization_id: int
    key_id: int
    reserve: int
    checks: tuple[MoneyCheck, ...]


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
    money_keys: tuple[str, ...] = ()  # the spent counter and the cap counters a settlement moves
    reserved_micros: int = 0
    layout: Any = field(default=None, repr=False)  # gateway/limits/layout.py's Layout: packs the settlement

    def headers(self) -> dict[str, str]:
        return anthropic_headers(self) if self.surface == "anthropic" else openai_headers(self)


@dataclass(slots=True)
class Outcome:
    """A store's answer: admitted or not, the counter values (after admission; as read when denied)."""

    admitted: bool
    values: list[int]
    denied: list[int]  # indexes into the checks
    spare: int = 0  # the spare tokens granted: what every counter taking them had room for
    money_values: list[int] = field(default_factory=list)  # per money check: the balance available, a cap's spend
    money_denied: list[int] = field(default_factory=list)  # indexes into the money checks
    missing: list[int] = field(default_factory=list)  # money checks whose keys must be seeded first
