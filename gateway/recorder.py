"""Usage events and request logs leave the request through this queue and reach the database in batches.

What waits in memory is bounded, for a database that is away: request log rows beyond
PORTAL_REQUEST_LOG_QUEUE_MAX are dropped, oldest first, and counted; usage rows (what bills) are never
dropped: at PORTAL_USAGE_QUEUE_MAX of them the gateway refuses new billable requests with a 503 before they
reach a router (`usage_backlog_full`, checked by the pipeline) until the writer brings the backlog down
again, and it alarms first, at 80 %, with a critical log line and the `gateway_usage_backlog_state` gauge.
Requests already running when the bound is reached still record their rows, so it can be passed by the
number of requests in flight. Requests refused without an authenticated principal (bad or missing keys,
unknown routes) write no row: they are counted in `gateway_anonymous_refusals_total` by route and
status, and one in PORTAL_ANONYMOUS_LOG_SAMPLE of them (0: none) still leaves its row. A server error is
not a refusal: its row is written whoever sent it (the id is what the customer quotes to support, and a
crash may have happened after authentication, with the principal lost on the way out).

Stored `/v1/responses` answers (gateway/stored_responses.py) leave through the same writer, after each round's
usage rows, in batches of their own (a failure there never holds usage back). While queued or being written they
are found here by id, so the process that made one reads it back at once. Their queue is bounded in characters
(PORTAL_RESPONSES_QUEUE_MAX_MB): at the bound, requests that would store one are refused with 503, so none is lost.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

from django.conf import settings

from gateway.db import db_call
from gateway.metrics import ANONYMOUS_REFUSALS, REQUEST_LOGS_DROPPED, USAGE_WRITE_FAILURES, route_label
from responsestore.services import StoredResponseRecord, stored_responses_write
from usage.live import apublish_usage_events
from usage.services import RequestLogRecord, UsageRecord, usage_record_batch

log = logging.getLogger("gateway.recorder")

BATCH_SIZE = 500
RESPONSES_BATCH_CHARS = 8 * 1024 * 1024  # stored responses are up to a few MB each: a batch stops growing here
MAX_BACKOFF_S = 5.0
SETTLE_MARGIN_S = 2.0  # beyond the usage grace, for closing the upstream and settling the reservation
WARN_FRACTION = 0.8  # of the usage bound: alarm here, before billable requests are refused
REARM_FRACTION = 0.5  # the alarm sounds again once the backlog went below this and rose again
LOG_TRIM_FRACTION = 0.9  # over the log bound, the oldest rows go down to this: one trim per tenth, not per row

OK, WARNING, FULL = 0, 1, 2  # the backlog states, as gateway_usage_backlog_state reports them


def _setting(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


class UsageRecorder:
    """Buffers rows in memory; a background task writes them. A failed batch is kept and retried,
    and the write is idempotent on the request id, so a retry never doubles a row."""

    def __init__(
        self,
        *,
        usage_max: int | None = None,
        log_max: int | None = None,
        anonymous_sample: int | None = None,
        responses_max_chars: int | None = None,
    ) -> None:
        self.usage_max = usage_max if usage_max is not None else _setting("PORTAL_USAGE_QUEUE_MAX", 100_000)
        self.log_max = log_max if log_max is not None else _setting("PORTAL_REQUEST_LOG_QUEUE_MAX", 100_000)
        self.anonymous_sample = anonymous_sample if anonymous_sample is not None else _setting("PORTAL_ANONYMOUS_LOG_SAMPLE", 0)
        self._usage_warn_at = max(1, int(self.usage_max * WARN_FRACTION))
        self._usage_rearm_at = int(self.usage_max * REARM_FRACTION)
        self.backlog_state = OK
        self._anonymous_seen = 0
        self.logs_dropped = 0
        self._usage: list[UsageRecord] = []
        self._logs: list[RequestLogRecord] = []
        self.responses_max_chars = (
            responses_max_chars if responses_max_chars is not None else _setting("PORTAL_RESPONSES_QUEUE_MAX_MB", 256) << 20
        )
        self._responses: dict[str, StoredResponseRecord] = {}  # queued, by response id, oldest first
        self._responses_writing: dict[str, StoredResponseRecord] = {}  # this round's, until each batch committed
        self._responses_chars = 0  # of both
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_lock: asyncio.Lock | None = None
        self.write_failures = 0
        self.rows_written = 0
        self._writing = 0
        self._writing_usage = 0
        self._publishing: set[asyncio.Future[None]] = set()
        self._settling: set[asyncio.Future[None]] = set()

    @property
    def depth(self) -> int:
        """Rows not yet known to be in the database: buffered, or in a write under way."""
        return len(self._usage) + len(self._logs) + self._writing + len(self._responses) + len(self._responses_writing)

    def ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._wake = asyncio.Event()
            self._flush_lock = asyncio.Lock()
            # A context of its own: started from some request, its log lines must not carry that request's id.
            self._task = loop.create_task(self._run(), name="gateway-usage-writer", context=contextvars.Context())

    @property
    def usage_backlog(self) -> int:
        """Usage rows not yet known to be in the database."""
        return len(self._usage) + self._writing_usage

    @property
    def usage_backlog_full(self) -> bool:
        """New billable requests are refused (UsageBacklogFull) while this holds; O(1), for the request path."""
        return self.backlog_state == FULL

    def record(self, *, usage: UsageRecord | None, log_row: RequestLogRecord) -> None:
        if usage is not None:
            self._usage.append(usage)
            # The whole backlog, rows in a write attempt included: with the connection pool a failing write holds
            # its rows for up to PORTAL_DB_POOL_TIMEOUT_MS, and counting the queue alone let requests past the bound.
            if self.usage_backlog >= self._usage_warn_at:
                self._check_backlog()
        elif log_row.organization_id is None and log_row.status < 500 and not self._keeps_anonymous(log_row):
            return  # refused without a principal: counted, not written
        self._logs.append(log_row)
        if len(self._logs) > self.log_max:
            self._drop_oldest_logs()
        if self._wake is not None and len(self._logs) >= BATCH_SIZE:
            self._wake.set()

    def store_response(self, record: StoredResponseRecord) -> None:
        self._responses[record.response_id] = record
        self._responses_chars += record.size

    def pending_response(self, response_id: str) -> StoredResponseRecord | None:
        """A stored response not yet known to be in the database: queued, or in a batch being written."""
        return self._responses.get(response_id) or self._responses_writing.get(response_id)

    def discard_pending_response(self, response_id: str) -> bool:
        """Drop a queued stored response before it is written; False if it is not queued (perhaps being written)."""
        record = self._responses.pop(response_id, None)
        if record is None:
            return False
        self._responses_chars -= record.size
        return True

    async def settled(self) -> None:
        """Returns once the writer's round under way (if any) has ended."""
        if self._flush_lock is None:
            return
        async with self._flush_lock:
            pass

    @property
    def responses_backlog_full(self) -> bool:
        """Requests that would store a response are refused (503) while this holds; O(1), for the request path."""
        return self._responses_chars >= self.responses_max_chars

    def _keeps_anonymous(self, log_row: RequestLogRecord) -> bool:
        """Count a request refused before anyone was authenticated; True for the one in N whose row is sampled."""
        status = str(log_row.status) if 100 <= log_row.status <= 599 else "other"
        ANONYMOUS_REFUSALS.labels(route_label(log_row.path), status).inc()
        if self.anonymous_sample <= 0:
            return False
        self._anonymous_seen += 1
        return self._anonymous_seen % self.anonymous_sample == 0

    def _drop_oldest_logs(self) -> None:
        keep = int(self.log_max * LOG_TRIM_FRACTION)
        dropped = len(self._logs) - keep
        del self._logs[:dropped]
        self.logs_dropped += dropped
        REQUEST_LOGS_DROPPED.inc(dropped)
        log.error(
            "request log queue over its bound of %d rows (database away?): dropped the %d oldest; %d dropped so far",
            self.log_max,
            dropped,
            self.logs_dropped,
        )

    def _check_backlog(self) -> None:
        """Move between ok, warning and full as the usage backlog crosses its thresholds; loud at each step up."""
        backlog = self.usage_backlog
        if backlog >= self.usage_max:
            if self.backlog_state != FULL:
                self.backlog_state = FULL
                log.critical(
                    "usage backlog at its bound of %d rows (the database is not taking writes): refusing billable "
                    "requests with 503 until it drains",
                    self.usage_max,
                )
        elif backlog >= self._usage_warn_at:
            if self.backlog_state == OK:
                log.critical(
                    "usage backlog at %d rows, %d%% of its bound of %d (the database is not taking writes): billable "
                    "requests will be refused at the bound",
                    backlog,
                    int(WARN_FRACTION * 100),
                    self.usage_max,
                )
            if self.backlog_state == FULL:
                log.warning("usage backlog down to %d rows: taking billable requests again", backlog)
            self.backlog_state = WARNING
        elif backlog < self._usage_rearm_at or self.backlog_state == FULL:
            if self.backlog_state == FULL:
                log.warning("usage backlog down to %d rows: taking billable requests again", backlog)
            self.backlog_state = OK

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
                self._writing_usage = len(usage)
                try:
                    await db_call(usage_record_batch, usage=usage, logs=logs)
                except Exception as exc:
                    self._writing = self._writing_usage = 0
                    # Put the batch back in front, in order; it is retried with back-off.
                    self._usage[:0] = usage
                    self._logs[:0] = logs
                    if len(self._logs) > self.log_max:
                        self._drop_oldest_logs()
                    self._check_backlog()
                    self.write_failures += 1
                    USAGE_WRITE_FAILURES.inc()
                    log.error("usage write failed, %d rows kept for retry: %s", self.depth, exc.__class__.__name__)
                    return False
                self._writing = self._writing_usage = 0
                self.rows_written += len(usage) + len(logs)
                if self.backlog_state != OK:
                    self._check_backlog()
                if usage:
                    # The portal's live feed, off the write path: a slow channel layer must not delay writes.
                    task = asyncio.ensure_future(apublish_usage_events(usage))
                    self._publishing.add(task)
                    task.add_done_callback(self._publishing.discard)
            if self._responses:
                return await self._write_responses()
        return True

    async def _write_responses(self) -> bool:
        """This round's stored responses, in batches bounded in rows and characters; under the flush lock."""
        self._responses_writing, self._responses = self._responses, {}
        records = list(self._responses_writing.values())
        start = 0
        while start < len(records):
            end, chars = start, 0
            while (
                end < len(records)
                and end - start < BATCH_SIZE
                and (end == start or chars + records[end].size <= RESPONSES_BATCH_CHARS)
            ):
                chars += records[end].size
                end += 1
            batch = records[start:end]
            try:
                await db_call(stored_responses_write, rows=batch)
            except Exception as exc:
                # Back in front of what was queued meanwhile, in order; retried with back-off like a usage batch.
                self._responses = {**self._responses_writing, **self._responses}
                self._responses_writing = {}
                self.write_failures += 1
                USAGE_WRITE_FAILURES.inc()
                log.error("stored response write failed, %d kept for retry: %s", len(self._responses), exc.__class__.__name__)
                return False
            for record in batch:
                del self._responses_writing[record.response_id]
            self._responses_chars -= chars
            self.rows_written += len(batch)
            start = end
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
                if not (self._usage or self._logs or self._responses):
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
