"""Stored responses: the batch write and its failures, the writer's queue, retention and `manage.py prune_responses`."""

from __future__ import annotations

import asyncio
import gc
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.models import Organization
from apikeys.models import ApiKey
from billing.services import plans_seed_defaults
from gateway import stored_responses
from gateway.recorder import UsageRecorder
from gateway.translate.common import json_compact
from responsestore.models import StoredResponse
from responsestore.selectors import stored_response_get
from responsestore.services import StoredResponseRecord, stored_responses_write
from tests.support.live import IssuedKey, issue_key
from usage.models import UsageEvent
from usage.services import RequestLogRecord, UsageRecord


def issued(slug: str) -> IssuedKey:
    plans_seed_defaults()  # a transactional test's database starts empty, the seeded plans included
    return issue_key(slug=slug)


def record(
    n: int, organization_id: int, api_key_id: int | None, *, age: timedelta = timedelta(0), text: str = "answer"
) -> StoredResponseRecord:
    response_id = f"resp_{n:024x}"
    return StoredResponseRecord(
        response_id=response_id,
        organization_id=organization_id,
        api_key_id=api_key_id,
        request_id=f"req_{n:024x}",
        model="oss-20b",
        status="completed",
        previous_response_id="",
        depth=1,
        conversation=json_compact([["user", "q"], ["assistant", text]]),
        body=json_compact({"id": response_id, "object": "response", "output_text_for_test": text}),
        created_at=timezone.now() - age,
    )


@pytest.mark.django_db(transaction=True)  # foreign keys are checked at commit: no test transaction around it
def test_a_batch_is_written_once_and_a_deleted_organization_or_key_does_not_block_it() -> None:
    keep, gone = issued("keep-org"), issued("gone-org")
    rows = [record(1, keep.organization_id, keep.key_id), record(2, gone.organization_id, gone.key_id)]
    stored_responses_write(rows=rows)
    stored_responses_write(rows=rows)  # a retried batch: nothing doubles
    assert StoredResponse.objects.count() == 2

    ApiKey.objects.filter(pk=keep.key_id).delete()
    Organization.objects.filter(pk=gone.organization_id).delete()  # its stored responses go with it
    assert list(StoredResponse.objects.values_list("pk", "api_key_id")) == [(rows[0].response_id, None)]
    # Rows queued before the deletions: the organization's is dropped, the key's is written without its key.
    late = [record(3, keep.organization_id, keep.key_id), record(4, gone.organization_id, gone.key_id)]
    stored_responses_write(rows=late)
    assert sorted(StoredResponse.objects.values_list("pk", "api_key_id")) == [
        (rows[0].response_id, None),
        (late[0].response_id, None),
    ]


@pytest.mark.django_db
def test_reads_stay_within_the_organization_and_the_retention() -> None:
    mine, other = issued("mine"), issued("other")
    fresh, old = (
        record(1, mine.organization_id, mine.key_id),
        record(2, mine.organization_id, mine.key_id, age=timedelta(days=31)),
    )
    stored_responses_write(rows=[fresh, old])
    cutoff = timezone.now() - timedelta(days=30)
    assert stored_response_get(response_id=fresh.response_id, organization_id=mine.organization_id, newer_than=cutoff) == fresh
    assert stored_response_get(response_id=fresh.response_id, organization_id=other.organization_id, newer_than=cutoff) is None
    assert stored_response_get(response_id=old.response_id, organization_id=mine.organization_id, newer_than=cutoff) is None
    assert stored_response_get(response_id=old.response_id, organization_id=mine.organization_id, newer_than=None) == old


