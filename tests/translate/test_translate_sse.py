"""SSEParser and format_sse: framing rules, reads split anywhere, line endings, comments, UTF-8."""

from __future__ import annotations

import random
import re

from gateway.translate.sse import SSEEvent, SSEParser, format_sse


def parse(*reads: bytes, close: bool = True) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for read in reads:
        events.extend(parser.feed(read))
    if close:
        events.extend(parser.close())
    return events


def parse_bytewise(raw: bytes) -> list[SSEEvent]:
    return parse(*(raw[i : i + 1] for i in range(len(raw))))


def test_one_read_may_hold_several_events() -> None:
    assert parse(b"data: a\n\ndata: b\n\ndata: c\n\n", close=False) == [
        SSEEvent(None, "a"),
        SSEEvent(None, "b"),
        SSEEvent(None, "c"),
    ]


def test_an_event_split_at_every_possible_point_parses_the_same() -> None:
    raw = b'event: x\r\ndata: {"k": 1}\r\n\r\ndata: two\n\n'
    expected = [SSEEvent("x", '{"k": 1}'), SSEEvent(None, "two")]
    for cut in range(len(raw) + 1):
        assert parse(raw[:cut], raw[cut:], close=False) == expected, cut
    assert parse_bytewise(raw) == expected


def test_event_is_not_emitted_before_its_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\n") == [SSEEvent(None, "a")]


def test_crlf_line_endings() -> None:
    assert parse(b"data: a\r\n\r\ndata: b\r\n\r\n", close=False) == [SSEEvent(None, "a"), SSEEvent(None, "b")]


def test_mixed_crlf_and_lf_line_endings() -> None:
    raw = b"data: a\r\n\ndata: b\n\r\ndata: c\r\ndata: d\n\n"
    expected = [SSEEvent(None, "a"), SSEEvent(None, "b"), SSEEvent(None, "c\nd")]
    assert parse(raw, close=False) == expected
    assert parse_bytewise(raw) == expected


def test_lone_cr_line_endings() -> None:
    raw = b"data: a\r\rdata: b\rdata: c\r\r"
    # The last CR could still be the first half of a CRLF, so that event waits for more or for close.
    assert parse(raw, close=False) == [SSEEvent(None, "a")]
    assert parse(raw) == [SSEEvent(None, "a"), SSEEvent(None, "b\nc")]
    assert parse(raw + b"data: d\r\r", close=False) == [SSEEvent(None, "a"), SSEEvent(None, "b\nc")]


def test_cr_at_the_end_of_a_read_waits_for_a_possible_lf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []  # CRLF is one line end, not a line end plus a blank line
    assert parser.feed(b"\r") == []
    assert parser.feed(b"\n") == [SSEEvent(None, "a")]


def test_comment_lines_are_skipped() -> None:
    raw = b": keep-alive\n\n:\n\ndata: a\n: in between\ndata: b\n\n: trailing\n\n"
    assert parse(raw) == [SSEEvent(None, "a\nb")]


def test_multiple_data_lines_join_with_newline() -> None:
    assert parse(b"data: line one\ndata: line two\ndata: three\n\n") == [SSEEvent(None, "line one\nline two\nthree")]


def test_data_with_or_without_the_space_after_the_colon() -> None:
    assert parse(b"data:a\n\ndata: b\n\ndata:  c\n\n") == [
        SSEEvent(None, "a"),
        SSEEvent(None, "b"),
        SSEEvent(None, " c"),  # only the first space belongs to the framing
    ]


def test_empty_data_line_is_an_event_with_empty_data() -> None:
    assert parse(b"data:\n\ndata\n\n") == [SSEEvent(None, ""), SSEEvent(None, "")]


def test_event_without_data_is_not_dispatched_and_its_name_does_not_leak() -> None:
    assert parse(b"event: ping\n\ndata: a\n\n") == [SSEEvent(None, "a")]


def test_event_name_and_unknown_fields() -> None:
    assert parse(b"id: 7\nretry: 100\nevent: message_start\nfoo: bar\ndata: x\n\n") == [SSEEvent("message_start", "x")]


