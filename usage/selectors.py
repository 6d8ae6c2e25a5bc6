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
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, Literal

from django.db import connections, router, transaction
from django.db.models import Count, Exists, Min, OuterRef, Q, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from accounts.time_zones import BadTimeZone as BadTimeZone  # re-exported: the usage views' one import
from accounts.time_zones import time_zone_parse as time_zone_parse
from accounts.time_zones import user_time_zone as user_time_zone
from apikeys.models import ApiKey
from billing.models import ClosedBillingDay
from usage.models import RequestLog, UsageEvent

GroupBy = Literal["day", "model", "key"]
GROUP_BYS: tuple[str, ...] = ("day", "model", "key")
PLAYGROUND_LABEL = "Playground"  # the "by key" row of the portal playground's own key
MAX_RANGE_DAYS = 366  # a year of per-day rows at most: the page's work is bounded whatever the client asks
DEFAULT_RANGE_DAYS = 14
# The days a range may name: none of our usage is older than 2000, and a later year than 2999 is a typo. Far enough
# from date.min and date.max that every bound a range computes (the day after its end, its default start) exists.
EARLIEST_DAY = date(2000, 1, 1)
LATEST_DAY = date(2999, 12, 31)
_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # what <input type=date> sends; not ISO week or basic forms


@dataclass(frozen=True, slots=True)
class DateRange:
    """Whole days of a time zone (UTC unless told), both ends included."""

    start: date
    end: date
    tz: tzinfo = UTC

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def bounds(self) -> tuple[datetime, datetime]:
        """The first instant of `start` and of the day after `end`, in the range's zone (a DST day is 23 or 25 hours)."""
        return (
            datetime.combine(self.start, time.min, tzinfo=self.tz),
            datetime.combine(self.end + timedelta(days=1), time.min, tzinfo=self.tz),
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


def date_range_parse(start: str | None, end: str | None, *, today: date | None = None, tz: tzinfo = UTC) -> DateRange:
    """From `from`/`to` query values (YYYY-MM-DD, either may be empty): the last two weeks by default, as days of `tz`.

    BadRange for a value of another shape, a day outside EARLIEST_DAY..LATEST_DAY, `from` after `to`, or a range of
    more than MAX_RANGE_DAYS days."""
    today = today or timezone.now().astimezone(tz).date()
    end_day = _day(end) if end else today
    start_day = _day(start) if start else max(EARLIEST_DAY, end_day - timedelta(days=DEFAULT_RANGE_DAYS - 1))
    if start_day > end_day:
        raise BadRange("'from' is after 'to'")
    if (end_day - start_day).days + 1 > MAX_RANGE_DAYS:
        raise BadRange(f"a range spans at most {MAX_RANGE_DAYS} days")
    return DateRange(start_day, end_day, tz)


@dataclass(slots=True)
class Totals:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_micros: int = 0  # what the requests were billed (UsageEvent.cost_micros), micro-units

    def add(self, other: Totals) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.total_tokens += other.total_tokens
        self.cost_micros += other.cost_micros

    def as_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cost_micros": self.cost_micros,
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
    "cost_micros": Coalesce(Sum("cost_micros"), 0),
}


# --- Filters: which requests a view of the usage holds ---------------------------------------------------------------

STATUSES: tuple[str, ...] = tuple(UsageEvent.Status.values)  # ok, error, cancelled
REQUEST_ID_SEARCH_MAX = 64  # UsageEvent.request_id's column
_MODEL = re.compile(r"[A-Za-z0-9._:/@+-]{1,100}")  # an alias as staff name them; the column holds 100
_KEY_ID = re.compile(r"[0-9]{1,18}")
_REQUEST_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{REQUEST_ID_SEARCH_MAX}}}")  # req_<hex>, or what a client sent as its id


