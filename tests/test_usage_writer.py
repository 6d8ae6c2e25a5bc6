"""The usage writer: batches stay whole under steady traffic, and the bulk insert behaves like bulk_create."""

from __future__ import annotations

import gc
import threading

import pytest
from asgiref.sync import async_to_sync
from django.db import DataError, connection
from django.utils import timezone

import gateway.recorder as recorder_module
from billing.models import LedgerEntry
from billing.services import plans_seed_defaults
from gateway.recorder import UsageRecorder
from portal_project.bulk import insert_ignoring_conflicts
from tests.support.live import issue_key
from usage.models import RequestLog, UsageEvent
from usage.services import LOG_COLUMNS, RequestLogRecord, UsageRecord, usage_record_batch


def _rows(prefix: str, n: int, *, organization_id: int, key_id: int) -> list[tuple[UsageRecord, RequestLogRecord]]:
    now = timezone.now()
    return [
        (
            UsageRecord(
                request_id=f"{prefix}{i}",
                organization_id=organization_id,
                api_key_id=key_id,
                alias="m",
                route="chat.completions",
                status="ok",
                http_status=200,
                created_at=now,
                prompt_tokens=3,
                completion_tokens=4,
                total_tokens=7,
            ),
            RequestLogRecord(
                request_id=f"{prefix}{i}",
                method="POST",
                path="/v1/chat/completions",
                status=200,
                created_at=now,
                organization_id=organization_id,
                key_id=key_id,
            ),
        )
        for i in range(n)
    ]


def _receiving_mid_write(monkeypatch, slug: str, early: int, late: int):  # noqa: ANN001, ANN202
    """A recorder holding `early` rows whose first database write receives `late` more (requests answered
    meanwhile); returns the recorder, both row lists and the request ids of each batch written."""
    plans_seed_defaults()
    key = issue_key(slug=slug)
    rec = UsageRecorder()
    early_rows = _rows(f"req_{slug}_early", early, organization_id=key.organization_id, key_id=key.key_id)
    late_rows = _rows(f"req_{slug}_late", late, organization_id=key.organization_id, key_id=key.key_id)
    batches: list[list[str]] = []
    lock = threading.Lock()

    def write_and_receive_more(*, usage: list[UsageRecord], logs: list[RequestLogRecord]) -> None:
        with lock:
            batches.append([u.request_id for u in usage])
            first = len(batches) == 1
        usage_record_batch(usage=usage, logs=logs)
        if first:
            for u, log_row in late_rows:
                rec.record(usage=u, log_row=log_row)

    monkeypatch.setattr(recorder_module, "usage_record_batch", write_and_receive_more)
    for u, log_row in early_rows:
        rec.record(usage=u, log_row=log_row)
    return rec, early_rows, late_rows, batches


@pytest.mark.django_db(transaction=True)
def test_a_flush_writes_what_was_buffered_when_it_began_and_leaves_later_rows_for_the_next_round(monkeypatch) -> None:  # noqa: ANN001
    rec, early, late, batches = _receiving_mid_write(monkeypatch, "writer", 5, 3)

    async def main() -> tuple[bool, int, bool, int]:
        rec.ensure_started()
        try:
            first_ok = await rec.flush()
            depth_after_first = rec.depth
            second_ok = await rec.flush()
            return first_ok, depth_after_first, second_ok, rec.depth
        finally:
            rec.stop()

    first_ok, depth_after_first, second_ok, depth_after_second = async_to_sync(main)()
    gc.collect()  # the worker threads' database connections close now, not at test database teardown
    assert first_ok and second_ok
    # The rows that arrived during the first write were not chased in the same round.
    assert batches == [[u.request_id for u, _ in early], [u.request_id for u, _ in late]]
    assert depth_after_first == 6  # three usage rows and three request logs still buffered
    assert depth_after_second == 0
    assert UsageEvent.objects.count() == 8
    assert RequestLog.objects.count() == 8
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEBIT).count() == 8


