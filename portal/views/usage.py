"""Usage in the portal: the page (charts, splits, latest requests, live feed) and the JSON summary."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from portal.allowances import allowances_for
from portal.context import ORG_PARAMETER, PortalAPIView, PortalContext, portal_page, render_portal
from usage.selectors import (
    EARLIEST_DAY,
    GROUP_BYS,
    LATEST_DAY,
    BadRange,
    DateRange,
    UsageRow,
    date_range_parse,
    read_snapshot,
    usage_feed_cursor,
    usage_latest,
    usage_summary,
)

CHART_HEIGHT = 100.0  # the SVG's own units; the browser stretches it to the box


@dataclass(frozen=True, slots=True)
class Bar:
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
        peak=peak,
        first_label=_short(days[0]) if days else "",
        middle_label=_short(days[len(days) // 2]) if len(days) > 2 else "",
        last_label=_short(days[-1]) if len(days) > 1 else "",
        unit=unit,
    )


LATEST_ROWS = 25
PRESETS = (("7 days", 7), ("14 days", 14), ("30 days", 30), ("90 days", 90))


@portal_page
def usage_page(request: HttpRequest) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    org = ctx.organization
    error = ""
    try:
        span = date_range_parse(request.GET.get("from"), request.GET.get("to"))
    except BadRange as exc:
        # The page still renders (the last two weeks), with the error on the form and a 400 to say the input was refused.
        error = str(exc)
        span = date_range_parse(None, None)
    today = date_range_parse(None, None).end
    live = span.end >= today
    # One view of the database for the whole page, the live feed's cursor first: the socket then catches up on
    # exactly the rows these totals and this list do not hold (usage.selectors.FeedCursor).
    with read_snapshot():
        cursor = usage_feed_cursor() if live else None
        by_day = usage_summary(organization_id=org.pk, span=span, group_by="day")
        by_model = usage_summary(organization_id=org.pk, span=span, group_by="model")
        by_key = usage_summary(organization_id=org.pk, span=span, group_by="key")
        latest = usage_latest(organization_id=org.pk, span=span, limit=LATEST_ROWS)
    # The limiter's own windows and counters, as the billing page shows them (portal.allowances): never a second count.
    allowances = allowances_for(org.pk, org.plan, now=timezone.now())
    return render_portal(
        request,
        "usage/usage.html",
        {
            "nav": "usage",
            "span": span,
            "range_error": error,
            "earliest_day": EARLIEST_DAY,
            "latest_day": LATEST_DAY,
            "totals": by_day.totals,
            "requests_chart": bar_chart(by_day.rows, metric="requests", unit="requests"),
            "tokens_chart": bar_chart(by_day.rows, metric="total_tokens", unit="tokens"),
            "by_model": by_model.rows,
            "by_key": by_key.rows,
            "latest": latest,
            "allowances": allowances,
            "warnings": [a for a in allowances if a.is_near],  # the banner of portal/_limit_banners.html
            "plan": org.plan,
            "presets": [(label, DateRange(today - timedelta(days=days - 1), today)) for label, days in PRESETS],
            "live": live,
            "live_cursor": str(cursor) if cursor is not None else "",
        },
        status=400 if error else 200,
    )


_TOTALS: dict[str, serializers.Field] = {
    name: serializers.IntegerField() for name in ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens")
}
SUMMARY_SCHEMA = inline_serializer(
    "UsageSummary",
    {
        "organization": serializers.CharField(),
        "from": serializers.DateField(),
        "to": serializers.DateField(),
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


class UsageSummaryAPI(PortalAPIView):
    """Requests and tokens of a date range (UTC days, both ends included), grouped by day, model or key."""

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "from",
                OpenApiTypes.DATE,
                OpenApiParameter.QUERY,
                required=False,
                description="first day; default: 13 days before `to`",
            ),
            OpenApiParameter(
                "to", OpenApiTypes.DATE, OpenApiParameter.QUERY, required=False, description="last day; default: today (UTC)"
            ),
            OpenApiParameter(
                "group_by", OpenApiTypes.STR, OpenApiParameter.QUERY, required=False, enum=list(GROUP_BYS), default="day"
            ),
            ORG_PARAMETER,
        ],
        responses=SUMMARY_SCHEMA,
        operation_id="usage_summary",
    )
    def get(self, request: Request) -> Response:
        ctx = self.portal(request)
        group_by = request.query_params.get("group_by") or "day"
        if group_by not in GROUP_BYS:
            raise ValidationError({"group_by": [f"one of {', '.join(GROUP_BYS)}"]})
        try:
            span = date_range_parse(request.query_params.get("from"), request.query_params.get("to"))
        except BadRange as exc:
            raise ValidationError({"detail": str(exc)}) from None
        summary = usage_summary(organization_id=ctx.organization.pk, span=span, group_by=group_by)
        return Response(
            {
                "organization": ctx.organization.slug,
                "from": span.start.isoformat(),
                "to": span.end.isoformat(),
                "group_by": group_by,
                "totals": summary.totals.as_dict(),
                "rows": [row.as_dict(group_by) for row in summary.rows],
            }
        )