def test_multibyte_utf8_split_across_reads_decodes() -> None:
    raw = "data: héllo 世界 🎉\n\n".encode()
    assert parse_bytewise(raw) == [SSEEvent(None, "héllo 世界 🎉")]
    emoji = raw.index("🎉".encode())
    assert parse(raw[: emoji + 2], raw[emoji + 2 :]) == [SSEEvent(None, "héllo 世界 🎉")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert parse(b"data: a\xffb\n\n") == [SSEEvent(None, "a\ufffdb")]


def test_byte_order_mark_at_stream_start_is_dropped_even_when_split() -> None:
    assert parse(b"\xef\xbb", b"\xbfdata: a\n\n") == [SSEEvent(None, "a")]
    assert parse(b"\xef\xbb\xbfdata: a\n\n") == [SSEEvent(None, "a")]


def test_close_flushes_an_event_without_its_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n\ndata: last\n") == [SSEEvent(None, "a")]
    assert parser.close() == [SSEEvent(None, "last")]


def test_close_flushes_a_last_line_without_its_terminator() -> None:
    assert parse(b"data: [DONE]") == [SSEEvent(None, "[DONE]")]
    assert parse(b"data: x\r") == [SSEEvent(None, "x")]


def test_close_with_nothing_pending_returns_nothing() -> None:
    parser = SSEParser()
    parser.feed(b"data: a\n\n")
    assert parser.close() == []
    assert SSEParser().close() == []


def test_no_line_length_cap() -> None:
    payload = b"x" * 3_000_000
    raw = b"data: " + payload + b"\n\n"
    parser = SSEParser()
    events: list[SSEEvent] = []
    for i in range(0, len(raw), 4096):
        events.extend(parser.feed(raw[i : i + 4096]))
    assert len(events) == 1
    assert events[0].data == payload.decode()


def test_empty_read_is_harmless() -> None:
    parser = SSEParser()
    assert parser.feed(b"") == []
    assert parser.feed(b"data: a\n\n") == [SSEEvent(None, "a")]


def test_format_sse_data_only() -> None:
    assert format_sse('{"a":1}') == b'data: {"a":1}\n\n'


def test_format_sse_named_event() -> None:
    assert format_sse('{"type":"ping"}', "ping") == b'event: ping\ndata: {"type":"ping"}\n\n'


def test_format_sse_splits_line_breaks_into_data_lines_and_round_trips() -> None:
    framed = format_sse("one\ntwo\r\nthree", "x")
    assert framed == b"event: x\ndata: one\ndata: two\ndata: three\n\n"
    assert parse(framed) == [SSEEvent("x", "one\ntwo\nthree")]


def test_format_sse_encodes_utf8() -> None:
    assert format_sse("é") == "data: é\n\n".encode()


def _reference(raw: bytes) -> list[SSEEvent]:
    """The SSE rules line by line, the whole stream at once and closed: what any way of cutting it must give."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    events: list[SSEEvent] = []
    data: list[bytes] = []
    name: str | None = None
    for line in [*re.split(rb"\r\n|\r|\n", raw), b""]:
        if not line:
            if data:
                events.append(SSEEvent(name, b"\n".join(data).decode("utf-8", "replace")))
            data, name = [], None
            continue
        if line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace") or None
    return events


_PIECES = (b"data: ", b"data:", b"event: x", b"event:", b"id: 1", b": c", b"\n", b"\n\n", b"\r", b"\r\n", b"{}", b"a")
_PIECES += (b"\xc3\xa9", b"\xe2\x82", b"\xef\xbb\xbf", b"dat", b"a: b", b" ", b'data: {"k":1}\n\n')


def test_random_streams_cut_anywhere_parse_as_the_rules_say() -> None:
    # The bytes fast path (a read of complete `data:` events) and the line-by-line one meet at every cut.
    rng = random.Random(15)
    for _ in range(20_000):
        raw = b"".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 24)))
        cuts = sorted(rng.sample(range(len(raw) + 1), min(len(raw) + 1, rng.randint(0, 6))))
        reads = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        assert parse(*reads) == _reference(raw), reads


def test_feed_data_gives_each_event_s_data_undecoded() -> None:
    parser = SSEParser()
    assert parser.feed_data(b': keep-alive\n\ndata: {"a":"\xc3\xa9"}\n\nevent: x\ndata: \xe2\x82\n\ndata: b\n') == [
        b'{"a":"\xc3\xa9"}',
        b"\xe2\x82",
    ]
    assert parser.feed_data(b"data: c\n\n") == [b"b\nc"]
    assert parser.close_data() == []


def test_complete_lines_left_after_the_last_event_are_kept_for_the_next_read_and_for_close() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n\ndata: b\ndata: c") == [SSEEvent(None, "a")]
    assert parser.close() == [SSEEvent(None, "b\nc")]
    parser = SSEParser()
    assert parser.feed(b"data: a\n\ndata: b\n") == [SSEEvent(None, "a")]
    assert parser.feed(b"data: c\r\n\r\n") == [SSEEvent(None, "b\nc")]
