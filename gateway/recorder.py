"""Usage events and request logs leave the request through this queue and reach the database in batches."""

from __future__ import annotations

import asyncio
import contextvars
import logging

from django.conf import settings

from gateway.db import db_call
from gateway.metrics import USAGE_WRITE_FAILURES
from usage.consumers import apublish_usage_events
from usage.services import RequestLogRecord, UsageRecord, usage_record_batch

log = logging.getLogger("gateway.recorder")

BATCH_SIZE = 500
MAX_BACKOFF_S = 5.0
SETTLE_MARGIN_S = 2.0  # beyond the usage grace, for closing the upstream and settling the reservation


class UsageRecorder:
    """Buffers rows in memory; a background task writes them. A failed batch is kept and retried,
    and the write is idempotent on the request id, so a retry never doubles a row."""

    def __init__(self) -> None:
        self._usage: list[UsageRecord] = []
        self._logs: list[RequestLogRecord] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_lock: asyncio.Lock | None = None
        self.write_failures = 0
        self.rows_written = 0
        self._writing = 0
        self._publishing: set[asyncio.Future[None]] = set()
        self._settling: set[asyncio.Future[None]] = set()

    @property
    def depth(self) -> int:
        """Rows not yet known to be in the database: buffered, or in a write under way."""
        return len(self._usage) + len(self._logs) + self._writing

    def ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._wake = asyncio.Event()
            self._flush_lock = asyncio.Lock()
            # A context of its own: started from some request, its log lines must not carry that request's id.
            self._task = loop.create_task(self._run(), name="gateway-usage-writer", context=contextvars.Context())

    def record(self, *, usage: UsageRecord | None, log_row: RequestLogRecord) -> None:
        if usage is not None:
            self._usage.append(usage)
        self._logs.append(log_row)
        if self._wake is not None and len(self._logs) >= BATCH_SIZE:
            self._wake.set()

    def track(self, task: asyncio.Future[None]) -> None:
        """A task that will record a row shortly (a cancelled stream waiting for its usage): drain() waits for it."""
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _run(self) -> None:
        interval = settings.PORTAL_USAGE_FLUSH_S
        backoff = interval
        assert self._wake is not None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            except TimeoutError:
                pass
            self._wake.clear()
            ok = await self.flush()
            backoff = interval if ok else min(MAX_BACKOFF_S, backoff * 2)

    async def flush(self) -> bool:
        """Write everything buffered now; False when the database refused (the rows stay queued)."""
        assert self._flush_lock is not None
        async with self._flush_lock:
            # What is buffered now, and no more: rows that arrive during the writes wait for the next
            # round. Draining until empty kept the writer busy back to back under steady traffic
            # (batches of a few rows, each paying a transaction and two lookups, the worker thread
            # holding the GIL against the event loop): that cost 2-3 ms per request at one connection.
            pending_usage, pending_logs = len(self._usage), len(self._logs)
            while pending_usage > 0 or pending_logs > 0:
                take_usage, take_logs = min(pending_usage, BATCH_SIZE), min(pending_logs, BATCH_SIZE)
                pending_usage, pending_logs = pending_usage - take_usage, pending_logs - take_logs
                usage, self._usage = self._usage[:take_usage], self._usage[take_usage:]
                logs, self._logs = self._logs[:take_logs], self._logs[take_logs:]
                self._writing = len(usage) + len(logs)
                try:
                    await db_call(usage_record_batch, usage=usage, logs=logs)
                except Exception as exc:
                    self._writing = 0
                    # Put the batch back in front, in order; it is retried with back-off.
                    self._usage[:0] = usage
                    self._logs[:0] = logs
                    self.write_failures += 1
                    USAGE_WRITE_FAILURES.inc()
                    log.error("usage write failed, %d rows kept for retry: %s", self.depth, exc.__class__.__name__)
                    return False
                self._writing = 0
                self.rows_written += len(usage) + len(logs)
                if usage:
                    # The portal's live feed, off the write path: a slow channel layer must not delay writes.
                    task = asyncio.ensure_future(apublish_usage_events(usage))
                    self._publishing.add(task)
                    task.add_done_callback(self._publishing.discard)
        return True

    async def drain(self, *, attempts: int = 5) -> bool:
        """On shutdown: write all that is buffered, retrying a few times."""
        if self._flush_lock is None:
            self._flush_lock = asyncio.Lock()
        if self._settling:
            # Rows still to come from streams whose clients left: each waits at most the usage grace.
            await asyncio.wait(set(self._settling), timeout=settings.PORTAL_CANCEL_USAGE_GRACE_S + SETTLE_MARGIN_S)
        attempt = 0
        while attempt < attempts:
            if await self.flush():
                if not (self._usage or self._logs):
                    return True
                continue  # rows recorded while that round was written (a stream that just ended)
            attempt += 1
            await asyncio.sleep(min(MAX_BACKOFF_S, 0.5 * attempt))
        log.critical("shutting down with %d usage rows unwritten", self.depth)
        return False

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._loop = None


recorder = UsageRecorder()