class BadFilter(ValueError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass(frozen=True, slots=True)
class UsageFilters:
    """Narrowing a range's requests: one model, one key, one status, a request id or its beginning. Empty: all."""

    model: str = ""
    key_id: int | None = None
    status: str = ""
    request_id: str = ""  # exact, or a prefix: `req_3f2a` finds every id that begins so

    @property
    def active(self) -> bool:
        return bool(self.model or self.key_id is not None or self.status or self.request_id)

    def apply(self, events: QuerySet[UsageEvent]) -> QuerySet[UsageEvent]:
        if self.model:
            events = events.filter(alias=self.model)
        if self.key_id is not None:
            events = events.filter(api_key_id=self.key_id)
        if self.status:
            events = events.filter(status=self.status)
            if self.status != UsageEvent.Status.OK:
                # Said again in the words of the partial index `usage_org_notok_created`, so the planner can use it.
                events = events.exclude(status=UsageEvent.Status.OK)
        if self.request_id:
            events = events.filter(request_id__startswith=self.request_id)
        return events

    def query(self) -> dict[str, str]:
        """As query parameters (for links that keep them), empty ones left out."""
        values = {"model": self.model, "key": "" if self.key_id is None else str(self.key_id)}
        values |= {"status": self.status, "q": self.request_id}
        return {name: value for name, value in values.items() if value}


def usage_filters_parse(params: Mapping[str, Any]) -> UsageFilters:
    """From query values `model`, `key` (an API key's id), `status` (ok, error, cancelled) and `q` (a request id or
    its beginning); BadFilter naming the first one of the wrong shape. All bounded in length."""
    model = (params.get("model") or "").strip()
    if model and not _MODEL.fullmatch(model):
        raise BadFilter("model", "a model is a name of at most 100 letters, digits and . _ : / @ + -")
    key = (params.get("key") or "").strip()
    if key and not _KEY_ID.fullmatch(key):
        raise BadFilter("key", "a key is named by its id, a number")
    status = (params.get("status") or "").strip()
    if status and status not in STATUSES:
        raise BadFilter("status", f"the status is one of {', '.join(STATUSES)}")
    request_id = (params.get("q") or "").strip()
    if request_id and not _REQUEST_ID.fullmatch(request_id):
        raise BadFilter("q", f"a request id is at most {REQUEST_ID_SEARCH_MAX} letters, digits, _ and -")
    return UsageFilters(model=model, key_id=int(key) if key else None, status=status, request_id=request_id)


NO_FILTERS = UsageFilters()


def _events(organization_id: int, span: DateRange, filters: UsageFilters = NO_FILTERS) -> QuerySet[UsageEvent]:
    start, end = span.bounds()
    events = UsageEvent.objects.filter(organization_id=organization_id, created_at__gte=start, created_at__lt=end)
    return filters.apply(events)


def _totals(values: Mapping[str, Any]) -> Totals:
    return Totals(
        requests=values["requests"] or 0,
        errors=values["errors"] or 0,
        prompt_tokens=values["prompt_tokens"] or 0,
        completion_tokens=values["completion_tokens"] or 0,
        total_tokens=values["total_tokens"] or 0,
        cost_micros=values["cost_micros"] or 0,
    )


def _with_shares(rows: list[UsageRow], totals: Totals) -> list[UsageRow]:
    for row in rows:
        row.share = row.totals.requests / totals.requests if totals.requests else 0.0
    return rows


def usage_by_day(*, organization_id: int, span: DateRange, filters: UsageFilters = NO_FILTERS) -> list[UsageRow]:
    """Every day of the range (days of its time zone), days without traffic included (zeros), oldest first."""
    found = {
        values["day"]: _totals(values)
        for values in _events(organization_id, span, filters)
        .annotate(day=TruncDate("created_at", tzinfo=span.tz))
        .values("day")
        .annotate(**_AGGREGATES)
        .order_by("day")
    }
    return [UsageRow(label=day.isoformat(), day=day, totals=found.get(day, Totals())) for day in span.each_day()]


def usage_by_model(*, organization_id: int, span: DateRange, filters: UsageFilters = NO_FILTERS) -> list[UsageRow]:
    rows = [
        UsageRow(label=values["alias"], model=values["alias"], totals=_totals(values))
        # The django-stubs plugin cannot see the names that **_AGGREGATES annotates, so it refuses to order by one.
        for values in _events(organization_id, span, filters)
        .values("alias")
        .annotate(**_AGGREGATES)
        .order_by("-requests", "alias")  # type: ignore[misc]
    ]
    return rows


def usage_by_key(*, organization_id: int, span: DateRange, filters: UsageFilters = NO_FILTERS) -> list[UsageRow]:
    rows = []
    grouped = (
        _events(organization_id, span, filters)
        .values("api_key_id", "api_key__name", "api_key__prefix", "api_key__last_four", "api_key__kind")
        .annotate(**_AGGREGATES)
        .order_by("-requests", "api_key_id")  # type: ignore[misc]  # as in usage_by_model: names from **_AGGREGATES
    )
    for values in grouped:
        key_id = values["api_key_id"]
        if values["api_key__kind"] == ApiKey.Kind.PLAYGROUND:
            # The portal's own key: the playground's use, not one of the customer's keys (which they could not find).
            rows.append(UsageRow(label=PLAYGROUND_LABEL, key_id=key_id, key_name=PLAYGROUND_LABEL, totals=_totals(values)))
            continue
        name = values["api_key__name"] or "(deleted key)"
        masked = f"{values['api_key__prefix']}_…{values['api_key__last_four']}" if key_id else ""
        rows.append(UsageRow(label=name, key_id=key_id, key_name=name, key_masked=masked, totals=_totals(values)))
    return rows


def usage_summary(*, organization_id: int, span: DateRange, group_by: str, filters: UsageFilters = NO_FILTERS) -> UsageSummary:
    """Totals of the range and its rows grouped by day, model or key: one query."""
    if group_by == "day":
        rows = usage_by_day(organization_id=organization_id, span=span, filters=filters)
    elif group_by == "model":
        rows = usage_by_model(organization_id=organization_id, span=span, filters=filters)
    elif group_by == "key":
        rows = usage_by_key(organization_id=organization_id, span=span, filters=filters)
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
    "cost_micros",
)

