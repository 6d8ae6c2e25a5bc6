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
    """Turns arbitrary network reads into complete events; keeps no limit on line or event size."""

    __slots__ = ("_buf", "_scan", "_data", "_event", "_at_start")

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

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        if not chunk:
            return events
        buf = self._buf
        buf += chunk
        if self._at_start:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                return events  # could still be a byte-order mark; wait for more
            if buf.startswith(_BOM):
                del buf[: len(_BOM)]
            self._at_start = False
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
            self._line(buf[line_start:eol], events)
            line_start = pos
        if line_start:
            del buf[:line_start]
        self._scan = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        return events

    def close(self) -> list[SSEEvent]:
        """Ends the stream: a last line or event that arrived without its terminator is flushed."""
        events: list[SSEEvent] = []
        buf = self._buf
        if buf:
            self._line(buf.rstrip(b"\r"), events)
        self._line(b"", events)
        buf.clear()
        self._scan = 0
        self._at_start = True
        return events

    def _line(self, line: bytes | bytearray, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                data = b"\n".join(self._data).decode("utf-8", "replace")
                events.append(SSEEvent(self._event, data))
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
