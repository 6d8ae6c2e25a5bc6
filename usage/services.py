"""Writing usage events and request logs in batches, idempotently on the request id; closing billing days (the rollups)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta

from django.db import DataError, IntegrityError, transaction
from django.db.models import Count, Model, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import Organization
from apikeys.models import ApiKey
from apikeys.services import apikeys_touch_last_used
from billing.models import ClosedBillingDay, LedgerEntry, UsageDailyRollup
from billing.services import ledger_debits_for_usage
from portal_project.bulk import insert_ignoring_conflicts
from usage.alerts import spend_alert_worker
from usage.models import RequestLog, UsageEvent
from usage.signals import LIMIT_REFUSAL_CODES, limit_refusals_recorded

logger = logging.getLogger("usage")


@dataclass(slots=True)
class UsageRecord:
    request_id: str
    organization_id: int | None
    api_key_id: int | None
    alias: str
    route: str
    status: str
    http_status: int
    created_at: datetime
    pool: str = ""
    endpoint_url: str = ""
    session_id: int | None = None
    streamed: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated: bool = False
    error_code: str = ""
    upstream_latency_ms: int | None = None
    ttfb_ms: int | None = None
    duration_ms: int = 0
    end_user: str = ""  # the customer's end-user id from the request, storable (gateway/pipeline.py end_user_of)
    cost_micros: int = 0  # what the request is billed (the ledger debit's magnitude), priced by the gateway


@dataclass(slots=True)
class RequestLogRecord:
    request_id: str
    method: str
    path: str
    status: int
    created_at: datetime
    organization_id: int | None = None
    client_ip: str | None = None
    user_agent: str = ""
    duration_ms: int = 0
    client_request_id: str = ""
    key_id: int | None = field(default=None)


def usage_record_batch(*, usage: list[UsageRecord], logs: list[RequestLogRecord]) -> None:
    """Write one batch in one transaction; rows already written (a retried batch) are skipped."""
    last_used: dict[int, datetime] = {}
    for log in logs:
        if log.key_id is not None and (log.key_id not in last_used or last_used[log.key_id] < log.created_at):
            last_used[log.key_id] = log.created_at
    # Sorted by request id: two batches holding the same rows (a retry racing a write) then take
    # the unique-index locks in one order and cannot deadlock.
    usage = sorted(usage, key=lambda u: u.request_id)
    logs = sorted(logs, key=lambda log: log.request_id)
    # Organizations this batch may have billed: their spend is checked against their caps once it has committed, in
    # usage.alerts' own thread (never this writer's time).
    billed = {u.organization_id for u in usage if u.organization_id is not None and (u.cost_micros > 0 or u.total_tokens > 0)}
    # Organizations the limiter refused for an allowance: whoever listens (portal/limit_mail.py) is told after commit.
    refused = {
        u.organization_id
        for u in usage
        if u.organization_id is not None and u.status == UsageEvent.Status.ERROR and u.error_code in LIMIT_REFUSAL_CODES
    }
    try:
        with transaction.atomic():
            if billed:
                transaction.on_commit(lambda: spend_alert_worker.notify(billed))
            if refused:
                transaction.on_commit(lambda: _announce_refusals(refused), robust=True)
            insert_ignoring_conflicts(UsageEvent, USAGE_COLUMNS, [_tuple(u, USAGE_COLUMNS) for u in usage])
            insert_ignoring_conflicts(RequestLog, LOG_COLUMNS, [_tuple(log, LOG_COLUMNS) for log in logs])
            # Debits for ok and cancelled rows with tokens (ledger_debits_for_usage picks them),
            # committed with their events; idempotent on the request id like the rows themselves.
            ledger_debits_for_usage(rows=usage)
            if last_used:
                apikeys_touch_last_used(last_used=last_used)
    except (IntegrityError, DataError):
        # A key or organization deleted while its rows waited in the queue, or a value the database
        # refuses: one bad row must not block the batch forever. Write row by row, detaching rows
        # from what is gone and dropping (with an error line) a row the database will never take.
        rows: list[UsageEvent | RequestLog] = [*(UsageEvent(**_values(u)) for u in usage), *(_log_row(log) for log in logs)]
        for row in rows:
            _save_detached(row)
        # From the records, not the detached rows: a deleted key must not spare its organization
        # the bill. Debits of deleted organizations are skipped; a failure here retries the batch.
        with transaction.atomic():
            ledger_debits_for_usage(rows=usage)
            if billed:
                transaction.on_commit(lambda: spend_alert_worker.notify(billed))
            if refused:
                transaction.on_commit(lambda: _announce_refusals(refused), robust=True)
        if last_used:
            apikeys_touch_last_used(last_used=last_used)  # keys that are gone are simply not matched


def _announce_refusals(organization_ids: set[int]) -> None:
    # send_robust: a receiver that raises is logged by Django and returned, never raised into the writer.
    limit_refusals_recorded.send_robust(sender=UsageEvent, organization_ids=organization_ids)


USAGE_COLUMNS = tuple(f.name for f in fields(UsageRecord))  # the UsageEvent attnames, all of them
LOG_COLUMNS = tuple(f.name for f in fields(RequestLogRecord) if f.name != "key_id")


def _tuple(record: UsageRecord | RequestLogRecord, columns: tuple[str, ...]) -> tuple[object, ...]:
    return tuple(getattr(record, name) for name in columns)


def _values(record: UsageRecord | RequestLogRecord) -> dict[str, object]:
    # Shallow, unlike dataclasses.asdict, which deep-copies every value: this runs per row.
    return {f.name: getattr(record, f.name) for f in fields(record)}


def _log_row(log: RequestLogRecord) -> RequestLog:
    values = _values(log)
    values.pop("key_id")
    return RequestLog(**values)


def _save_detached(row: UsageEvent | RequestLog) -> None:
    # Typed as any model: a union of the two classes would make bulk_create([row]) a union of two signatures.
    model: type[Model] = type(row)
    try:
        with transaction.atomic():
            model._default_manager.bulk_create([row], ignore_conflicts=True)
    except DataError as exc:
        logger.error(
            "dropped a %s row the database refuses (%s) request_id=%s", model.__name__, exc.__class__.__name__, row.request_id
        )
    except IntegrityError:
        # Detach the row only from what is gone: a deleted key's usage still belongs to its organization.
        if row.organization_id is not None and not Organization.objects.filter(pk=row.organization_id).exists():
            row.organization_id = None
        if isinstance(row, UsageEvent) and row.api_key_id is not None and not ApiKey.objects.filter(pk=row.api_key_id).exists():
            row.api_key_id = None
        with transaction.atomic():
            model._default_manager.bulk_create([row], ignore_conflicts=True)


PRUNE_BATCH_SIZE = 5_000


def request_logs_prune(*, before: datetime, batch_size: int = PRUNE_BATCH_SIZE) -> int:
    """Delete request log rows created before `before`, a batch at a time; returns how many went.

    Each batch is its own short statement (no long transaction, no lock on the table, writers carry on), and
    running it again, or twice at once from cron, only finds less to delete. Usage events are billing
    history and are never pruned here.
    """
    deleted = 0
    while True:
        ids = list(RequestLog.objects.filter(created_at__lt=before).values_list("pk", flat=True)[:batch_size])
        if not ids:
            return deleted
        count, _ = RequestLog.objects.filter(pk__in=ids).delete()
        deleted += count


# --- Closing billing days: usage rolled up per organization, day and alias, with its cost from the ledger ------------
# Here rather than in billing.services: the rollups read usage rows, and billing sits below usage (docs/ARCHITECTURE.md).

ROLLUP_COUNTS = [
    "requests",
    "ok_requests",
    "error_requests",
    "cancelled_requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_micros",
]


@dataclass(frozen=True, slots=True)
class ClosedDay:
    day: date
    rollup_rows: int


def billing_days_close(*, days: Iterable[date]) -> list[ClosedDay]:
    """Roll each day's usage and debits up and mark the day closed; closing a day again rewrites the same rows.

    Consecutive days are aggregated together (one GROUP BY over usage and one over the ledger
    per run of days), so a backfill of a month does not scan the usage table thirty times.
    """
    closed: list[ClosedDay] = []
    for first, last in _consecutive_runs(sorted(set(days))):
        closed.extend(_close_run(first, last))
    return closed


def _consecutive_runs(days: list[date]) -> list[tuple[date, date]]:
    runs: list[tuple[date, date]] = []
    for day in days:
        if runs and runs[-1][1] + timedelta(days=1) == day:
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


def utc_midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


@transaction.atomic
def _close_run(first: date, last: date) -> list[ClosedDay]:
    start, end = utc_midnight(first), utc_midnight(last + timedelta(days=1))
    utc_day = TruncDate("created_at", tzinfo=UTC)
    usage = (
        UsageEvent.objects.filter(created_at__gte=start, created_at__lt=end, organization__isnull=False)
        .annotate(day=utc_day)
        .values("organization_id", "day", "alias")
        .annotate(
            requests=Count("id"),
            ok_requests=Count("id", filter=Q(status=UsageEvent.Status.OK)),
            error_requests=Count("id", filter=Q(status=UsageEvent.Status.ERROR)),
            cancelled_requests=Count("id", filter=Q(status=UsageEvent.Status.CANCELLED)),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            total=Sum("total_tokens"),
        )
        .order_by()
    )
    debits = (
        LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEBIT, created_at__gte=start, created_at__lt=end)
        .annotate(day=utc_day)
        .values("organization_id", "day", "alias")
        .annotate(debited=Sum("amount_micros"))
        .order_by()
    )
    now = timezone.now()
    rollups: dict[tuple[int, date, str], UsageDailyRollup] = {}
    for group in usage:
        key = (group["organization_id"], group["day"], group["alias"])
        rollups[key] = UsageDailyRollup(
            organization_id=key[0],
            day=key[1],
            alias=key[2],
            requests=group["requests"],
            ok_requests=group["ok_requests"],
            error_requests=group["error_requests"],
            cancelled_requests=group["cancelled_requests"],
            prompt_tokens=group["prompt"] or 0,
            completion_tokens=group["completion"] or 0,
            total_tokens=group["total"] or 0,
            computed_at=now,
        )
    for debit in debits:
        key = (debit["organization_id"], debit["day"], debit["alias"])
        if key not in rollups:
            # A debit whose event lost its organization (its key was deleted while queued): the
            # money is still owed, so the cost shows even with no requests beside it.
            rollups[key] = UsageDailyRollup(organization_id=key[0], day=key[1], alias=key[2], computed_at=now)
        rollups[key].cost_micros = -(debit["debited"] or 0)
    UsageDailyRollup.objects.bulk_create(
        list(rollups.values()),
        update_conflicts=True,
        unique_fields=["organization", "day", "alias"],
        update_fields=[*ROLLUP_COUNTS, "computed_at"],
    )
    # Groups that existed when the day was last closed and are gone now (their events were detached).
    UsageDailyRollup.objects.filter(day__gte=first, day__lte=last).exclude(computed_at=now).delete()
    per_day: dict[date, int] = {}
    for _, day, _ in rollups:
        per_day[day] = per_day.get(day, 0) + 1
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    ClosedBillingDay.objects.bulk_create(
        [ClosedBillingDay(day=day, closed_at=now, rollup_rows=per_day.get(day, 0)) for day in days],
        update_conflicts=True,
        unique_fields=["day"],
        update_fields=["closed_at", "rollup_rows"],
    )
    return [ClosedDay(day=day, rollup_rows=per_day.get(day, 0)) for day in days]
