"""Stored `/v1/responses` answers on the gateway's side: keeping one, continuing from one, reading and deleting one.

Storing puts no database write on the request path: a finished answer becomes a StoredResponseRecord in the usage
writer's queue (gateway/recorder.py), written with its next round. Reading one back right after it was made works:

- in the process that made it, from the queue itself until the write committed (no wait, no gap: the record stays
  findable while its batch is being written);
- in another process behind the same load balancer, which cannot see that queue, from the database once the
  maker's writer ran (within PORTAL_USAGE_FLUSH_MS): an id of our shape that is not found yet is looked up again,
  a few times with growing pauses, for up to PORTAL_RESPONSES_READ_WAIT_MS before the answer is a 404. Only a
  miss waits (a made-up, deleted or other organization's id costs that wait and a handful of primary-key reads),
  and at most MAX_WAITING misses of a process wait at once: beyond, a miss is a 404 at once, so a flood of
  made-up ids (a continuation refused before admission counts against no limit) cannot multiply the reads.

Every read is one primary-key query within the organization and the retention period, run off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import Error as DatabaseError
from django.utils import timezone

from gateway.db import db_call
from gateway.errors import ResponseNotFound, ResponseStoreFull, ResponseStoreUnavailable
from gateway.recorder import recorder
from gateway.translate.common import ChatMessage, CompletionRequest, invalid_value, json_compact, shown
from gateway.translate.responses import RESPONSE_ID, ResponsesRequest, response_id_for
from responsestore.selectors import conversation_of, stored_response_get
from responsestore.services import StoredResponseRecord, stored_response_delete

if TYPE_CHECKING:
    from gateway.surfaces import AnswerContext

log = logging.getLogger("gateway")

FIRST_LOOK_AGAIN_S = 0.02
MAX_LOOK_AGAIN_S = 0.2
MAX_WAITING = 64  # misses of this process looking again at once
_waiting = 0


def not_found(response_id: str) -> ResponseNotFound:
    return ResponseNotFound(f"Response with id '{shown(response_id)}' not found.")


def _newer_than() -> datetime | None:
    days = settings.PORTAL_RESPONSES_RETENTION_DAYS
    return timezone.now() - timedelta(days=days) if days else None


def _read(response_id: str, organization_id: int, with_turns: bool) -> tuple[StoredResponseRecord, list[ChatMessage]] | None:
    # In the worker thread: the query and, for a continuation, decoding the conversation (up to a megabyte).
    record = stored_response_get(response_id=response_id, organization_id=organization_id, newer_than=_newer_than())
    if record is None:
        return None
    return record, _turns(record) if with_turns else []


def _turns(record: StoredResponseRecord) -> list[ChatMessage]:
    return [ChatMessage(role, text) for role, text in conversation_of(record)]


async def find(
    response_id: str, organization_id: int, *, with_turns: bool = False
) -> tuple[StoredResponseRecord, list[ChatMessage]] | None:
    """The organization's stored response (and its conversation's turns when asked), or None once it is clear there
    is none: at once for an id that is not of our shape or that this process holds for another organization,
    after PORTAL_RESPONSES_READ_WAIT_MS of looking again otherwise (see the module's docstring)."""
    if len(response_id) > 64 or not RESPONSE_ID.fullmatch(response_id):
        return None
    global _waiting
    deadline = time.monotonic() + settings.PORTAL_RESPONSES_READ_WAIT_S
    pause = FIRST_LOOK_AGAIN_S
    waiting = False
    try:
        while True:
            pending = recorder.pending_response(response_id)
            if pending is not None:
                if pending.organization_id != organization_id:
                    return None
                return pending, _turns(pending) if with_turns else []
            try:
                found = await db_call(_read, response_id, organization_id, with_turns)
            except DatabaseError as exc:
                log.warning("reading a stored response failed: %s", exc.__class__.__name__)
                raise ResponseStoreUnavailable(headers={"retry-after": "5"}) from None
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not waiting:
                if _waiting >= MAX_WAITING:
                    return None
                _waiting += 1
                waiting = True
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, MAX_LOOK_AGAIN_S)
    finally:
        if waiting:
            _waiting -= 1


async def delete(response_id: str, organization_id: int) -> bool:
    """Delete the organization's stored response wherever it is (queued here, being written, in the database)."""
    if len(response_id) > 64 or not RESPONSE_ID.fullmatch(response_id):
        return False
    while True:
        pending = recorder.pending_response(response_id)
        if pending is None or pending.organization_id != organization_id:
            break
        if recorder.discard_pending_response(response_id):
            return True  # never written
        await recorder.settled()  # its batch is being written: once that round ends it is in the database, or queued again
    try:
        deleted = await db_call(
            stored_response_delete, response_id=response_id, organization_id=organization_id, newer_than=_newer_than()
        )
    except DatabaseError as exc:
        log.warning("deleting a stored response failed: %s", exc.__class__.__name__)
        raise ResponseStoreUnavailable(headers={"retry-after": "5"}) from None
    if deleted:
        return True
    # Perhaps still on its way from another process: delete it once it arrived.
    if await find(response_id, organization_id) is None:
        return False
    return await delete(response_id, organization_id)


async def prepare(request: CompletionRequest, organization_id: int) -> None:
    """Before the prompt is rendered: prepend the previous response's conversation and apply the storage bounds."""
    assert isinstance(request, ResponsesRequest)
    previous = request.previous_response_id
    if previous is not None:
        found = await find(previous, organization_id, with_turns=True)
        if found is None:
            raise ResponseNotFound(
                f"Previous response with id '{shown(previous)}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        record, turns = found
        limit = settings.PORTAL_RESPONSES_MAX_CHAIN
        if record.depth >= limit:
            raise invalid_value(
                "previous_response_id",
                f"a conversation may hold at most {limit} responses, and this one has {record.depth}; start a new one.",
            )
        request.continue_from(turns, record.depth)
    if request.store or previous is not None:
        limit = settings.PORTAL_RESPONSES_MAX_CONVERSATION_CHARS
        chars = request.conversation_chars()
        if chars > limit:
            hint = "start a new conversation" if previous is not None else "shorten 'input' or send 'store': false"
            raise invalid_value(
                "previous_response_id" if previous is not None else "input",
                f"a stored conversation may hold at most {limit} characters (its turns and instructions), "
                f"and this one has {chars}; {hint}.",
            )
    if request.store and recorder.responses_backlog_full:
        raise ResponseStoreFull(headers={"retry-after": "5"})


def remember(ctx: AnswerContext, *, body_json: str, text: str, status: str) -> None:
    """Queue a finished answer for storing (when its request asked for it); the writer's next round writes it."""
    request = ctx.request
    if not isinstance(request, ResponsesRequest) or not request.store or ctx.organization_id is None:
        return
    turns = [[m.role, m.content] for m in request.messages or ()]
    turns.append(["assistant", text])
    recorder.store_response(
        StoredResponseRecord(
            response_id=response_id_for(ctx.request_id),
            organization_id=ctx.organization_id,
            api_key_id=ctx.api_key_id,
            request_id=ctx.request_id,
            model=ctx.model,
            status=status,
            previous_response_id=request.previous_response_id or "",
            depth=request.depth,
            conversation=json_compact(turns),
            body=body_json,
            created_at=timezone.now(),
        )
    )
