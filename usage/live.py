"""Publishing written usage rows to the live usage feed: one channel-layer group per organization.

The gateway's usage writer calls `apublish_usage_events(rows)` on its event loop
after a batch is in the database; each organization's open usage pages (portal.consumers.UsageFeedConsumer) get
their new rows a moment later. Here, below the gateway, so the writer publishes without importing the portal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from channels.layers import get_channel_layer

log = logging.getLogger("usage.live")

MESSAGE_TYPE = "usage.events"  # handled by portal.consumers.UsageFeedConsumer.usage_events
SEND_TIMEOUT_S = 2.0


def usage_group(organization_id: int) -> str:
    return f"usage.org.{organization_id}"


def event_payload(row: Any) -> dict[str, Any]:
    """What a page needs of one row; `row` is a usage.services.UsageRecord or a UsageEvent (same field names)."""
    return {
        "request_id": row.request_id,
        "created_at": row.created_at.isoformat(),
        "route": row.route,
        "model": row.alias,
        "status": row.status,
        "http_status": row.http_status,
        "error_code": row.error_code,
        "streamed": row.streamed,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "total_tokens": row.total_tokens,
        "cost_micros": row.cost_micros,
        "duration_ms": row.duration_ms,
        "api_key_id": row.api_key_id,
        "end_user": row.end_user,
    }


def _messages(rows: Iterable[Any]) -> dict[int, dict[str, Any]]:
    by_org: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        if row.organization_id is not None:
            by_org.setdefault(row.organization_id, []).append(event_payload(row))
    return {org_id: {"type": MESSAGE_TYPE, "events": events} for org_id, events in by_org.items()}


async def apublish_usage_events(rows: Iterable[Any]) -> None:
    """Send written usage rows to their organizations' live pages: one message per organization and batch. A feed
    that cannot be reached is logged and skipped: it must never fail the usage write, nor hold it up long."""
    messages = _messages(rows)
    if messages:
        await _send(messages)


async def _send(messages: dict[int, dict[str, Any]]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    for org_id, message in messages.items():
        try:
            await asyncio.wait_for(layer.group_send(usage_group(org_id), message), timeout=SEND_TIMEOUT_S)
        except Exception as exc:
            log.warning("live usage feed not sent for organization %s: %s", org_id, exc.__class__.__name__)
