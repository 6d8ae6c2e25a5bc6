"""Token estimates, Usage, and stop strings in whole answers and across stream chunks."""

from __future__ import annotations

import random

import pytest

from gateway.translate.common import StopMatcher, Usage, cut_at_stop, estimate_tokens


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