@pytest.mark.django_db(transaction=True)
def test_drain_on_shutdown_also_writes_the_rows_recorded_while_it_was_writing(monkeypatch) -> None:  # noqa: ANN001
    rec, early, late, batches = _receiving_mid_write(monkeypatch, "drainer", 2, 2)  # a stream ends during the drain

    drained = async_to_sync(rec.drain)()
    gc.collect()
    assert drained is True
    assert [len(batch) for batch in batches] == [2, 2]
    assert sorted(UsageEvent.objects.values_list("request_id", flat=True)) == sorted(u.request_id for u, _ in early + late)


@pytest.mark.django_db(transaction=True)
def test_the_bulk_insert_skips_rows_already_written_and_takes_null_columns() -> None:
    now = timezone.now()
    rows = [
        ("req_b1", None, "GET", "/v1/models", None, "", 200, 1, "", now),
        ("req_b2", None, "POST", "/v1/messages", "10.0.0.7", "sdk/1.0", 400, 2, "client-7", now),
    ]
    columns = (
        "request_id",
        "organization_id",
        "method",
        "path",
        "client_ip",
        "user_agent",
        "status",
        "duration_ms",
        "client_request_id",
        "created_at",
    )
    assert set(columns) == set(LOG_COLUMNS)
    insert_ignoring_conflicts(RequestLog, columns, rows)
    insert_ignoring_conflicts(RequestLog, columns, [*rows, ("req_b3", None, "GET", "/health", None, "", 200, 0, "", now)])
    stored = {r.request_id: r for r in RequestLog.objects.all()}
    assert sorted(stored) == ["req_b1", "req_b2", "req_b3"]
    assert stored["req_b2"].client_ip == "10.0.0.7"
    assert stored["req_b2"].client_request_id == "client-7"
    assert stored["req_b1"].client_ip is None
    assert stored["req_b1"].created_at == now


@pytest.mark.django_db(transaction=True)
def test_the_end_user_goes_through_the_batch_writer_as_sent() -> None:
    """PostgreSQL's one-array-per-column insert and SQLite's bulk_create alike (`make test-sqlite` runs this too)."""
    plans_seed_defaults()
    key = issue_key(slug="end-users")
    sent = {"req_eu0": "", "req_eu1": "user-42", "req_eu2": "ユーザー ✓", "req_eu3": "u" * 256}
    rows = _rows("req_eu", 4, organization_id=key.organization_id, key_id=key.key_id)
    for usage, _ in rows:
        usage.end_user = sent[usage.request_id]
    usage_record_batch(usage=[u for u, _ in rows], logs=[log_row for _, log_row in rows])
    assert dict(UsageEvent.objects.values_list("request_id", "end_user")) == sent


@pytest.mark.django_db(transaction=True)
def test_a_writer_that_predates_the_end_user_column_still_writes() -> None:
    """A rolling deploy: processes of the previous release insert without the column; the database's default fills it."""
    columns = (
        "request_id",
        "alias",
        "route",
        "status",
        "http_status",
        "created_at",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "estimated",
        "streamed",
        "duration_ms",
        "pool",
        "endpoint_url",
        "error_code",
    )
    row = ("req_old", "m", "chat.completions", "ok", 200, timezone.now(), 1, 2, 3, False, False, 5, "", "", "")
    insert_ignoring_conflicts(UsageEvent, columns, [row])
    with connection.cursor() as cursor:  # not through the ORM, which would fill in the field's own default
        cursor.execute("SELECT end_user FROM usage_usageevent WHERE request_id = %s", ["req_old"])
        assert cursor.fetchone() == ("",)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite does not enforce varchar lengths")
@pytest.mark.django_db(transaction=True)
def test_the_bulk_insert_refuses_a_value_too_long_for_its_column_rather_than_truncating_it() -> None:
    now = timezone.now()
    columns = ("request_id", "method", "path", "status", "created_at", "user_agent", "duration_ms", "client_request_id")
    with pytest.raises(DataError):
        insert_ignoring_conflicts(RequestLog, columns, [("req_long", "POST", "/v1/" + "x" * 400, 200, now, "", 0, "")])
    assert not RequestLog.objects.exists()


# --- what waits in memory is bounded; anonymous refusals are counted, not written ----------------------------------


def _log(
    request_id: str, *, organization_id: int | None, status: int = 401, path: str = "/v1/chat/completions"
) -> RequestLogRecord:
    return RequestLogRecord(request_id=request_id, method="POST", path=path, status=status, created_at=timezone.now(),
                            organization_id=organization_id)  # fmt: skip