PAGE_SIZE_MAX = 1_000  # requests one page (or one chunk of an export) holds at most
_PAGE_CURSOR = re.compile(r"([0-9]{1,17})\.([0-9]{1,18})")  # microseconds since 1970, then the row's id


class BadPageCursor(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PageCursor:
    """Where a page of requests ends, newest first: its last row's (created_at, id). The next page holds the rows
    strictly before it in that order, so pages neither skip nor repeat a row, however many arrive meanwhile."""

    created_at: datetime
    id: int

    def __str__(self) -> str:
        delta = self.created_at - datetime(1970, 1, 1, tzinfo=UTC)
        return f"{delta // timedelta(microseconds=1)}.{self.id}"

    @classmethod
    def parse(cls, text: str) -> PageCursor:
        match = _PAGE_CURSOR.fullmatch(text)
        if match is None:
            raise BadPageCursor("not a page cursor of this list")
        micros = int(match.group(1))
        if micros > (datetime(LATEST_DAY.year + 1, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
            microseconds=1
        ):
            raise BadPageCursor("not a page cursor of this list")
        return cls(created_at=datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros), id=int(match.group(2)))

    @classmethod
    def of(cls, row: UsageEvent) -> PageCursor:
        return cls(created_at=row.created_at, id=row.pk)

    def older(self) -> Q:
        # The plain bound first, so the (…, created_at) indexes start their backward scan at the cursor.
        ties = Q(created_at__lt=self.created_at) | Q(created_at=self.created_at, id__lt=self.id)
        return Q(created_at__lte=self.created_at) & ties


@dataclass(frozen=True, slots=True)
class UsagePage:
    rows: list[UsageEvent]  # newest first
    next: PageCursor | None  # where the next (older) page starts; None on the last page


def usage_requests_page(
    *,
    organization_id: int,
    span: DateRange,
    limit: int,
    filters: UsageFilters = NO_FILTERS,
    before: PageCursor | None = None,
) -> UsagePage:
    """One page of the range's requests, newest first by (created_at, id), `limit` of them (at most PAGE_SIZE_MAX),
    and the cursor of the next page. A keyset read: the org's (created_at) index serves any page at the same cost."""
    limit = max(1, min(limit, PAGE_SIZE_MAX))
    events = _events(organization_id, span, filters)
    if before is not None:
        events = events.filter(before.older())
    found = list(events.select_related("api_key").only(*LATEST_FIELDS).order_by("-created_at", "-id")[: limit + 1])
    rows = found[:limit]
    return UsagePage(rows=rows, next=PageCursor.of(rows[-1]) if len(found) > limit else None)


EXPORT_CHUNK = PAGE_SIZE_MAX


def usage_rows_chunks(
    *, organization_id: int, span: DateRange, filters: UsageFilters = NO_FILTERS, chunk_size: int = EXPORT_CHUNK
) -> Iterator[list[UsageEvent]]:
    """Every request of the range, newest first, `chunk_size` rows at a time: one keyset query per chunk, so memory
    holds one chunk whatever the range holds. Keyset reads rather than one server-side cursor: no transaction or
    cursor stays open while a slow client downloads, and it works behind a transaction pooler too (PORTAL_DB_POOLER
    turns server-side cursors off, and psycopg would then fetch the whole result into memory)."""
    before: PageCursor | None = None
    while True:
        page = usage_requests_page(organization_id=organization_id, span=span, limit=chunk_size, filters=filters, before=before)
        if page.rows:
            yield page.rows
        if page.next is None:
            return
        before = page.next


# Where a completion is asked for (gateway/urls.py, and the portal's playground): a request there that authenticated but
# was refused before a model was chosen leaves a request-log row and no usage row (gateway/pipeline.py usage_row).
COMPLETION_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/messages",
    "/v1/responses",
    "/portal/playground/chat/completions",
)


def refusals_before_a_model(*, organization_id: int, span: DateRange) -> list[tuple[int, int]]:
    """(HTTP status, how many) of the organization's completion requests in the range refused after authentication but
    before a model was chosen (a body that does not parse, an unknown or excluded model): counted from the request logs,
    which keep them PORTAL_REQUEST_LOG_RETENTION_DAYS, so no row is written for them beyond the log line every request
    has. One query over the organization's log rows of the range (their organization index)."""
    start, end = span.bounds()
    counted = (
        RequestLog.objects.filter(
            organization_id=organization_id,
            created_at__gte=start,
            created_at__lt=end,
            status__gte=400,
            method="POST",
            path__in=COMPLETION_PATHS,
        )
        .exclude(Exists(UsageEvent.objects.filter(request_id=OuterRef("request_id"))))
        .values_list("status")
        .annotate(n=Count("id"))
        .order_by("status")
    )
    return [(status, n) for status, n in counted]


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
