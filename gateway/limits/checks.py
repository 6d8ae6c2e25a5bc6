"""What an admission checks and what it answers: the kinds of limit, one check, an admission, a store's outcome."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
