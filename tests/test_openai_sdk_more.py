"""More of the official openai SDK against a live gateway: stop strings, max_completion_tokens, 50 concurrent async streams."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import openai
import pytest

from gateway.translate.common import estimate_tokens
from simulator import simulated_tokens
from tests.conftest import ALIAS, IssuedKey, LiveGateway, issue_key, wait_for
from usage.models import UsageEvent

HI = [{"role": "user", "content": "hi"}]


def chatml_user(content: str) -> str:
    return f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"


CHATML_HI = chatml_user("hi")


@pytest.fixture
def key(gateway: LiveGateway) -> IssuedKey:
    # The pro plan: 50 requests at once must stay within the plan's concurrency and rate limits.
    return issue_key(slug="openai-sdk-org", plan="pro")


def client(gateway: LiveGateway, key: IssuedKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key.raw, max_retries=0, timeout=20)


def router_prompt_tokens(prompt: str) -> int:
    return math.ceil(len(prompt) / 4)  # what the simulator reports as prompt_tokens


def rid_of(completion_id: str) -> str:
    assert completion_id.startswith("chatcmpl-")
    return f"req_{completion_id.removeprefix('chatcmpl-')}"


def stream_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def finish_reasons(chunks: list[Any]) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


# --- stop --------------------------------------------------------------------------------------------------------------------

TOKENS, _ = simulated_tokens(CHATML_HI, 64)
TEXT = "".join(TOKENS)


def first_at(stop: str, k: int) -> bool:
    """Whether `stop` first occurs in the answer exactly where token k begins."""
    return TEXT.find(stop) == len("".join(TOKENS[:k]))


def two_token_stop() -> tuple[str, str]:
    """Two consecutive tokens (two router chunks) as one stop string, and the answer before it."""
    for k in range(1, len(TOKENS) - 1):
        stop = TOKENS[k] + TOKENS[k + 1]
        if first_at(stop, k):
            return stop, "".join(TOKENS[:k])
    raise AssertionError(TOKENS)


def straddling_stop() -> tuple[str, str]:
    """The end of one token and the start of the next, e.g. "xt an" (neither chunk holds it whole)."""
    for k in range(1, len(TOKENS) - 1):
        a, b = TOKENS[k], TOKENS[k + 1]
        if len(a) >= 3 and len(b) >= 3:
            stop = a[-2:] + b[:3]
            i = TEXT.find(stop)
            if i == len("".join(TOKENS[: k + 1])) - 2:
                return stop, TEXT[:i]
    raise AssertionError(TOKENS)


def stop_cases() -> dict[str, tuple[str | list[str], str, str]]:
    """case -> (the `stop` parameter, the text expected, the stop that matched)."""
    two, before_two = two_token_stop()
    straddle, before_straddle = straddling_stop()
    late = TOKENS[-2] + TOKENS[-1]
    assert TEXT.find(late) > TEXT.find(two)
    return {
        "string_two_chunks": (two, before_two, two),
        "string_straddling_chunks": (straddle, before_straddle, straddle),
        # In a list, the earliest match in the text wins, whatever its place in the list.
        "list_earliest_wins": ([late, "never-in-it", two], before_two, two),
        "list_one_matching": (["never-in-it", straddle], before_straddle, straddle),
    }


STOP_CASES = stop_cases()


@pytest.mark.parametrize("split_writes", [False, True], ids=["one_read", "split_writes"])
@pytest.mark.parametrize("case", sorted(STOP_CASES))
def test_stop_cuts_the_text_and_finishes_with_stop(
    case: str, split_writes: bool, gateway: LiveGateway, key: IssuedKey, sim: Any
) -> None:
    sim.configure(global_={"split_writes": split_writes})
    stop, expected, _matched = STOP_CASES[case]
    assert expected != TEXT and expected  # the stop really cuts, after some text
    c = client(gateway, key)

    completion = c.chat.completions.create(model=ALIAS, messages=HI, max_tokens=64, stop=stop)
    assert completion.choices[0].message.content == expected
    assert completion.choices[0].finish_reason == "stop"
    assert sim.stats()["last_request"]["stop"] == (stop if isinstance(stop, list) else [stop])
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == router_prompt_tokens(CHATML_HI)

    chunks = list(
        c.chat.completions.create(
            model=ALIAS, messages=HI, max_tokens=64, stop=stop, stream=True, stream_options={"include_usage": True}
        )
    )
    assert stream_text(chunks) == expected
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == estimate_tokens(CHATML_HI)  # the stop ended the stream before the router's usage
    assert len({ch.id for ch in chunks}) == 1
    row = wait_for(lambda: UsageEvent.objects.filter(request_id=rid_of(chunks[0].id)).first())
    assert (row.status, row.streamed) == ("ok", True)
    assert row.completion_tokens == chunks[-1].usage.completion_tokens  # what the customer is told is what is recorded
    assert sim.stats()["last_request"]["stop"] == (stop if isinstance(stop, list) else [stop])


def test_stop_beats_running_out_of_tokens(gateway: LiveGateway, key: IssuedKey) -> None:
    tokens, reason = simulated_tokens(CHATML_HI, 5)
    assert reason == "length"
    stop = tokens[3]
    assert "".join(tokens).find(stop) == len("".join(tokens[:3]))
    c = client(gateway, key)
    completion = c.chat.completions.create(model=ALIAS, messages=HI, max_tokens=5, stop=[stop])
    assert (completion.choices[0].message.content, completion.choices[0].finish_reason) == ("".join(tokens[:3]), "stop")
    chunks = list(c.chat.completions.create(model=ALIAS, messages=HI, max_tokens=5, stop=[stop], stream=True))
    assert (stream_text(chunks), finish_reasons(chunks)) == ("".join(tokens[:3]), ["stop"])


def test_stop_that_never_matches_changes_nothing(gateway: LiveGateway, key: IssuedKey) -> None:
    c = client(gateway, key)
    completion = c.chat.completions.create(model=ALIAS, messages=HI, max_tokens=64, stop=["zzz", "qqq"])
    assert (completion.choices[0].message.content, completion.choices[0].finish_reason) == (TEXT, "stop")
    assert completion.usage is not None and completion.usage.completion_tokens == len(TOKENS)
    chunks = list(
        c.chat.completions.create(
            model=ALIAS, messages=HI, max_tokens=64, stop="zzz", stream=True, stream_options={"include_usage": True}
        )
    )
    assert (stream_text(chunks), finish_reasons(chunks)) == (TEXT, ["stop"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(TOKENS)


# --- max_completion_tokens ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [5, 64])
def test_max_completion_tokens_is_sent_as_max_tokens(limit: int, gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    tokens, reason = simulated_tokens(CHATML_HI, limit)
    c = client(gateway, key)
    completion = c.chat.completions.create(model=ALIAS, messages=HI, max_completion_tokens=limit)
    assert completion.choices[0].message.content == "".join(tokens)
    assert completion.choices[0].finish_reason == reason == ("length" if limit == 5 else "stop")
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (router_prompt_tokens(CHATML_HI), len(tokens))
    sent = sim.stats()["last_request"]
    assert sent["max_tokens"] == limit
    assert "max_completion_tokens" not in sent

    chunks = list(
        c.chat.completions.create(
            model=ALIAS, messages=HI, max_completion_tokens=limit, stream=True, stream_options={"include_usage": True}
        )
    )
    assert (stream_text(chunks), finish_reasons(chunks)) == ("".join(tokens), [reason])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(tokens)
    assert sim.stats()["last_request"]["max_tokens"] == limit


def test_max_completion_tokens_wins_over_max_tokens(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    tokens, _ = simulated_tokens(CHATML_HI, 4)
    completion = client(gateway, key).chat.completions.create(model=ALIAS, messages=HI, max_completion_tokens=4, max_tokens=64)
    assert completion.choices[0].message.content == "".join(tokens)
    assert completion.choices[0].finish_reason == "length"
    assert sim.stats()["last_request"]["max_tokens"] == 4


# --- 50 concurrent streams on the async client ------------------------------------------------------------------------------------

N_STREAMS = 50


def concurrent_case(i: int) -> tuple[str, int, list[str], str]:
    content = f"concurrent request number {i}"
    max_tokens = 6 + i % 30  # some run out of tokens, most finish on their own
    tokens, reason = simulated_tokens(chatml_user(content), max_tokens)
    return content, max_tokens, tokens, reason


def test_fifty_concurrent_async_streams_are_kept_apart(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    # Paced tokens, so the streams really overlap and the gateway interleaves them.
    sim.configure(global_={"token_delay_ms": 20})
    cases = [concurrent_case(i) for i in range(N_STREAMS)]
    assert len({"".join(t) for _, _, t, _ in cases}) == N_STREAMS  # every answer differs, so a mix-up shows
    assert {r for _, _, _, r in cases} == {"stop", "length"}

    async def one(c: openai.AsyncOpenAI, i: int) -> tuple[list[Any], float, float]:
        content, max_tokens, _, _ = cases[i]
        stream = await c.chat.completions.create(
            model=ALIAS,
            messages=[{"role": "user", "content": content}],
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks: list[Any] = []
        first = 0.0
        async for chunk in stream:
            if not chunks:
                first = time.monotonic()
            chunks.append(chunk)
        return chunks, first, time.monotonic()

    async def all_at_once() -> list[tuple[list[Any], float, float]]:
        async with openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=key.raw, max_retries=0, timeout=30) as c:
            return await asyncio.gather(*(one(c, i) for i in range(N_STREAMS)))

    results = asyncio.run(all_at_once())

    ids: set[str] = set()
    for i, (chunks, _, _) in enumerate(results):
        _, _, tokens, reason = cases[i]
        assert [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content] == tokens, i
        assert finish_reasons(chunks) == [reason], i
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].choices == []
        usage = chunks[-1].usage
        assert usage is not None
        prompt = chatml_user(cases[i][0])
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
            router_prompt_tokens(prompt),
            len(tokens),
            router_prompt_tokens(prompt) + len(tokens),
        )
        assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
        assert {c.model for c in chunks} == {ALIAS}
        ids.add(chunks[0].id)
    assert len(ids) == N_STREAMS

    # They ran at the same time: every stream had begun before the first one ended.
    assert max(first for _, first, _ in results) < min(end for _, _, end in results)

    stats = sim.stats()
    assert (stats["requests_total"], stats["streams_completed"], stats["streams_aborted_by_client"]) == (N_STREAMS, N_STREAMS, 0)
    sent = {b["client_reference"]: b for b in stats["last_bodies"]}
    for i, (chunks, _, _) in enumerate(results):
        body = sent[rid_of(chunks[0].id)]
        assert (body["prompt"], body["max_tokens"], body["stream"]) == (chatml_user(cases[i][0]), cases[i][1], True)

    rids = {rid_of(i) for i in ids}
    wait_for(lambda: UsageEvent.objects.filter(request_id__in=rids).count() == N_STREAMS, timeout=10)
    rows = {r.request_id: r for r in UsageEvent.objects.filter(request_id__in=rids)}
    for i, (chunks, _, _) in enumerate(results):
        row = rows[rid_of(chunks[0].id)]
        assert (row.status, row.http_status, row.streamed, row.estimated, row.route, row.alias) == (
            "ok",
            200,
            True,
            False,
            "chat.completions",
            ALIAS,
        )
        assert (row.prompt_tokens, row.completion_tokens) == (router_prompt_tokens(chatml_user(cases[i][0])), len(cases[i][2]))
        assert (row.organization_id, row.api_key_id) == (key.organization_id, key.key_id)


def test_every_sdk_stream_is_recorded_although_the_sdk_hangs_up_after_done(gateway: LiveGateway, key: IssuedKey) -> None:
    """The SDK closes its connection as soon as it reads `[DONE]`; the usage event and log line must not depend on the
    gateway finishing its clean-up before that."""
    from usage.models import RequestLog

    stop, before = two_token_stop()
    c = client(gateway, key)
    expected: dict[str, tuple[str, int]] = {}
    for i in range(12):
        chunks = list(
            c.chat.completions.create(
                model=ALIAS, messages=HI, max_tokens=64, stream=True, stop=stop if i % 2 else None,
                stream_options={"include_usage": True},
            )
        )  # fmt: skip
        assert stream_text(chunks) == (before if i % 2 else TEXT)
        assert chunks[-1].usage is not None
        expected[rid_of(chunks[0].id)] = (stream_text(chunks), chunks[-1].usage.completion_tokens)
    assert [n for _, n in expected.values()][::2] == [len(TOKENS)] * 6
    wait_for(lambda: UsageEvent.objects.filter(request_id__in=expected).count() == len(expected), timeout=5)
    wait_for(lambda: RequestLog.objects.filter(request_id__in=expected).count() == len(expected), timeout=5)
    for row in UsageEvent.objects.filter(request_id__in=expected):
        assert (row.status, row.http_status, row.streamed, row.completion_tokens) == (
            "ok",
            200,
            True,
            expected[row.request_id][1],
        )
