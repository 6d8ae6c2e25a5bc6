"""Request logs have a retention: `manage.py prune_request_logs` deletes old rows in batches, and only those."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from usage.models import RequestLog, UsageEvent


def _logs(prefix: str, n: int, age: timedelta) -> None:
    at = timezone.now() - age
    RequestLog.objects.bulk_create(
        [RequestLog(request_id=f"{prefix}{i}", method="POST", path="/v1/messages", status=401, created_at=at) for i in range(n)]
    )


@pytest.mark.django_db
def test_prune_deletes_rows_past_the_retention_in_batches_and_is_idempotent(settings) -> None:  # noqa: ANN001
    settings.PORTAL_REQUEST_LOG_RETENTION_DAYS = 30
    _logs("old", 23, timedelta(days=31))
    _logs("edge", 2, timedelta(days=29, hours=23))
    _logs("new", 5, timedelta(minutes=1))
    UsageEvent.objects.create(request_id="old0", alias="m", route="messages", status="ok", http_status=200,
                              created_at=timezone.now() - timedelta(days=400))  # fmt: skip

    out = StringIO()
    call_command("prune_request_logs", "--batch-size", "5", stdout=out)
    assert "deleted 23 request log rows older than 30 days" in out.getvalue()
    assert RequestLog.objects.count() == 7 and not RequestLog.objects.filter(request_id__startswith="old").exists()
    assert UsageEvent.objects.count() == 1  # billing history is not a log

    again = StringIO()
    call_command("prune_request_logs", stdout=again)  # from cron, the next day: nothing left to do
    assert "deleted 0 request log rows" in again.getvalue()

    call_command("prune_request_logs", "--days", "1", stdout=StringIO())
    assert sorted(RequestLog.objects.values_list("request_id", flat=True)) == [f"new{i}" for i in range(5)]


@pytest.mark.django_db
def test_retention_zero_keeps_everything_and_bad_arguments_are_refused(settings) -> None:  # noqa: ANN001
    settings.PORTAL_REQUEST_LOG_RETENTION_DAYS = 0
    _logs("ancient", 3, timedelta(days=3000))
    out = StringIO()
    call_command("prune_request_logs", stdout=out)
    assert "retention is off" in out.getvalue() and RequestLog.objects.count() == 3
    with pytest.raises(CommandError):
        call_command("prune_request_logs", "--days", "-1")
    with pytest.raises(CommandError):
        call_command("prune_request_logs", "--batch-size", "0")
