"""Usage in the portal: the page (charts, splits, latest requests, live feed) and the JSON summary."""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from portal import openapi
from portal.allowances import allowances_for
from portal.context import ORG_PARAMETER, PortalAPIView, PortalContext, portal_page, render_portal
from usage.selectors import (
    EARLIEST_DAY,
    GROUP_BYS,
    LATEST_DAY,
    NO_FILTERS,
    REQUEST_ID_SEARCH_MAX,
    STATUSES,
    BadFilter,
    BadPageCursor,
    BadRange,
    BadTimeZone,
    DateRange,
    PageCursor,
    UsageFilters,
    UsageRow,
    date_range_parse,
    read_snapshot,
    refusals_before_a_model,
    time_zone_parse,
    usage_by_day,
    usage_feed_cursor,
    usage_filters_parse,
    usage_requests_page,
    usage_rows_chunks,
    usage_summary,
    user_time_zone,
)

CHART_HEIGHT = 100.0  # the SVG's own units; the browser stretches it to the box


@dataclass(frozen=True, slots=True)
class Bar:
    day: str  # YYYY-MM-DD: where the live feed adds a request
    value: int
    errors: int
    x: float
    width: float
    y: float
    height: float
    error_height: float
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    """Bars in a 0..100 × 0..100 box drawn with preserveAspectRatio=none; labels are HTML, so they stay legible."""

    bars: list[Bar]
    metric: str
    peak: int
    first_label: str
    middle_label: str
    last_label: str
    unit: str


def _short(day: date) -> str:
    return f"{day:%b} {day.day}"


