"""The plan's request allowances as the limiter counts them: one read for every page that shows them (billing, usage).

Allowances are the plan's request caps over fixed windows: the short window (`window_requests` per
`window_seconds`, aligned to multiples of `window_seconds` since the epoch) and the week (from Monday 00:00 UTC).
The windows, their resets and the counter keys come from the limiter itself (gateway.limits.allowance_counters),
so "resets at" is the instant enforcement starts over. What is counted is what the limiter admitted: with Redis,
the organization's own counters, read without touching them; without Redis (or when it does not answer), the
organization's usage rows in the window, less the rows of requests the limiter refused, since an admitted request
leaves exactly one usage row whatever became of it (ok, error or cancelled) and a refused one leaves a 429/503 row.
The counters are per organization, so everyone in it sees the same numbers.

Percentages are whole numbers rounded down (79.9% reads 79%), and the warning shows from exactly 80% (used × 100 ≥
80 × limit, in integers).

It reads the limiter's public read API (gateway.limits.allowance_counters) and its refusal codes: the windows and
keys are the limiter's own, never a copy that drifts (the usage page once counted a rolling window and showed
105/100 while the billing page showed 100/100). The portal sits above the gateway, so this import runs downhill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from billing.models import Plan
from billing.selectors import plan_record
from gateway.errors import LimitsUnavailable, QuotaExceeded, RateLimited
from gateway.limits import WEEKLY, AllowanceCounter, allowance_counters
from usage.selectors import admitted_requests

WARN_AT_PERCENT = 80
# The usage rows of requests the limiter refused carry one of these codes; they never counted against an allowance.
REFUSED_BY_LIMITER = frozenset(
    code for code in (RateLimited.openai_code, QuotaExceeded.openai_code, LimitsUnavailable.openai_code) if code
)


def window_words(seconds: int) -> str:
    """'3 hours', 'hour', '30 minutes', '90 seconds': the short window as a sentence names it."""
    for unit, name in ((3600, "hour"), (60, "minute"), (1, "second")):
        if seconds % unit == 0:
            count = seconds // unit
            return name if count == 1 else f"{count} {name}s"
    return f"{seconds} seconds"  # unreachable: every whole number of seconds divides by 1


def window_adjective(seconds: int) -> str:
    """'3-hour', '30-minute', '90-second', as the limiter's refusals name the window."""
    for unit, name in ((3600, "hour"), (60, "minute"), (1, "second")):
        if seconds % unit == 0:
            return f"{seconds // unit}-{name}"
    return f"{seconds}-second"  # unreachable: every whole number of seconds divides by 1


def duration_words(seconds: int) -> str:
    """'4 d 11 h', '2 h 5 min', '7 min', '42 s': the two largest units, rounded down."""
    seconds = max(0, seconds)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


@dataclass(frozen=True, slots=True)
class Allowance:
    """One request allowance of the plan, what was used of it, and when it starts over."""

    kind: str
    title: str  # "3-hour window", "This week"
    name: str  # "3-hour request allowance", "weekly request allowance"
    used: int
    limit: int
    starts_at: datetime
    resets_at: datetime
    resets_in: str
    counted_by: str  # "limiter": its Redis counters; "usage": the usage rows

    @property
    def percent(self) -> int:
        """Whole percent, rounded down; an allowance of 0 is always fully used."""
        return 100 if self.limit == 0 else self.used * 100 // self.limit

    @property
    def bar_percent(self) -> int:
        return min(100, self.percent)

    @property
    def is_reached(self) -> bool:
        return self.used >= self.limit

    @property
    def is_near(self) -> bool:
        return self.used * 100 >= WARN_AT_PERCENT * self.limit


def _instant(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def allowances_for(organization_id: int, plan: Plan | None, *, now: datetime) -> list[Allowance]:
    """The plan's allowances in the windows the limiter enforces at `now`, counted as the module docstring says."""
    if plan is None:
        return []
    epoch = now.timestamp()
    counters: list[AllowanceCounter] = allowance_counters(organization_id, plan_record(plan), now=epoch)
    unread = [c for c in counters if c.used is None]
    from_rows = dict(
        zip(
            [c.kind for c in unread],
            admitted_requests(
                organization_id,
                [(_instant(c.starts_at), _instant(c.resets_at)) for c in unread],
                refused_codes=REFUSED_BY_LIMITER,
            ),
            strict=True,
        )
    )
    allowances = []
    for counter in counters:
        weekly = counter.kind == WEEKLY
        allowances.append(
            Allowance(
                kind=counter.kind,
                title="This week" if weekly else f"{window_adjective(counter.window_s)} window",
                name="weekly request allowance" if weekly else f"{window_adjective(counter.window_s)} request allowance",
                used=counter.used if counter.used is not None else from_rows[counter.kind],
                limit=counter.limit,
                starts_at=_instant(counter.starts_at),
                resets_at=_instant(counter.resets_at),
                resets_in=duration_words(math.ceil(counter.resets_at - epoch)),
                counted_by="usage" if counter.used is None else "limiter",
            )
        )
    return allowances