def _usage(request_id: str) -> UsageRecord:
    return UsageRecord(request_id=request_id, organization_id=1, api_key_id=1, alias="m", route="chat.completions",
                       status="ok", http_status=200, created_at=timezone.now(), prompt_tokens=3, completion_tokens=4,
                       total_tokens=7)  # fmt: skip


def _anonymous_count(route: str, status: str) -> float:
    from gateway.metrics import registry

    return registry.get_sample_value("gateway_anonymous_refusals_total", {"route": route, "status": status}) or 0.0


def test_requests_refused_before_authentication_are_counted_not_buffered() -> None:
    rec = UsageRecorder(anonymous_sample=0)
    before, before_other = _anonymous_count("chat.completions", "401"), _anonymous_count("other", "404")
    for i in range(1000):
        rec.record(usage=None, log_row=_log(f"anon{i}", organization_id=None))
    rec.record(usage=None, log_row=_log("nope", organization_id=None, status=404, path="/v1/../etc/passwd%00"))
    assert rec.depth == 0
    assert _anonymous_count("chat.completions", "401") - before == 1000
    assert _anonymous_count("other", "404") - before_other == 1  # a client's path never becomes a label
    rec.record(usage=None, log_row=_log("known", organization_id=7, status=404))  # authenticated: a row as before
    assert rec.depth == 1


def test_one_in_n_anonymous_refusals_is_sampled_into_a_row() -> None:
    rec = UsageRecorder(anonymous_sample=100)
    for i in range(1000):
        rec.record(usage=None, log_row=_log(f"anon{i}", organization_id=None))
    assert rec.depth == 10


def test_request_logs_over_their_bound_drop_oldest_first_and_usage_rows_are_never_dropped(caplog) -> None:  # noqa: ANN001
    rec = UsageRecorder(usage_max=1000, log_max=100)
    for i in range(250):
        rec.record(usage=_usage(f"req{i}"), log_row=_log(f"req{i}", organization_id=1, status=200))
    assert rec.usage_backlog == 250  # every billable row kept
    assert len(rec._logs) <= 100 and rec.logs_dropped == 250 - len(rec._logs)
    assert rec._logs[-1].request_id == "req249"  # the newest kept, the oldest gone
    assert "dropped the" in caplog.text


def test_the_usage_backlog_alarms_at_80_percent_refuses_at_the_bound_and_recovers(caplog, monkeypatch) -> None:  # noqa: ANN001
    from gateway import recorder as recorder_module

    rec = UsageRecorder(usage_max=100, log_max=10_000)
    for i in range(79):
        rec.record(usage=_usage(f"a{i}"), log_row=_log(f"a{i}", organization_id=1, status=200))
    assert (rec.backlog_state, rec.usage_backlog_full) == (recorder_module.OK, False)
    rec.record(usage=_usage("a79"), log_row=_log("a79", organization_id=1, status=200))
    assert rec.backlog_state == recorder_module.WARNING and not rec.usage_backlog_full
    assert any(r.levelname == "CRITICAL" and "80% of its bound of 100" in r.getMessage() for r in caplog.records)
    for i in range(80, 100):
        rec.record(usage=_usage(f"a{i}"), log_row=_log(f"a{i}", organization_id=1, status=200))
    assert rec.usage_backlog_full
    assert any(r.levelname == "CRITICAL" and "refusing billable requests" in r.getMessage() for r in caplog.records)
    rec.record(usage=_usage("in-flight"), log_row=_log("in-flight", organization_id=1, status=200))
    assert rec.usage_backlog == 101  # a request already running still records: never dropped

    written: list[int] = []
    monkeypatch.setattr(recorder_module, "usage_record_batch", lambda *, usage, logs: written.append(len(usage)))

    async def flush() -> bool:
        rec.ensure_started()
        try:
            return await rec.flush()
        finally:
            rec.stop()

    assert async_to_sync(flush)() is True
    assert sum(written) == 101 and rec.usage_backlog == 0
    assert (rec.backlog_state, rec.usage_backlog_full) == (recorder_module.OK, False)
    assert "taking billable requests again" in caplog.text
