"""The limiter's own Redis wire for the two calls every /v1 request makes (the admission and the settle script).

redis-py spent more CPU per call than the scripts' whole Python side: the command packed and encoded argument by
argument, a connection taken from and given back to the pool, the retry wrapper, a task per socket write for its
timeout (`asyncio.wait_for`). Here a call is bytes packed once per principal and window (gateway/limits/layout.py)
with only what changes formatted in, written on a connection that carries every call of the process, pipelined:
Redis answers one connection's commands in the order they were sent, so replies (parsed by hiredis, as redis-py
does) are matched to callers first in, first out, and many calls share one read at load.

- Two lanes, each its own connection: calls that check money (1.5 s to answer) and the rest (0.3 s), so a stall that
  times the short ones out never breaks the long ones.
- Timeouts: the oldest unanswered call of a lane past its deadline means Redis stopped answering that connection:
  it is closed and every call waiting on it fails (TimeoutError, ConnectionError), as redis-py drops a connection
  that timed out; the next call connects again. A reply lost that way may still have been applied in Redis, as
  before. A caller that is cancelled leaves its reply to be read and dropped: the connection stays in step.
- Connecting: the URL as redis-py reads it (redis://, rediss://, unix://, user, password, database), AUTH and
  SELECT pipelined; one connect in flight per lane, bounded by the lane's timeout.
- EVALSHA, and after NOSCRIPT (a restarted or flushed Redis) SCRIPT LOAD then the same call again: NOSCRIPT means
  nothing ran, so sending it again is safe.
The counters read for headers (peek's MGET) go here too, in order after the process's settlements; the rare calls
(the money seeding, the retried slot releases) stay on redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ResponseError

__all__ = ["Line", "Wire", "arg", "bulk", "command", "script_sha"]


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def arg(value: int | str | bytes) -> bytes:
    """One argument as RESP: integers in decimal, text in UTF-8 (as redis-py's encoder)."""
    if isinstance(value, bytes):
        return bulk(value)
    if isinstance(value, str):
        return bulk(value.encode())
    return bulk(b"%d" % value)


def command(*args: int | str | bytes) -> bytes:
    """A whole command, packed."""
    return b"*%d\r\n" % len(args) + b"".join(arg(a) for a in args)


def script_sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


class Line(asyncio.Protocol):
    """One connection: commands written in order, replies handed to their callers in the same order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.loop = loop
        self.timeout_s = timeout_s
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        # (deadline on the loop's clock, the caller's future), oldest first.
        self.waiting: collections.deque[tuple[float, asyncio.Future[Any]]] = collections.deque()
        self.closed = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []  # calls made in this turn of the event loop, written together at its end
        self.idle: asyncio.Future[None] | None = None  # set when the last call waiting is answered (Wire.drain)

    # --- asyncio.Protocol --------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        try:
            while True:
                reply = self.reader.gets()
                if reply is False:
                    return
                if not waiting:  # a reply nobody asked for: the stream is out of step
                    self.abort(ConnectionError("Redis sent a reply that was not asked for"))
                    return
                future = waiting.popleft()[1]
                if not future.done():  # a caller that gave up (cancelled) leaves its reply to be dropped
                    future.set_result(reply)
                if not waiting and self.idle is not None:
                    self._set_idle()
        except hiredis.ProtocolError as exc:
            self.abort(ConnectionError(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(ConnectionError(f"Redis connection lost ({exc.__class__.__name__})" if exc else "Redis connection closed"))

    # --- calls -----------------------------------------------------------------------------------------
    def send(self, packed: bytes, *, now: bool = False) -> asyncio.Future[Any]:
        """Write one packed command; its future gets the reply (a hiredis.ReplyError for an error reply). `now`:
        on the socket before this returns (with the calls queued before it), not at the end of the loop's turn."""
        future = self.loop.create_future()
        if self.closed or self.transport is None:
            future.set_exception(ConnectionError("Redis connection closed"))
            return future
        self.waiting.append((self.loop.time() + self.timeout_s, future))
        if self._out:
            self._out.append(packed)
            if now:
                self._flush()
        elif now:
            self.transport.write(packed)
        else:
            # Written once this turn of the event loop is over, with every other call made in it: one send for
            # many requests at load (the syscall cost more than the rest of a call).
            self._out = [packed]
            self.loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = self.loop.call_at(self.waiting[0][0], self._check_deadline)
        return future

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and not self.closed and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _check_deadline(self) -> None:
        self._watchdog = None
        if not self.waiting or self.closed:
            return
        deadline = self.waiting[0][0]
        if deadline <= self.loop.time():
            self.abort(TimeoutError(f"Redis did not answer within {self.timeout_s}s"))
        else:
            self._watchdog = self.loop.call_at(deadline, self._check_deadline)

    def abort(self, exc: Exception) -> None:
        """Close the connection; every call waiting fails: the oldest with `exc`, the others as closed."""
        if self.waiting and not self.closed:
            first = self.waiting.popleft()[1]
            if not first.done():
                first.set_exception(exc)
                first.exception()  # retrieved: its caller may have been cancelled meanwhile
        self._fail_all(ConnectionError(f"Redis connection closed ({exc})"))
        if self.transport is not None:
            self.transport.abort()

    def _set_idle(self) -> None:
        idle, self.idle = self.idle, None
        if idle is not None and not idle.done():
            idle.set_result(None)

    def _fail_all(self, exc: Exception) -> None:
        self.closed = True
        self._set_idle()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self.waiting:
            future = self.waiting.popleft()[1]
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: a cancelled caller's future is not there to be awaited

    def close(self) -> None:
        self._fail_all(ConnectionError("Redis connection closed"))
        if self.transport is not None:
            self.transport.close()


class Wire:
    """The connections of one event loop: a lane for the money calls and one for the rest."""

    def __init__(self, url: str, *, timeouts: tuple[float, float], scripts: dict[str, str]) -> None:
        self.url = url
        self.timeouts = timeouts  # (plain, money)
        self.scripts = scripts  # sha -> source, loaded after a NOSCRIPT
        self.lines: list[Line | None] = [None, None]
        self._connecting: list[asyncio.Future[Line] | None] = [None, None]

    def ready(self, money: bool) -> Line | None:
        """The lane's connection if it is open (a call can be written at once), else None."""
        line = self.lines[money]
        return line if line is not None and not line.closed else None

    async def line(self, money: bool) -> Line:
        line = self.lines[money]
        if line is not None and not line.closed:
            return line
        pending = self._connecting[money]
        if pending is None:
            pending = self._connecting[money] = asyncio.ensure_future(self._connect(money))
            pending.add_done_callback(lambda _: self._connecting.__setitem__(money, None))
        # Shielded: a caller cancelled while it waits does not cancel the connect the others wait for.
        return await asyncio.shield(pending)

    async def _connect(self, money: bool) -> Line:
        loop = asyncio.get_running_loop()
        timeout_s = self.timeouts[money]
        params: dict[str, Any] = dict(parse_url(self.url))
        kind = params.pop("connection_class", None)
        line = Line(loop, timeout_s)
        async with asyncio.timeout(timeout_s):
            if kind is UnixDomainSocketConnection:
                await loop.create_unix_connection(lambda: line, path=params["path"])
            else:
                host, port = params.get("host", "localhost"), int(params.get("port", 6379))
                ssl_context = None
                if kind is SSLConnection:
                    ssl_context = SSLConnection(**params).ssl_context.get()  # redis-py's reading of the ssl_* options
                await loop.create_connection(lambda: line, host, port, ssl=ssl_context)
            handshake: list[bytes] = []
            password, username = params.get("password"), params.get("username")
            if password is not None or username is not None:
                handshake.append(command("AUTH", *([username] if username else []), password or ""))
            if params.get("db"):
                handshake.append(command("SELECT", int(params["db"])))
            try:
                for reply in [await f for f in [line.send(c) for c in handshake]]:
                    if isinstance(reply, hiredis.ReplyError):
                        raise ResponseError(str(reply))
            except BaseException:
                line.close()
                raise
        self.lines[money] = line
        return line

    async def call(self, packed: bytes, *, money: bool, script: str = "") -> Any:
        """Send one packed command (an EVALSHA of `script`, its sha) and return its reply; ResponseError for an error."""
        line = await self.line(money)
        reply = await line.send(packed)
        if isinstance(reply, hiredis.ReplyError):
            reply = await self.after_error(line, reply, packed, script)
        return reply

    async def after_error(self, line: Line, error: hiredis.ReplyError, packed: bytes, script: str) -> Any:
        """NOSCRIPT (nothing ran): load the script and send the call again; any other error reply is raised."""
        if script and str(error).startswith("NOSCRIPT"):
            loaded = await line.send(command("SCRIPT", "LOAD", self.scripts[script]))
            if isinstance(loaded, hiredis.ReplyError):
                raise ResponseError(str(loaded))
            reply = await line.send(packed)
            if not isinstance(reply, hiredis.ReplyError):
                return reply
            error = reply
        raise ResponseError(str(error))

    async def drain(self) -> None:
        """Wait until every call written has its answer (each lane's timeout bounds it)."""
        for line in self.lines:
            if line is not None and line.waiting and not line.closed:
                if line.idle is None:
                    line.idle = line.loop.create_future()
                await asyncio.shield(line.idle)

    def close(self) -> None:
        for index, line in enumerate(self.lines):
            if line is not None:
                line.close()
            self.lines[index] = None
