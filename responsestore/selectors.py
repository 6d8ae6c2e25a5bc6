"""Reading one stored response: one query on the primary key, within its organization and the retention period."""

from __future__ import annotations

import json
from datetime import datetime

from responsestore.models import StoredResponse
from responsestore.services import COLUMNS, StoredResponseRecord


def stored_response_get(*, response_id: str, organization_id: int, newer_than: datetime | None) -> StoredResponseRecord | None:
    """The organization's stored response, or None: another organization's id is as unknown as a made-up one."""
    rows = StoredResponse.objects.filter(pk=response_id, organization_id=organization_id)
    if newer_than is not None:
        rows = rows.filter(created_at__gte=newer_than)
    values = rows.values_list(*COLUMNS).first()
    return StoredResponseRecord(*values) if values is not None else None


def conversation_of(record: StoredResponseRecord) -> list[tuple[str, str]]:
    """The stored conversation as (role, text) turns, the answer last."""
    return [(role, text) for role, text in json.loads(record.conversation)]
