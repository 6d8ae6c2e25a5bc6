"""The stream relay: router bytes in, customer bytes out, and what the answer came to. Pure and synchronous.

No I/O, no clock, no awaits: the pipeline's async shell (gateway/pipeline.py `_relay`) reads the router, keeps the
deadline, writes to the client and records usage; everything between one network read and the bytes to write is
here, so the golden stream tests (tests/translate/test_translate_streams.py) drive this very code with recorded
router streams cut at every read size.

One network read becomes one write: the frames of every event that arrived in the read are joined, not written
one per token.
"""

from __future__ import annotations

from gateway.errors import GatewayError, UpstreamError
from gateway.surfaces import AnswerContext, StreamWriter
from gateway.translate.common import StopMatcher, Usage, estimate_tokens
from gateway.translate.router import RouterDelta, RouterStreamReader
from gateway.translate.sse import SSEParser


class Delivered:
    """The text a stream delivered, and how much of it the router's last usage report already counts.

    A stream is billed the router's count where one came, plus an estimate of the text delivered after it:
    never less than the router reported, and text it had not yet counted is not free. The pieces are kept,
    not their estimate: appending is all the per-token path pays, the estimate runs once, only when needed.
    """

    __slots__ = ("pieces", "counted")

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.counted = 0  # pieces covered by the router's last usage report

    def add(self, text: str) -> None:
        if text:
            self.pieces.append(text)

    def reported(self) -> None:
        self.counted = len(self.pieces)

    def awaits_usage(self, reader: RouterStreamReader) -> bool:
        """Text went out that no usage report covers yet, and the router has not ended: its count may be next."""
        return len(self.pieces) > self.counted and not reader.saw_done

    def usage(self, reader: RouterStreamReader, prompt_tokens_estimate: int) -> Usage:
        reported = reader.usage
        after = self.pieces[self.counted :] if reported is not None else self.pieces
        extra = estimate_tokens("".join(after)) if after else 0
        if reported is None:
            return Usage(prompt_tokens_estimate, extra, estimated=True)
        if not extra:
            return reported
        return Usage(reported.prompt_tokens, reported.completion_tokens + extra, estimated=True)


class StreamRelay:
    """One streamed answer. Call `start`, then `feed` per network read until `ended` or the router's end of file,
    then `close` (at end of file) and `finish`; `fail` when the network or the clock ends it instead.

    `failure` is set (and the stream ends) when the router reports an error in-band or stops before its end; the
    bytes already produced for that read are still returned, so the customer gets every token before the error.
    """

    __slots__ = (
        "writer",
        "prompt_tokens_estimate",
        "parser",
        "reader",
        "stops",
        "billed",
        "ended",
        "failure",
        "finish_reason",
        "stop_sequence",
    )

    def __init__(self, writer: StreamWriter, *, stops: list[str] | None, ctx: AnswerContext) -> None:
        self.writer = writer
        self.prompt_tokens_estimate = ctx.prompt_tokens_estimate
        self.parser = SSEParser()
        self.reader = RouterStreamReader()
        self.stops = StopMatcher(stops)
        self.billed = Delivered()
        self.ended = False
        self.failure: GatewayError | None = None
        self.finish_reason: str | None = None
        self.stop_sequence: str | None = None

    def start(self) -> bytes:
        return self.writer.start()

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to write for one network read (often b"" mid-event)."""
        return self._events(self.parser.feed_data(chunk))

    def close(self) -> bytes:
        """The router's end of file: an event it did not terminate with a blank line still counts."""
        return b"" if self.ended else self._events(self.parser.close_data())

    def finish(self) -> bytes:
        """The rest of the answer (text held back by a possible stop sequence) and the last frame, or the error frame
        when the router stopped before its end (no finish reason, no [DONE])."""
        if self.failure is not None:
            return self.writer.error(self.failure)
        if self.finish_reason is None and not self.reader.saw_finish and not self.reader.saw_done:
            return self.fail(UpstreamError("the upstream model server ended the stream early"))
        out = []
        tail = self.stops.flush()
        if tail:
            self.billed.add(tail)
            out.append(self.writer.delta(RouterDelta(tail, None, None, False, None), tail))
        if self.finish_reason is None and self.stops.matched is not None:  # a stop found only when flushing
            self.finish_reason, self.stop_sequence = "stop_sequence", self.stops.matched
        self.finish_reason = self.finish_reason or self.reader.finish_reason or "stop"
        out.append(self.writer.finish(finish_reason=self.finish_reason, stop_sequence=self.stop_sequence, usage=self.usage()))
        self.ended = True
        return b"".join(out)

    def fail(self, err: GatewayError) -> bytes:
        self.failure = err
        self.ended = True
        return self.writer.error(err)

    def usage(self) -> Usage:
        """What the answer is billed: the router's count, plus an estimate of text delivered after it."""
        return self.billed.usage(self.reader, self.prompt_tokens_estimate)

    @property
    def text(self) -> str:
        return "".join(self.billed.pieces)

    def awaits_usage(self) -> bool:
        return self.billed.awaits_usage(self.reader)

    def settle_feed(self, chunk: bytes) -> bool:
        """After the client left: one network read of the rest, for the router's usage only; True once waiting is
        over (the count came, the stream ended, or more answer came, so the count was not due)."""
        for data in self.parser.feed_data(chunk):
            delta = self.reader.feed_data(data)
            if delta is None:
                continue
            if delta.usage is not None:
                self.billed.reported()  # covers all that was delivered (and this chunk, if it had text)
            if delta.done or delta.usage is not None or delta.text:
                return True
        return False

    def _events(self, datas: list[bytes]) -> bytes:
        out: list[bytes] = []
        reader, writer = self.reader, self.writer
        text_frame = writer.text_frame
        stops = self.stops if self.stops.active else None
        pieces = self.billed.pieces
        for data in datas:
            delta = reader.feed_data(data)
            if delta is None:
                continue
            if reader.upstream_error is not None:  # a router reporting a failure in-band
                self.failure = UpstreamError("the upstream model server failed mid-stream")
                self.ended = True
                break
            if delta.done:
                self.ended = True
                break
            text = delta.text
            if text:
                if stops is not None:
                    text, self.stop_sequence = stops.feed(text)
                if text:
                    pieces.append(text)  # Delivered.add
            if delta.usage is not None:
                self.billed.reported()  # the router's count covers everything up to this chunk
            if text_frame is not None:
                if text:
                    out.append(text_frame(text))
            else:
                frame = writer.delta(delta, text)
                if frame:
                    out.append(frame)
            if self.stop_sequence is not None:
                self.finish_reason = "stop_sequence"
                self.ended = True
                break
        return b"".join(out) if len(out) != 1 else out[0]
