"""Writing stored responses in batches (off the request path), deleting one, and pruning those past retention."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from datetime import datetime

from django.db import DataError, IntegrityError, transaction

from accounts.models import Organization
from apikeys.models import ApiKey
from portal_project.bulk import insert_ignoring_conflicts
from responsestore.models import StoredResponse

logger = logging.getLogger("responsestore")


@dataclass(slots=True)
class StoredResponseRecord:
    """A stored response on its way to the database (or read back from it); the fields are StoredResponse's attnames."""

    response_id: str
    organization_id: int
    api_key_id: int | None
    request_id: str
    model: str
    status: str
    previous_response_id: str
    depth: int
    conversation: str  # compact JSON [[role, text], ...], the answer last
    body: str  # the response object's JSON, as sent
    created_at: datetime

    @property
    def size(self) -> int:
        """Characters this record holds (ASCII JSON, so also its bytes): what the in-memory queue is bounded by."""
        return len(self.conversation) + len(self.body)


COLUMNS = tuple(f.name for f in fields(StoredResponseRecord))


def stored_responses_write(*, rows: list[StoredResponseRecord]) -> None:
    """Insert a batch in one statement; rows already written (a retried batch) are skipped.

    A row whose organization was deleted while it waited is dropped (its content went with the organization),
    one whose key was deleted is written without it, and a row the database refuses is dropped with an error
    line: one bad row must not hold the rest back for ever.
    """
    rows = sorted(rows, key=lambda r: r.response_id)  # one lock order for two batches holding the same rows
    try:
        with transaction.atomic():
            insert_ignoring_conflicts(StoredResponse, COLUMNS, [tuple(getattr(r, c) for c in COLUMNS) for r in rows])
    except (IntegrityError, DataError):
        for row in rows:
            _write_one(row)


def _write_one(row: StoredResponseRecord) -> None:
    values = {c: getattr(row, c) for c in COLUMNS}
    try:
        with transaction.atomic():
            StoredResponse.objects.bulk_create([StoredResponse(**values)], ignore_conflicts=True)
        return
    except DataError as exc:
        logger.error(
            "dropped a stored response the database refuses (%s) response_id=%s", exc.__class__.__name__, row.response_id
        )
        return
    except IntegrityError:
        pass
    if not Organization.objects.filter(pk=row.organization_id).exists():
        logger.warning("dropped a stored response of a deleted organization response_id=%s", row.response_id)
        return
    if row.api_key_id is not None and not ApiKey.objects.filter(pk=row.api_key_id).exists():
        values["api_key_id"] = None
    with transaction.atomic():
        StoredResponse.objects.bulk_create([StoredResponse(**values)], ignore_conflicts=True)


def stored_response_delete(*, response_id: str, organization_id: int, newer_than: datetime | None) -> bool:
    """Delete one organization's stored response; False when there is none (or it is past retention)."""
    rows = StoredResponse.objects.filter(pk=response_id, organization_id=organization_id)
    if newer_than is not None:
        rows = rows.filter(created_at__gte=newer_than)
    deleted, _ = rows.delete()
    return deleted > 0


PRUNE_BATCH_SIZE = 1_000  # rows hold up to a few MB each: smaller batches than the request log's


def stored_responses_prune(*, before: datetime, batch_size: int = PRUNE_BATCH_SIZE) -> int:
    """Delete stored responses created before `before`, a batch at a time; returns how many went.

    Each batch is its own short statement, so writers carry on, and running it again, or twice at once from
    cron, only finds less to delete.
    """
    deleted = 0
    while True:
        ids = list(StoredResponse.objects.filter(created_at__lt=before).values_list("pk", flat=True)[:batch_size])
        if not ids:
            return deleted
        count, _ = StoredResponse.objects.filter(pk__in=ids).delete()
        deleted += count
