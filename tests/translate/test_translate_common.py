"""Token estimates, Usage, and stop strings in whole answers and across stream chunks."""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.translate.common import (
    StopMatcher,
    Usage,
    cut_at_stop,
    estimate_tokens,
    json_bytes,
    json_compact,
    json_text,
    loads_exact,
)


# The estimate's accuracy against real tokenizers is tested in test_translate_tokens.py; here, only the floor it
# keeps from the old characters / 4 rule (which undercounted CJK by four: "世界" is two tokens, not one).
@pytest.mark.parametrize(
    ("text", "at_least"),
    [("", 0), ("a", 1), ("abc", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100), ("x" * 401, 101), ("世界", 2)],
)
def test_estimate_tokens_is_never_below_a_quarter_of_the_characters(text: str, at_least: int) -> None:
    assert estimate_tokens(text) >= at_least
    assert (estimate_tokens(text) == 0) == (text == "")


def test_usage_total_is_the_sum() -> None:
    assert Usage(12, 30, False).total_tokens == 42
    assert Usage(0, 0, True).total_tokens == 0


def feed_all(matcher: StopMatcher, chunks: list[str]) -> list[tuple[str, str | None]]:
    return [matcher.feed(chunk) for chunk in chunks]


def test_no_stops_is_a_passthrough() -> None:
    matcher = StopMatcher([])
    chunk = "anything <|im_end|>"
    text, stop = matcher.feed(chunk)
    assert text is chunk and stop is None
    assert matcher.flush() == ""
    assert StopMatcher(None).feed("x") == ("x", None)


def test_empty_stop_strings_are_ignored() -> None:
    assert StopMatcher([""]).feed("abc") == ("abc", None)
    assert cut_at_stop("abc", [""]) == ("abc", None)


def test_stop_inside_one_chunk_cuts_it() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("Hello END world") == ("Hello ", "END")
    assert matcher.matched == "END"


def test_stop_split_across_three_chunks() -> None:
    matcher = StopMatcher(["END"])
    assert feed_all(matcher, ["abc E", "N", "D xyz"]) == [("abc ", None), ("", None), ("", "END")]


def test_later_chunks_after_a_match_return_nothing() -> None:
    matcher = StopMatcher(["END"])
    matcher.feed("xEND")
    assert matcher.feed("more") == ("", None)
    assert matcher.flush() == ""


def test_held_text_is_released_once_it_cannot_start_a_stop() -> None:
    matcher = StopMatcher(["END"])
    assert feed_all(matcher, ["abc EN", "O", "UGH"]) == [("abc ", None), ("ENO", None), ("UGH", None)]


def test_only_the_possible_stop_prefix_is_held() -> None:
    matcher = StopMatcher(["</s>"])
    assert matcher.feed("a</") == ("a", None)
    assert matcher.feed("b") == ("</b", None)


def test_text_that_merely_ends_with_a_stop_prefix_is_released_at_flush() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("THE EN") == ("THE ", None)
    assert matcher.flush() == "EN"
    assert matcher.matched is None


def test_stop_at_the_very_start_yields_nothing() -> None:
    assert StopMatcher(["\n\n"]).feed("\n\nrest") == ("", "\n\n")


def test_of_several_stops_the_earliest_wins() -> None:
    assert StopMatcher(["world", "lo"]).feed("hello world") == ("hel", "lo")
    assert cut_at_stop("hello world", ["world", "lo"]) == ("hel", "lo")


def test_a_longer_stop_that_began_earlier_wins_over_a_shorter_one_completed_first() -> None:
    matcher = StopMatcher(["abcd", "bc"])
    assert feed_all(matcher, ["xab", "c", "d"]) == [("x", None), ("", None), ("", "abcd")]
    assert cut_at_stop("xabcd", ["abcd", "bc"]) == ("x", "abcd")


def test_the_shorter_stop_wins_once_the_longer_one_cannot_complete() -> None:
    matcher = StopMatcher(["abcd", "bc"])
    assert feed_all(matcher, ["xab", "c", "e"]) == [("x", None), ("", None), ("a", "bc")]


def test_flush_cuts_at_a_stop_that_was_held_behind_a_longer_candidate() -> None:
    matcher = StopMatcher(["abcd", "bc"])
    assert matcher.feed("xabc") == ("x", None)
    assert matcher.flush() == "a"
    assert matcher.matched == "bc"


