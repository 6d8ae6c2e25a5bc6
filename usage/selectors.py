"""Reads of an organization's usage for the portal: aggregates in the database, one query per view of the data.

Every query filters on (organization, created_at), which the `usage_org_created` index serves, so a page costs
the same handful of statements for ten events or ten million. The live feed's catch-up reads by id instead (the
database's own order of the rows, see FeedCursor), within a bounded range of the newest ids.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from django.db import connections, router, transaction
from django.db.models import Count, Min, Q, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from billing.models import ClosedBillingDay
from usage.models import UsageEvent

GroupBy = Literal["day", "model", "key"]
GROUP_BYS: tuple[str, ...] = ("day", "model", "key")
MAX_RANGE_DAYS = 366  # a year of per-day rows at most: the page's work is bounded whatever the client asks
DEFAULT_RANGE_DAYS = 14
# The days a range may name: none of our usage is older than 2000, and a later year than 2999 is a typo. Far enough
# from date.min and date.max that every bound a range computes (the day after its end, its default start) exists.
EARLIEST_DAY = date(2000, 1, 1)
LATEST_DAY = date(2999, 12, 31)
_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # what <input type=date> sends; not ISO week or basic forms


@dataclass(frozen=True, slots=True)
class DateRange:
    """Whole UTC days, both ends included."""

    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def bounds(self) -> tuple[datetime, datetime]:
        return (
            datetime.combine(self.start, time.min, tzinfo=UTC),
            datetime.combine(self.end + timedelta(days=1), time.min, tzinfo=UTC),
        )

    def each_day(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range(self.days)]


class BadRange(ValueError):
    pass


def _day(value: str) -> date:
    if not _ISO_DAY.fullmatch(value):
        raise BadRange("dates are written YYYY-MM-DD")
    try:
        day = date.fromisoformat(value)
    except ValueError:  # the right shape, not a day of the calendar (2026-02-30)
        raise BadRange("dates are written YYYY-MM-DD") from None
    if not EARLIEST_DAY <= day <= LATEST_DAY:
        raise BadRange(f"dates are between {EARLIEST_DAY.isoformat()} and {LATEST_DAY.isoformat()}")
    return day


def date_range_parse(start: str | None, end: str | None, *, today: date | None = None) -> DateRange:
    """From `from`/`to` query values (YYYY-MM-DD, either may be empty): the last two weeks by default.

    BadRange for a value of another shape, a day outside EARLIEST_DAY..LATEST_DAY, `from` after `to`, or a range of
    more than MAX_RANGE_DAYS days."""
    today = today or timezone.now().astimezone(UTC).date()
    end_day = _day(end) if end else today
    start_day = _day(start) if start else max(EARLIEST_DAY, end_day - timedelta(days=DEFAULT_RANGE_DAYS - 1))
    if start_day > end_day:
        raise BadRange("'from' is after 'to'")
    if (end_day - start_day).days + 1 > MAX_RANGE_DAYS:
        raise BadRange(f"a range spans at most {MAX_RANGE_DAYS} days")
    return DateRange(start_day, end_day)


@dataclass(slots=True)
class Totals:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def add(self, other: Totals) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.total_tokens += other.total_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(slots=True)
class UsageRow:
    """One group: a day, a model or a key, with its totals."""

    label: str
    totals: Totals
    day: date | None = None
    model: str | None = None
    key_id: int | None = None
    key_name: str = ""
    key_masked: str = ""
    share: float = 0.0  # of the range's requests, 0..1

    def as_dict(self, group_by: str) -> dict[str, Any]:
        head: dict[str, Any]
        if group_by == "day":
            head = {"day": self.day.isoformat() if self.day else None}
        elif group_by == "model":
            head = {"model": self.model}
        else:
            head = {"key_id": self.key_id, "key_name": self.key_name, "key_masked": self.key_masked}
        return {**head, **self.totals.as_dict()}


@dataclass(slots=True)
class UsageSummary:
    organization_id: int
    range: DateRange
    group_by: str
    totals: Totals
    rows: list[UsageRow] = field(default_factory=list)


_AGGREGATES = {
    "requests": Count("id"),
    "errors": Count("id", filter=Q(status=UsageEvent.Status.ERROR)),
    "prompt_tokens": Coalesce(Sum("prompt_tokens"), 0),
    "completion_tokens": Coalesce(Sum("completion_tokens"), 0),
    "total_tokens": Coalesce(Sum("total_tokens"), 0),
}


def _events(organization_id: int, span: DateRange) -> QuerySet[UsageEvent]:
    start, end = span.bounds()
    return UsageEvent.objects.filter(organization_id=organization_id, created_at__gte=start, created_at__lt=end)


def _totals(values: Mapping[str, Any]) -> Totals:
    return Totals(
        requests=values["requests"] or 0,
        errors=values["errors"] or 0,
        prompt_tokens=values["prompt_tokens"] or 0,
        completion_tokens=values["completion_tokens"] or 0,
        total_tokens=values["total_tokens"] or 0,
    )


def _with_shares(rows: list[UsageRow], totals: Totals) -> list[UsageRow]:
    for row in rows:
        row.share = row.totals.requests / totals.requests if totals.requests else 0.0
    return rows


def usage_by_day(*, organization_id: int, span: DateRange) -> list[UsageRow]:
    """Every day of the range, days without traffic included (zeros), oldest first."""
    found = {
        values["day"]: _totals(values)
        for values in _events(organization_id, span)
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day")
        .annotate(**_AGGREGATES)
        .order_by("day")
    }
    return [UsageRow(label=day.isoformat(), day=day, totals=found.get(day, Totals())) for day in span.each_day()]


def usage_by_model(*, organization_id: int, span: DateRange) -> list[UsageRow]:
    rows = [
        UsageRow(label=values["alias"], model=values["alias"], totals=_totals(values))
        # The django-stubs plugin cannot see the names that **_AGGREGATES annotates, so it refuses to order by one.
        for values in _events(organization_id, span).values("alias").annotate(**_AGGREGATES).order_by("-requests", "alias")  # type: ignore[misc]
    ]
    return rows


def usage_by_key(*, organization_id: int, span: DateRange) -> list[UsageRow]:
    rows = []
    grouped = (
        _events(organization_id, span)
        .values("api_key_id", "api_key__name", "api_key__prefix", "api_key__last_four")
        .annotate(**_AGGREGATES)
        .order_by("-requests", "api_key_id")  # type: ignore[misc]  # as in usage_by_model: names from **_AGGREGATES
    )
    for values in grouped:
        key_id = values["api_key_id"]
        name = values["api_key__name"] or "(deleted key)"
        masked = f"{values['api_key__prefix']}_…{values['api_key__last_four']}" if key_id else ""
        rows.append(UsageRow(label=name, key_id=key_id, key_name=name, key_masked=masked, totals=_totals(values)))
    return rows


def usage_summary(*, organization_id: int, span: DateRange, group_by: str) -> UsageSummary:
    """Totals of the range and its rows grouped by day, model or key: one query."""
    if group_by == "day":
        rows = usage_by_day(organization_id=organization_id, span=span)
    elif group_by == "model":
        rows = usage_by_model(organization_id=organization_id, span=span)
    elif group_by == "key":
        rows = usage_by_key(organization_id=organization_id, span=span)
    else:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BYS)}")
    totals = Totals()
    for row in rows:
        totals.add(row.totals)
    return UsageSummary(
        organization_id=organization_id, range=span, group_by=group_by, totals=totals, rows=_with_shares(rows, totals)
    )


LATEST_FIELDS = (
    "request_id",
    "created_at",
    "route",
    "alias",
    "status",
    "http_status",
    "error_code",
    "streamed",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "duration_ms",
    "ttfb_ms",
    "api_key_id",
    "api_key__name",
    "api_key__prefix",
    "api_key__last_four",
    "end_user",
)


def usage_latest(*, organization_id: int, span: DateRange, limit: int = 50) -> list[UsageEvent]:
    """The newest requests of the range, newest first, with their key's name in the same query."""
    return list(
        _events(organization_id, span).select_related("api_key").only(*LATEST_FIELDS).order_by("-created_at", "-id")[:limit]
    )


