"""Incremental server-sent-events parsing of upstream bytes, and SSE framing of our own events."""

from __future__ import annotations

import re
from dataclasses import dataclass

# One line terminator: CRLF, LF or a lone CR (all three are legal in SSE).
_EOL = re.compile(rb"\r\n?|\n")
_BOM = b"\xef\xbb\xbf"
_CR = 0x0D
_COLON = 0x3A


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: str


class SSEParser:
    """Turns arbitrary network reads into complete events; keeps no limit on line or event size.

    `feed_data` is the relay's path: the data of each complete event as raw bytes (its data lines joined, not
    decoded: the router's JSON is parsed from bytes), the event names dropped (a router's events are all data).
    `feed` is the same parse with the events' names and their data decoded as UTF-8.

    The common read, several complete `data: {...}` events and nothing else, is split with bytes operations
    (one split on the blank lines, one slice per event); anything else (CR line ends, named events, several data
    lines, an event begun in an earlier read) goes line by line.
    """

    __slots__ = ("_buf", "_scan", "_data", "_event", "_at_start", "_names")

    def __init__(self) -> None:
        self._buf = bytearray()
        # Where the next terminator search starts, so a huge line fed in small reads is
        # scanned once rather than once per read.
        self._scan = 0
        # Raw data-line values of the event being read; decoded only once the event is
        # complete, so a multibyte character split across reads decodes correctly.
        self._data: list[bytes | bytearray] = []
        self._event: str | None = None
        self._at_start = True
        # The names of the named events of the current read, by their index in it (`feed` only).
        self._names: dict[int, str] = {}

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        return self._decoded(self.feed_data(chunk))

    def close(self) -> list[SSEEvent]:
        """Ends the stream: a last line or event that arrived without its terminator is flushed."""
        return self._decoded(self.close_data())

    def _decoded(self, datas: list[bytes]) -> list[SSEEvent]:
        names = self._names
        events = [SSEEvent(names.get(i), data.decode("utf-8", "replace")) for i, data in enumerate(datas)]
        names.clear()
        return events

    def feed_data(self, chunk: bytes) -> list[bytes]:
        """The data of every event completed by this read, undecoded."""
        out: list[bytes] = []
        if not chunk:
            return out
        self._names.clear()
        buf = self._buf
        buf += chunk
        if self._at_start:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                return out  # could still be a byte-order mark; wait for more
            if buf.startswith(_BOM):
                del buf[: len(_BOM)]
            self._at_start = False
        if not self._data and self._event is None and b"\r" not in buf:
            # At an event boundary, LF line ends only: cut at the last blank line; every event before it is complete.
            # The buffered rest holds no LF unless the previous read left complete lines in it (_scan is then 0).
            end = buf.rfind(b"\n\n", max(self._scan - 1, 0))
            if end != -1:
                whole = bytes(buf[:end])
                del buf[: end + 2]
                self._blocks(whole, out)
                self._scan = 0 if b"\n" in buf else len(buf)
                return out
        self._lines(out)
        return out

    def close_data(self) -> list[bytes]:
        """`close`, undecoded."""
        out: list[bytes] = []
        self._names.clear()
        self._lines(out)  # complete lines a read left behind, if any
        buf = self._buf
        if buf:
            self._line(buf.rstrip(b"\r"), out)
        self._line(b"", out)
        buf.clear()
        self._scan = 0
        self._at_start = True
        return out

    def _blocks(self, whole: bytes, out: list[bytes]) -> None:
        # `whole` is complete lines followed by a blank line: split on the blank lines, each piece is the lines of
        # one event (or of none: comments, blank runs), dispatched at its end.
        for block in whole.split(b"\n\n"):
            if b"\n" not in block:
                if block[:5] == b"data:":
                    out.append(block[6:] if block[5:6] == b" " else block[5:])
                    continue
                if block[:1] == b":":
                    continue  # a comment, typically a keep-alive
            for line in block.split(b"\n"):
                self._line(line, out)
            self._line(b"", out)

    def _lines(self, out: list[bytes]) -> None:
        buf = self._buf
        end = len(buf)
        line_start = 0
        pos = self._scan
        while True:
            m = _EOL.search(buf, pos)
            if m is None:
                break
            eol, pos = m.span()
            if pos == end and pos - eol == 1 and buf[eol] == _CR:
                break  # a CR at the very end may be the first half of a CRLF split across reads
            self._line(buf[line_start:eol], out)
            line_start = pos
        if line_start:
            del buf[:line_start]
        self._scan = len(buf) - 1 if buf.endswith(b"\r") else len(buf)

    def _line(self, line: bytes | bytearray, out: list[bytes]) -> None:
        if not line:
            if self._data:
                data = self._data
                out.append(bytes(data[0]) if len(data) == 1 else b"\n".join(data))
                if self._event is not None:
                    self._names[len(out) - 1] = self._event
                self._data = []
            self._event = None
            return
        if line[0] == _COLON:
            return  # a comment, typically a keep-alive
        if line[:5] == b"data:":
            # The common case, first: one data line per router chunk.
            self._data.append(line[6:] if line[5:6] == b" " else line[5:])
            return
        colon = line.find(b":")
        if colon == -1:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace") or None
        # `id` and `retry` mean nothing for a single upstream call; other fields are ignored by the SSE rules.


def format_sse(data: str, event: str | None = None) -> bytes:
    """One SSE frame; data with line breaks becomes several `data:` lines, as the format requires."""
    if "\n" in data or "\r" in data:
        lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        body = "".join(f"data: {line}\n" for line in lines)
    else:
        body = f"data: {data}\n"
    if event is not None:
        body = f"event: {event}\n{body}"
    return f"{body}\n".encode("utf-8", "replace")