def test_stops_starting_at_the_same_place_the_shorter_wins() -> None:
    assert StopMatcher(["abc", "ab"]).feed("xabc") == ("x", "ab")
    assert cut_at_stop("xabc", ["abc", "ab"]) == ("x", "ab")


def test_cut_at_stop_without_a_match_returns_the_text() -> None:
    assert cut_at_stop("hello", ["x", "yz"]) == ("hello", None)
    assert cut_at_stop("hello", []) == ("hello", None)


def test_streamed_cut_equals_whole_cut_for_any_chunking() -> None:
    rng = random.Random(20240611)
    alphabet = "ab\nc"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        matcher = StopMatcher(stops)
        out: list[str] = []
        matched = None
        i = 0
        while i < len(text) and matched is None:
            step = rng.randint(1, 5)
            emitted, matched = matcher.feed(text[i : i + step])
            out.append(emitted)
            i += step
        if matched is None:
            out.append(matcher.flush())
            matched = matcher.matched
        assert ("".join(out), matched) == cut_at_stop(text, stops), (text, stops)


# --- the matcher against a naive reference, and its cost ----------------------------------------------------------------


def _naive_earliest(text: str, stops: list[str]) -> tuple[int, str | None]:
    best, best_stop = -1, None
    for stop in stops:
        i = text.find(stop)
        if i != -1 and (best == -1 or i < best or (i == best and len(stop) < len(best_stop))):
            best, best_stop = i, stop
    return best, best_stop


def naive_cut(text: str, stops: list[str]) -> tuple[str, str | None]:
    """The earliest stop wins; at the same position the shorter one."""
    i, stop = _naive_earliest(text, [s for s in stops if s])
    return (text, None) if stop is None else (text[:i], stop)