# --- The live feed: what a page has, and what it missed -------------------------------------------------------------

FEED_CATCHUP_MAX = 200  # rows one catch-up carries at most: the newest (the page lists 25; the rest feed its totals)
FEED_CURSOR_WINDOW = 2_000  # ids below a cursor's newest that it checks for rows not yet committed
FEED_CURSOR_MAX_GAPS = 16  # ranges of such ids a cursor remembers at most: the newest
FEED_CATCHUP_SCAN = 50_000  # a catch-up looks at the service's newest rows this far back at most (by id)
_ID = r"[0-9]{1,18}"  # below 2**63 whatever the digits
_CURSOR = re.compile(rf"({_ID})(?:~({_ID}(?:-{_ID})?(?:\.{_ID}(?:-{_ID})?){{0,{FEED_CURSOR_MAX_GAPS - 1}}}))?")


class BadCursor(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class FeedCursor:
    """Which usage rows a page already has, in the database's own terms rather than anyone's clock.

    Every row with an id up to `high` (the newest committed when the cursor was taken), except the ids in `gaps`: ids
    below `high` whose rows were not committed then. Ids are handed out when a batch inserts, and batches of two
    processes commit in either order, so a row can appear after a newer id was already visible; a cursor therefore
    remembers the ids missing among the FEED_CURSOR_WINDOW below `high` (an uncommitted batch, or ids never used: a
    rolled-back or skipped insert) and a catch-up asks for them again. Ids further down are taken as settled: a batch
    would have to stay uncommitted while that many newer rows were written. Written as `high` or `high~a-b.c`.
    """

    high: int
    gaps: tuple[tuple[int, int], ...] = ()

    def __str__(self) -> str:
        if not self.gaps:
            return str(self.high)
        return f"{self.high}~" + ".".join(str(a) if a == b else f"{a}-{b}" for a, b in self.gaps)

    @classmethod
    def parse(cls, text: str) -> FeedCursor:
        """A cursor as `__str__` writes it; BadCursor for anything else, or gaps outside the window below `high`."""
        match = _CURSOR.fullmatch(text)
        if match is None:
            raise BadCursor("not a feed cursor")
        high = int(match.group(1))
        gaps = []
        for part in (match.group(2) or "").split("."):
            if part:
                first, _, last = part.partition("-")
                gap = (int(first), int(last or first))
                if not high - FEED_CURSOR_WINDOW < gap[0] <= gap[1] < high:
                    raise BadCursor("a gap outside the cursor's window")
                gaps.append(gap)
        return cls(high=high, gaps=tuple(gaps))

    def missed(self) -> Q:
        """The rows this cursor does not have (given rows already above the catch-up's floor: see usage_feed_since)."""
        query = Q(id__gt=self.high)
        for first, last in self.gaps:
            query |= Q(id__gte=first, id__lte=last)
        return query


@contextmanager
def read_snapshot() -> Iterator[None]:
    """Several reads as one view of the database: a REPEATABLE READ transaction on PostgreSQL, so a page's totals, its
    latest rows and its feed cursor agree on which rows exist. Elsewhere (SQLite, or inside a transaction already) the
    reads run as they are: read the cursor first, so a row committed meanwhile is at worst counted twice, never lost."""
    connection = connections[router.db_for_read(UsageEvent)]
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        yield
        return
    with transaction.atomic(using=connection.alias):
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        yield


def usage_feed_cursor() -> FeedCursor:
    """Where the usage table stands now, as a FeedCursor: one statement, over the primary key's last window of ids."""
    connection = connections[router.db_for_read(UsageEvent)]
    table = connection.ops.quote_name(UsageEvent._meta.db_table)
    # The newest id, and each id in the window that follows a missing one with the id before it (NULL for the first).
    sql = f"""
        WITH top AS (SELECT COALESCE(MAX(id), 0) AS high FROM {table}),
        near AS (
            SELECT id, LAG(id) OVER (ORDER BY id) AS prev FROM {table} WHERE id > (SELECT high FROM top) - %s
        )
        SELECT top.high, gaps.prev, gaps.id FROM top LEFT JOIN (
            SELECT prev, id FROM near WHERE prev IS NULL OR id - prev > 1 ORDER BY id DESC LIMIT %s
        ) gaps ON 1 = 1
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [FEED_CURSOR_WINDOW, FEED_CURSOR_MAX_GAPS + 1])
        found = cursor.fetchall()
    high = found[0][0]
    floor = max(1, high - FEED_CURSOR_WINDOW + 1)  # the lowest id the window covers
    gaps = []
    for _, prev, next_id in found:
        if next_id is None:
            continue
        first = floor if prev is None else prev + 1
        if first < next_id:
            gaps.append((first, next_id - 1))
    return FeedCursor(high=high, gaps=tuple(sorted(gaps)[-FEED_CURSOR_MAX_GAPS:]))


@dataclass(frozen=True, slots=True)
class FeedCatchUp:
    rows: list[UsageEvent]  # oldest first (by id)
    truncated: bool  # more rows were missed than `rows` holds, or older ones than a catch-up looks at
    cursor: FeedCursor  # what the page has once it has these rows


def usage_feed_since(*, organization_id: int, cursor: FeedCursor | None, limit: int = FEED_CATCHUP_MAX) -> FeedCatchUp:
    """The organization's rows a page with `cursor` does not have, the newest `limit` of them, and the cursor that
    follows them, read as one view of the database. Without a cursor: no rows, only the cursor of now.

    Bounded: the rows are looked for among the service's newest FEED_CATCHUP_SCAN ids (a page away for longer gets
    `truncated`), plus the cursor's few gap ranges, newest first, stopping at `limit` + 1 rows."""
    with read_snapshot():
        now = usage_feed_cursor()
        if cursor is None:
            return FeedCatchUp(rows=[], truncated=False, cursor=now)
        floor = now.high - FEED_CATCHUP_SCAN
        clipped = cursor.high < floor
        if clipped:
            cursor = FeedCursor(high=floor, gaps=())
        found = list(
            UsageEvent.objects.filter(organization_id=organization_id).filter(cursor.missed()).order_by("-id")[: limit + 1]
        )
    return FeedCatchUp(rows=found[:limit][::-1], truncated=clipped or len(found) > limit, cursor=now)


