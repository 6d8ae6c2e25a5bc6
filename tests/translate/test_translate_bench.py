"""Per-token cost of the streaming pipeline (run with `-m bench`; prints numbers, asserts only a generous ceiling)."""

from __future__ import annotations

import json
import time

import pytest

from gateway.translate.anthropic_messages import MessagesStreamTranslator
from gateway.translate.common import StopMatcher
from gateway.translate.openai_chat import ChatStreamTranslator
from gateway.translate.router import RouterStreamReader
from gateway.translate.sse import SSEParser

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
    parser, reader, matcher = SSEParser(), RouterStreamReader(), StopMatcher(stops)
    if surface == "openai":
        translator = ChatStreamTranslator(completion_id="chatcmpl-1", created=1, model="m", include_usage=True)
    else:
        translator = MessagesStreamTranslator(message_id="msg_1", model="m", input_tokens=1)
    sent = 0
    started = time.perf_counter()
    for read in reads:
        for event in parser.feed(read):
            delta = reader.feed(event)
            if delta is None or delta.done:
                continue
            text, _ = matcher.feed(delta.text)
            sent += len(translator.text(text))
    per_token_us = (time.perf_counter() - started) / TOKENS * 1e6
    print(f"\n{surface} stops={len(stops)}: {per_token_us:.1f} µs per token, {sent} bytes out")
    assert reader.chunks == TOKENS
    assert per_token_us < 200