class NaiveStopMatcher:
    """The matcher as it was before the automaton: every stop looked at on every chunk. The reference."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> tuple[str, str | None]:
        if not self._stops:
            return text, None
        if self.matched is not None:
            return "", None
        buf = self._held + text
        found, stop = _naive_earliest(buf, self._stops)
        n = len(buf)
        hold_from = found if stop is not None else n
        for s in self._stops:
            for start in range(max(0, n - len(s) + 1), hold_from):
                if s.startswith(buf[start:]):
                    hold_from = start
                    break
        if stop is not None and hold_from >= found:
            self.matched, self._held = stop, ""
            return buf[:found], stop
        self._held = buf[hold_from:]
        return buf[:hold_from], None

    def flush(self) -> str:
        held, self._held = self._held, ""
        if not held or self.matched is not None:
            return ""
        found, stop = _naive_earliest(held, self._stops)
        if stop is None:
            return held
        self.matched = stop
        return held[:found]


_ALPHABET = "ab\nc<|"
stop_lists = st.lists(st.text(_ALPHABET, min_size=0, max_size=6), min_size=0, max_size=6)


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(text=st.text(_ALPHABET, max_size=60), stops=stop_lists, cuts=st.lists(st.integers(0, 60), max_size=12))
def test_the_matcher_agrees_with_the_naive_reference_chunk_by_chunk(text: str, stops: list[str], cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    matcher, reference = StopMatcher(stops), NaiveStopMatcher(stops)
    for chunk in chunks:
        assert matcher.feed(chunk) == reference.feed(chunk), (text, stops, chunks)
        assert matcher.matched == reference.matched
    assert matcher.flush() == reference.flush()
    assert matcher.matched == reference.matched
    assert cut_at_stop(text, stops) == naive_cut(text, stops)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(text=st.text(max_size=80), stops=st.lists(st.text(min_size=1, max_size=8), max_size=5), data=st.data())
def test_any_text_streamed_in_any_chunks_is_cut_as_the_whole_text_is(text: str, stops: list[str], data: st.DataObject) -> None:
    # Stops taken from the text itself, so they often match, overlap and share prefixes.
    for _ in range(data.draw(st.integers(0, 3))):
        a = data.draw(st.integers(0, len(text)))
        stops.append(text[a : a + data.draw(st.integers(1, 6))])
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(text)), max_size=10))) | {0, len(text)})
    matcher = StopMatcher(stops)
    out, matched = [], None
    for a, b in zip(cuts, cuts[1:], strict=False):
        emitted, matched = matcher.feed(text[a:b])
        out.append(emitted)
        if matched is not None:
            break
    if matched is None:
        out.append(matcher.flush())
        matched = matcher.matched
    assert ("".join(out), matched) == naive_cut(text, stops)


def _calls_during(fn: Callable[[], object]) -> int:
    """Python and C function calls made while `fn` runs: a count of work, not a measure of time."""
    calls = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def test_the_work_per_chunk_does_not_grow_with_the_number_of_stops() -> None:
    rng = random.Random(7)
    few = ["</answer>"]
    many = few + ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz<>/ ") for _ in range(rng.randint(4, 12))) for _ in range(5000)]
    chunks = ["The answer is", " forty", "-two, as ", "every reader", " of the guide knows: 42 </ans", "wer> and more"]
    counts = {}
    for name, stops in (("few", few), ("many", many)):
        matcher = StopMatcher(stops)
        counts[name] = [_calls_during(lambda chunk=chunk, matcher=matcher: matcher.feed(chunk)) for chunk in chunks]
        assert matcher.matched == "</answer>"
    # Per chunk at most a few calls a character, with one stop or with five thousand (where nearly every
    # character may begin a stop, so none is skipped).
    for name in counts:
        for chunk, n in zip(chunks, counts[name], strict=True):
            assert n <= 4 * len(chunk) + 8, (name, chunk, counts)


# orjson where it gives what the standard library gives; the standard library wherever it would not.

_JSON_TEXTS = [
    b'{"a":1,"b":[true,false,null],"c":"\\u00e9\\ud83d\\ude00","d":-0,"e":1.5e-7}',
    b'{"a":1,"a":2}',
    b"12345678901234567890123",  # past 64 bits: orjson would read a float
    b'{"task_id":-9223372036854775809}',
    b"18446744073709551615",
    b"NaN",
    b'{"x":[Infinity,-Infinity]}',
    b'"\\ud800"',  # a lone surrogate escape
    b'"\xff\xfe"',  # not UTF-8: replaced, as the text decoding always did
    b'"caf\xc3\xa9"',
    b'\xef\xbb\xbf{"a":1}',
    b"[" * 2000 + b"]" * 2000,
    b"[1e400]",
    b'{"a":1}x',
    b"",
    b" [1, 2] ",
]


@pytest.mark.parametrize("raw", _JSON_TEXTS)
def test_loads_exact_is_json_loads_of_the_replaced_text(raw: bytes) -> None:
    def outcome(parse: Callable[[], object]) -> object:
        try:
            return ("value", repr(parse()))
        except (ValueError, RecursionError) as exc:
            return ("error", type(exc).__name__)

    expected = outcome(lambda: json.loads(raw.decode("utf-8", "replace")))
    assert outcome(lambda: loads_exact(raw)) == expected
    assert outcome(lambda: loads_exact(bytearray(raw))) == expected
    text = raw.decode("utf-8", "replace")
    assert outcome(lambda: loads_exact(text)) == outcome(lambda: json.loads(text))


def test_loads_exact_keeps_big_integers_whole() -> None:
    assert loads_exact(b'{"n":123456789012345678901234567890}') == {"n": 123456789012345678901234567890}
    assert loads_exact('"\ud800"') == "\ud800"


@pytest.mark.parametrize(
    "value",
    [
        {"id": "x", "choices": [{"index": 0, "message": {"content": "plain", "refusal": None}}], "n": -3, "ok": True},
        {"text": 'café 😀 \u2028 \x7f \x00 \n \t " \\ /'},
        {"text": "lone \ud800 surrogate"},
        {"n": 2**64, "m": -(2**63) - 1},
        ["a", 1, 0.5, 1.0, 2.5, 123456.789, None, [], {}],
        [1e-05, 1.5e-06, 0.0001, 0.00012, 1e16, 1.2345678901234567e20, -0.0, 1e-300, 5e-324],
        "just a string",
        [],
    ],
)
def test_json_bytes_are_json_compact_s(value: object) -> None:
    assert json_bytes(value) == json_compact(value).encode()


@pytest.mark.parametrize("text", ["", "plain", " router", "é", "😀", "\ud800", "\x7f", 'q"\\\n\u2028'])
def test_json_text_is_json_compact_s(text: str) -> None:
    assert json_text(text) == json_compact(text).encode()