@pytest.mark.django_db(transaction=True)
def test_a_failed_write_keeps_the_responses_findable_and_retries_them(monkeypatch: pytest.MonkeyPatch) -> None:
    key = issued("retry-org")
    writer = UsageRecorder(usage_max=100, log_max=100)
    failing = [True]
    real_write = stored_responses_write

    def flaky(*, rows: list[StoredResponseRecord]) -> None:
        if failing[0]:
            raise ConnectionError("the database went away")
        real_write(rows=rows)

    monkeypatch.setattr("gateway.recorder.stored_responses_write", flaky)
    now = timezone.now()
    usage = UsageRecord(request_id="req_usage", organization_id=key.organization_id, api_key_id=key.key_id, alias="oss-20b",
                        route="responses", status="ok", http_status=200, created_at=now)  # fmt: skip
    outcome: dict[str, Any] = {}

    async def main() -> None:
        writer.ensure_started()
        writer.record(usage=usage, log_row=RequestLogRecord(request_id="req_usage", method="POST", path="/v1/responses",
                                                            status=200, created_at=now, organization_id=key.organization_id))  # fmt: skip
        first, second = record(1, key.organization_id, key.key_id), record(2, key.organization_id, key.key_id)
        writer.store_response(first)
        writer.store_response(second)
        outcome["failed_flush"] = await writer.flush()
        outcome["usage_written"] = await asyncio.to_thread(lambda: UsageEvent.objects.filter(request_id="req_usage").exists())
        outcome["still_pending"] = [writer.pending_response(r.response_id) for r in (first, second)]
        outcome["depth"] = writer.depth
        failing[0] = False
        outcome["retried_flush"] = await writer.flush()
        outcome["after"] = [writer.pending_response(r.response_id) for r in (first, second)]
        outcome["depth_after"] = writer.depth
        outcome["full_after"] = writer.responses_backlog_full
        writer.stop()

    async_to_sync(main)()
    gc.collect()  # the loop's worker threads are gone: close their database connections now
    # Usage rows went first and are not held back by the stored responses' failure.
    assert outcome["failed_flush"] is False and outcome["usage_written"] is True
    assert [r.response_id for r in outcome["still_pending"]] == [f"resp_{1:024x}", f"resp_{2:024x}"]
    assert outcome["depth"] == 2
    assert outcome["retried_flush"] is True and outcome["after"] == [None, None] and outcome["depth_after"] == 0
    assert outcome["full_after"] is False
    assert StoredResponse.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_the_queue_is_bounded_in_characters_and_deleting_a_queued_response_drops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    key = issued("bound-org")
    big = record(1, key.organization_id, key.key_id, text="z" * 5000)
    writer = UsageRecorder(responses_max_chars=big.size * 2)
    monkeypatch.setattr("gateway.stored_responses.recorder", writer)
    outcome: dict[str, Any] = {}

    async def main() -> None:
        writer.ensure_started()
        writer.store_response(big)
        outcome["full_1"] = writer.responses_backlog_full
        writer.store_response(record(2, key.organization_id, key.key_id, text="z" * 5000))
        outcome["full_2"] = writer.responses_backlog_full
        outcome["deleted"] = await stored_responses.delete(big.response_id, key.organization_id)
        outcome["full_after_delete"] = writer.responses_backlog_full
        outcome["other_org"] = await stored_responses.find(f"resp_{2:024x}", key.organization_id + 1)
        outcome["flushed"] = await writer.flush()
        writer.stop()

    async_to_sync(main)()
    gc.collect()  # the loop's worker threads are gone: close their database connections now
    assert (outcome["full_1"], outcome["full_2"], outcome["deleted"], outcome["full_after_delete"]) == (False, True, True, False)
    assert outcome["other_org"] is None and outcome["flushed"] is True
    assert list(StoredResponse.objects.values_list("pk", flat=True)) == [f"resp_{2:024x}"]


@pytest.mark.django_db
def test_prune_deletes_responses_past_the_retention_in_batches_and_is_idempotent(settings: Any) -> None:
    settings.PORTAL_RESPONSES_RETENTION_DAYS = 30
    key = issued("prune-org")
    rows = [record(i, key.organization_id, key.key_id, age=timedelta(days=31)) for i in range(7)]
    rows += [record(100 + i, key.organization_id, key.key_id, age=timedelta(days=29, hours=23)) for i in range(2)]
    rows += [record(200, key.organization_id, key.key_id)]
    stored_responses_write(rows=rows)

    out = StringIO()
    call_command("prune_responses", "--batch-size", "3", stdout=out)
    assert "deleted 7 stored responses older than 30 days" in out.getvalue()
    assert StoredResponse.objects.count() == 3
    again = StringIO()
    call_command("prune_responses", stdout=again)
    assert "deleted 0 stored responses" in again.getvalue()
    call_command("prune_responses", "--days", "1", stdout=StringIO())
    assert list(StoredResponse.objects.values_list("pk", flat=True)) == [f"resp_{200:024x}"]


@pytest.mark.django_db
def test_prune_with_retention_zero_keeps_everything_and_bad_arguments_are_refused(settings: Any) -> None:
    settings.PORTAL_RESPONSES_RETENTION_DAYS = 0
    key = issued("keep-all-org")
    stored_responses_write(rows=[record(1, key.organization_id, key.key_id, age=timedelta(days=3000))])
    out = StringIO()
    call_command("prune_responses", stdout=out)
    assert "retention is off" in out.getvalue() and StoredResponse.objects.count() == 1
    with pytest.raises(CommandError):
        call_command("prune_responses", "--days", "-1")
    with pytest.raises(CommandError):
        call_command("prune_responses", "--batch-size", "0")


@pytest.mark.django_db(transaction=True)
def test_a_miss_looks_again_only_while_few_others_do(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.PORTAL_RESPONSES_READ_WAIT_MS = 300
    settings.PORTAL_RESPONSES_READ_WAIT_S = 0.3
    reads: list[str] = []
    monkeypatch.setattr(stored_responses, "_read", lambda response_id, *_: reads.append(response_id))
    unknown = f"resp_{7:024x}"

    async def looks(max_waiting: int) -> int:
        monkeypatch.setattr(stored_responses, "MAX_WAITING", max_waiting)
        reads.clear()
        assert await stored_responses.find(unknown, 1) is None
        return len(reads)

    async def main() -> tuple[int, int, int]:
        # Not an id of ours: no read at all.
        assert await stored_responses.find("resp_nope", 1) is None and not reads
        return await looks(64), await looks(0), stored_responses._waiting

    waited, not_waited, still_waiting = async_to_sync(main)()
    gc.collect()
    assert waited > 1  # looked again while the writer of another process might still be on its way
    assert not_waited == 1  # too many misses already waiting: one read, then the 404
    assert still_waiting == 0
