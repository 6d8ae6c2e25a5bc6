"""Per-token cost of the stream relay (gateway/relay.py) (run with `-m bench`; prints numbers, asserts only a generous ceiling)."""

from __future__ import annotations

import json
import time

import pytest

from gateway.relay import StreamRelay
from gateway.surfaces import ANTHROPIC_MESSAGES, OPENAI_CHAT, AnswerContext

TOKENS = 50_000


def router_stream() -> list[bytes]:
    frames = []
    for i in range(TOKENS):
        chunk = {
            "id": "cmpl-7f3a",
            "task_id": 123,
            "object": "text_completion",
            "created": 1700000000,
            "choices": [{"index": 0, "text": f" tok{i % 50}", "finish_reason": None, "logprobs": None}],
            "model": "default",
        }
        frames.append(f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode())
    raw = b"".join(frames)
    return [raw[i : i + 1400] for i in range(0, len(raw), 1400)]  # about one TCP segment a read


@pytest.mark.bench
@pytest.mark.parametrize(
    ("surface", "stops"),
    [("openai", []), ("openai", ["\n\nUser:", "<|im_end|>"]), ("anthropic", [])],
)
def test_per_token_cost_of_the_stream_pipeline(surface: str, stops: list[str]) -> None:
    reads = router_stream()
    ctx = AnswerContext(request_id="req_1", model="m", pool_name="p", created=1, prompt_tokens_estimate=1, include_usage=True)
    relay = StreamRelay((OPENAI_CHAT if surface == "openai" else ANTHROPIC_MESSAGES).stream_writer(ctx), stops=stops, ctx=ctx)
    sent = 0
    started = time.perf_counter()
    for read in reads:  # the production relay (gateway/relay.py), one network read at a time
        sent += len(relay.feed(read))
    per_token_us = (time.perf_counter() - started) / TOKENS * 1e6
    print(f"\n{surface} stops={len(stops)}: {per_token_us:.1f} µs per token, {sent} bytes out")
    assert relay.reader.chunks == TOKENS
    assert per_token_us < 200