def bar_chart(rows: list[UsageRow], *, metric: str, unit: str) -> Chart:
    values = [getattr(row.totals, metric) for row in rows]
    peak = max(values, default=0)
    slot = 100.0 / max(1, len(rows))
    bars = []
    for i, (row, value) in enumerate(zip(rows, values, strict=True)):
        height = CHART_HEIGHT * value / peak if peak else 0.0
        errors = row.totals.errors if metric == "requests" else 0
        error_height = CHART_HEIGHT * errors / peak if peak else 0.0
        title = f"{_short(row.day) if row.day else row.label}: {value:,} {unit}"
        if errors:
            title += f" ({errors:,} failed)"
        bars.append(
            Bar(
                day=row.day.isoformat() if row.day else "",
                value=value,
                errors=errors,
                x=round(i * slot + slot * 0.14, 3),
                width=round(slot * 0.72, 3),
                y=round(CHART_HEIGHT - height, 3),
                height=round(height, 3),
                error_height=round(error_height, 3),
                title=title,
            )
        )
    days = [row.day for row in rows if row.day]
    return Chart(
        bars=bars,
        metric=metric,
        peak=peak,
        first_label=_short(days[0]) if days else "",
        middle_label=_short(days[len(days) // 2]) if len(days) > 2 else "",
        last_label=_short(days[-1]) if len(days) > 1 else "",
        unit=unit,
    )


LATEST_ROWS = 25
PRESETS = (("7 days", 7), ("14 days", 14), ("30 days", 30), ("90 days", 90))
STATUS_LABELS = {"ok": "OK", "error": "Failed", "cancelled": "Cancelled"}


@portal_page
def usage_page(request: HttpRequest) -> HttpResponse:
    """The range's totals, charts and splits, and its requests 25 at a time, newest first, all narrowed by the filters
    (model, key, status, request id); days and times in the user's time zone. Bad input renders the page without it,
    the reason on the form, with a 400."""
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    org = ctx.organization
    tz = user_time_zone(request.user)
    errors: dict[str, str] = {}
    try:
        span = date_range_parse(request.GET.get("from"), request.GET.get("to"), tz=tz)
    except BadRange as exc:
        # The page still renders (the last two weeks), with the error on the form and a 400 to say the input was refused.
        errors["range"] = str(exc)
        span = date_range_parse(None, None, tz=tz)
    try:
        filters = usage_filters_parse(request.GET)
    except BadFilter as exc:
        errors[exc.name] = str(exc)
        filters = NO_FILTERS
    before: PageCursor | None = None
    if request.GET.get("before"):
        try:
            before = PageCursor.parse(request.GET["before"])
        except BadPageCursor as exc:
            errors["before"] = str(exc)
    today = date_range_parse(None, None, tz=tz).end
    # The live feed adds new requests to the top of the first page; an older page, or one request id, has no top.
    live = span.end >= today and before is None and not filters.request_id
    # One view of the database for the whole page, the live feed's cursor first: the socket then catches up on
    # exactly the rows these totals and this list do not hold (usage.selectors.FeedCursor).
    with read_snapshot():
        cursor = usage_feed_cursor() if live else None
        by_day = usage_summary(organization_id=org.pk, span=span, group_by="day", filters=filters)
        by_model = usage_summary(organization_id=org.pk, span=span, group_by="model", filters=filters)
        by_key = usage_summary(organization_id=org.pk, span=span, group_by="key", filters=filters)
        page = usage_requests_page(organization_id=org.pk, span=span, limit=LATEST_ROWS, filters=filters, before=before)
        # The filters' choices: every model and key of the range, whichever one is chosen now.
        all_models = usage_summary(organization_id=org.pk, span=span, group_by="model") if filters.active else by_model
        all_keys = usage_summary(organization_id=org.pk, span=span, group_by="key") if filters.active else by_key
        # Refusals before a model was chosen have no model, key or usage row: shown beside the unfiltered totals only.
        refused = [] if filters.active else refusals_before_a_model(organization_id=org.pk, span=span)
    # The limiter's own windows and counters, as the billing page shows them (portal.allowances): never a second count.
    allowances = allowances_for(org.pk, org.plan, now=timezone.now())
    keep = {"from": span.start.isoformat(), "to": span.end.isoformat(), **filters.query()}
    with timezone.override(tz):
        return render_portal(
            request,
            "usage/usage.html",
            {
                "nav": "usage",
                "span": span,
                "time_zone": str(tz),
                "errors": errors,
                "range_error": errors.get("range", ""),
                "earliest_day": EARLIEST_DAY,
                "latest_day": LATEST_DAY,
                "totals": by_day.totals,
                "requests_chart": bar_chart(by_day.rows, metric="requests", unit="requests"),
                "tokens_chart": bar_chart(by_day.rows, metric="total_tokens", unit="tokens"),
                "by_model": by_model.rows,
                "by_key": by_key.rows,
                "latest": page.rows,
                "refused_before_a_model": refused,
                "refused_before_a_model_total": sum(n for _, n in refused),
                "request_log_days": settings.PORTAL_REQUEST_LOG_RETENTION_DAYS,
                "filters": filters,
                "model_choices": _with_chosen([row.model or "" for row in all_models.rows], filters.model),
                "key_choices": [(row.key_id, row.key_name) for row in all_keys.rows if row.key_id is not None],
                "status_choices": [(status, STATUS_LABELS[status]) for status in STATUSES],
                "request_id_max": REQUEST_ID_SEARCH_MAX,
                "older_url": "?" + urlencode({**keep, "before": str(page.next)}) if page.next else "",
                "newest_url": "?" + urlencode(keep) if before is not None else "",
                "export_rows_url": "/portal/usage/export?" + urlencode({**keep, "kind": "rows"}),
                "export_days_url": "/portal/usage/export?" + urlencode({**keep, "kind": "daily"}),
                "allowances": allowances,
                "warnings": [a for a in allowances if a.is_near],  # the banner of portal/_limit_banners.html
                "plan": org.plan,
                "presets": [
                    (
                        label,
                        urlencode(
                            {"from": (today - timedelta(days=days - 1)).isoformat(), "to": today.isoformat(), **filters.query()}
                        ),
                        DateRange(today - timedelta(days=days - 1), today, tz),
                    )
                    for label, days in PRESETS
                ],
                "live": live,
                "live_cursor": str(cursor) if cursor is not None else "",
            },
            status=400 if errors else 200,
        )


def _with_chosen(choices: list[str], chosen: str) -> list[str]:
    return choices if not chosen or chosen in choices else [chosen, *choices]


_TOTALS: dict[str, serializers.Field] = {
    name: serializers.IntegerField()
    for name in ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "cost_micros")
}
SUMMARY_SCHEMA = inline_serializer(
    "UsageSummary",
    {
        "organization": serializers.CharField(),
        "from": serializers.DateField(),
        "to": serializers.DateField(),
        "time_zone": serializers.CharField(help_text="the zone whose days the range and the rows are"),
        "group_by": serializers.ChoiceField(choices=list(GROUP_BYS)),
        "totals": inline_serializer("UsageTotals", _TOTALS),
        "rows": inline_serializer(
            "UsageSummaryRow",
            {
                "day": serializers.DateField(required=False, help_text="group_by=day: every day of the range, zeros included"),
                "model": serializers.CharField(required=False, help_text="group_by=model"),
                "key_id": serializers.IntegerField(
                    required=False, allow_null=True, help_text="group_by=key; null: a deleted key"
                ),
                "key_name": serializers.CharField(required=False),
                "key_masked": serializers.CharField(required=False),
                **_TOTALS,
            },
            many=True,
        ),
    },
)


RANGE_PARAMETERS = [
    OpenApiParameter(
        "from", OpenApiTypes.DATE, OpenApiParameter.QUERY, required=False, description="first day; default: 13 days before `to`"
    ),
    OpenApiParameter("to", OpenApiTypes.DATE, OpenApiParameter.QUERY, required=False, description="last day; default: today"),
    OpenApiParameter(
        "tz",
        OpenApiTypes.STR,
        OpenApiParameter.QUERY,
        required=False,
        description="IANA time zone of the days and times (e.g. Europe/Berlin); default: your profile's, UTC for a key",
    ),
]
FILTER_PARAMETERS = [
    OpenApiParameter("model", OpenApiTypes.STR, OpenApiParameter.QUERY, required=False, description="one model alias"),
    OpenApiParameter("key", OpenApiTypes.INT, OpenApiParameter.QUERY, required=False, description="one API key's id"),
    OpenApiParameter("status", OpenApiTypes.STR, OpenApiParameter.QUERY, required=False, enum=list(STATUSES)),
    OpenApiParameter(
        "q",
        OpenApiTypes.STR,
        OpenApiParameter.QUERY,
        required=False,
        description=f"a request id, or its beginning (at most {REQUEST_ID_SEARCH_MAX} of A-Z a-z 0-9 _ -)",
    ),
]


def _api_query(request: Request) -> tuple[DateRange, UsageFilters]:
    """The range (in `tz`, else the caller's zone) and the filters of a management API call; a 400 naming the field."""
    params = request.query_params
    if params.get("tz"):
        try:
            tz: tzinfo = time_zone_parse(params["tz"])
        except BadTimeZone as exc:
            raise ValidationError({"tz": [str(exc)]}) from None
    else:
        tz = user_time_zone(request.user)
    try:
        span = date_range_parse(params.get("from"), params.get("to"), tz=tz)
    except BadRange as exc:
        raise ValidationError({"detail": str(exc)}) from None
    try:
        filters = usage_filters_parse(params)
    except BadFilter as exc:
        raise ValidationError({exc.name: [str(exc)]}) from None
    return span, filters


class UsageSummaryAPI(PortalAPIView):
    """Requests, tokens and cost of a date range (days of `tz`, both ends included), grouped by day, model or key."""

    @extend_schema(
        parameters=[
            *RANGE_PARAMETERS,
            OpenApiParameter(
                "group_by", OpenApiTypes.STR, OpenApiParameter.QUERY, required=False, enum=list(GROUP_BYS), default="day"
            ),
            *FILTER_PARAMETERS,
            ORG_PARAMETER,
        ],
        responses=SUMMARY_SCHEMA,
        operation_id="usage_summary",
        summary="Usage summary",
        description="Requests and tokens of a date range (UTC days, both ends included), grouped by day, model or key. "
        "The playground's own use is the key row named Playground.",
        examples=[openapi.USAGE_SUMMARY_EXAMPLE],
    )
    def get(self, request: Request) -> Response:
        ctx = self.portal(request)
        group_by = request.query_params.get("group_by") or "day"
        if group_by not in GROUP_BYS:
            raise ValidationError({"group_by": [f"one of {', '.join(GROUP_BYS)}"]})
        span, filters = _api_query(request)
        summary = usage_summary(organization_id=ctx.organization.pk, span=span, group_by=group_by, filters=filters)
        return Response(
            {
                "organization": ctx.organization.slug,
                "from": span.start.isoformat(),
                "to": span.end.isoformat(),
                "time_zone": str(span.tz),
                "group_by": group_by,
                "totals": summary.totals.as_dict(),
                "rows": [row.as_dict(group_by) for row in summary.rows],
            }
        )


# --- CSV export ---------------------------------------------------------------------------------------------------

EXPORT_KINDS = ("rows", "daily")
ROW_COLUMNS = (
    "created_at",
    "request_id",
    "model",
    "route",
    "streamed",
    "key_id",
    "key_name",
    "end_user",
    "status",
    "http_status",
    "error_code",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_micros",
    "cost_usd",
    "duration_ms",
)
DAILY_COLUMNS = (
    "day",
    "day_start",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_micros",
    "cost_usd",
)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: str) -> str:
    """A text cell a spreadsheet will not run: one beginning like a formula (= + - @, tab, CR) gets a leading quote,
    as OWASP recommends; every text that came from a client or a customer (end user, key name) goes through this."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def usd(micros: int) -> str:
    """Micro-units as a plain decimal number of dollars, exact (billing.money's integer arithmetic, no float)."""
    dollars, fraction = divmod(abs(micros), 1_000_000)
    return f"{'-' if micros < 0 else ''}{dollars}.{fraction:06d}"


class _Line:
    """csv.writer's file: hands back what it was given, so each row becomes one string."""

    def write(self, text: str) -> str:
        return text


def _row_cells(row: Any, tz: tzinfo) -> list[object]:
    key = row.api_key
    return [
        row.created_at.astimezone(tz).isoformat(timespec="microseconds"),
        csv_text(row.request_id),
        csv_text(row.alias),
        csv_text(row.route),
        "true" if row.streamed else "false",
        row.api_key_id if row.api_key_id is not None else "",
        csv_text(key.name) if key is not None else "",
        csv_text(row.end_user),
        csv_text(row.status),
        row.http_status,
        csv_text(row.error_code),
        row.prompt_tokens,
        row.completion_tokens,
        row.total_tokens,
        row.cost_micros,
        usd(row.cost_micros),
        row.duration_ms,
    ]


def _next_chunk(chunks: Iterator[list[list[object]]]) -> list[list[object]] | None:
    return next(chunks, None)


async def _csv_stream(header: tuple[str, ...], chunks: Iterator[list[list[object]]]) -> AsyncIterator[str]:
    """The CSV, one piece per chunk of rows. Async, so daphne streams it as it is read: Django would read a sync
    iterator to its end before sending anything under ASGI. Each chunk is read in the request's database thread."""
    writer = csv.writer(_Line(), lineterminator="\r\n")
    yield writer.writerow(header)
    while True:
        chunk = await sync_to_async(_next_chunk, thread_sensitive=True)(chunks)
        if chunk is None:
            return
        yield "".join(writer.writerow(cells) for cells in chunk)


class CSVRenderer(BaseRenderer):
    """Lets a client that asks for text/csv through content negotiation; an error still reads as JSON text."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return json.dumps(data).encode()


class UsageExportAPI(PortalAPIView):
    """The range's requests (`kind=rows`, newest first) or its daily totals (`kind=daily`) as CSV, streamed: any
    range of at most 366 days, the filters applied, times in ISO 8601 with the zone's offset."""

    renderer_classes = [JSONRenderer, CSVRenderer]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "kind", OpenApiTypes.STR, OpenApiParameter.QUERY, required=False, enum=list(EXPORT_KINDS), default="rows"
            ),
            *RANGE_PARAMETERS,
            *FILTER_PARAMETERS,
            ORG_PARAMETER,
        ],
        responses={(200, "text/csv"): OpenApiTypes.STR},
        operation_id="usage_export",
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        ctx = self.portal(request)
        kind = request.query_params.get("kind") or "rows"
        if kind not in EXPORT_KINDS:
            raise ValidationError({"kind": [f"one of {', '.join(EXPORT_KINDS)}"]})
        span, filters = _api_query(request)
        org = ctx.organization
        tz = span.tz
        chunks: Iterator[list[list[object]]]
        header: tuple[str, ...]
        if kind == "rows":
            header = ROW_COLUMNS
            chunks = (
                [_row_cells(row, tz) for row in rows]
                for rows in usage_rows_chunks(organization_id=org.pk, span=span, filters=filters)
            )
        else:
            header = DAILY_COLUMNS
            chunks = iter([_daily_cells(org.pk, span, filters)])  # at most 366 rows: one query, one piece
        name = f"usage-{kind}-{org.slug}-{span.start.isoformat()}-{span.end.isoformat()}.csv"
        response = StreamingHttpResponse(_csv_stream(header, chunks), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        response["Cache-Control"] = "no-store"
        return response


def _daily_cells(organization_id: int, span: DateRange, filters: UsageFilters) -> list[list[object]]:
    cells: list[list[object]] = []
    for row in usage_by_day(organization_id=organization_id, span=span, filters=filters):
        assert row.day is not None  # rows by day carry their day
        t = row.totals
        start = datetime.combine(row.day, time.min, tzinfo=span.tz).isoformat()
        cells.append(
            [
                row.day.isoformat(),
                start,
                t.requests,
                t.errors,
                t.prompt_tokens,
                t.completion_tokens,
                t.total_tokens,
                t.cost_micros,
                usd(t.cost_micros),
            ]
        )
    return cells