# --- Reads for billing: the allowance counts and the days to close ------------------------------------------------
# Here rather than in billing.selectors: they read usage rows, and billing sits below usage (docs/ARCHITECTURE.md).


def billing_days_unclosed(*, today: date) -> list[date]:
    """Every UTC day before today, from the first usage event on, that close_billing_period has not closed."""
    first = UsageEvent.objects.aggregate(first=Min("created_at"))["first"]
    if first is None:
        return []
    first_day = first.astimezone(UTC).date()
    closed = set(ClosedBillingDay.objects.filter(day__gte=first_day, day__lt=today).values_list("day", flat=True))
    span = (today - first_day).days
    return [day for day in (first_day + timedelta(days=n) for n in range(max(span, 0))) if day not in closed]


def admitted_requests(
    organization_id: int, windows: list[tuple[datetime, datetime]], *, refused_codes: frozenset[str]
) -> list[int]:
    """How many of the organization's requests each [start, end) window holds, not counting the ones the rate
    limiter refused (their usage rows carry `refused_codes`): every admitted request leaves exactly one usage row,
    whatever became of it (ok, error, cancelled). One query for all the windows."""
    if not windows:
        return []
    counts = (
        UsageEvent.objects.filter(
            organization_id=organization_id,
            created_at__gte=min(start for start, _ in windows),
            created_at__lt=max(end for _, end in windows),
        )
        .exclude(error_code__in=refused_codes)
        .aggregate(
            **{
                f"w{i}": Count("id", filter=Q(created_at__gte=start, created_at__lt=end))
                for i, (start, end) in enumerate(windows)
            }
        )
    )
    return [counts[f"w{i}"] for i in range(len(windows))]


def spend_since(*, organization_id: int, api_key_id: int | None = None, since: datetime) -> int:
    """What an organization's (or one of its keys') requests made at or after `since` cost, in micro-units: the
    gateway's spend-cap counters are seeded from it when Redis lost them (gateway/limits/money.py)."""
    rows = UsageEvent.objects.filter(organization_id=organization_id, created_at__gte=since)
    if api_key_id is not None:
        rows = rows.filter(api_key_id=api_key_id)
    return int(rows.aggregate(spent=Coalesce(Sum("cost_micros"), 0))["spent"])
