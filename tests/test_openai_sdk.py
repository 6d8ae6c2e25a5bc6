"""The official openai SDK against a live daphne gateway and the router simulator."""

from __future__ import annotations

import openai
import pytest

from simulator import simulated_tokens
from tests.support.live import ALIAS, IssuedKey, LiveGateway, wait_for
from usage.models import UsageEvent


def client(gateway: LiveGateway, key: IssuedKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key.raw, max_retries=0, timeout=20)


def expected_text(prompt: str, max_tokens: int) -> tuple[str, str]:
    tokens, reason = simulated_tokens(prompt, max_tokens)
    return "".join(tokens), reason


CHATML_HI = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_chat_completion_non_stream_matches_the_router_answer(gateway: LiveGateway, api_key: IssuedKey) -> None:
    completion = client(gateway, api_key).chat.completions.create(
        model=ALIAS, messages=[{"role": "user", "content": "hi"}], max_tokens=12
    )
    text, reason = expected_text(CHATML_HI, 12)
    assert completion.choices[0].message.content == text
    assert completion.choices[0].finish_reason == reason
    assert completion.model == ALIAS
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(simulated_tokens(CHATML_HI, 12)[0])
    row = wait_for(lambda: UsageEvent.objects.filter(request_id=f"req_{completion.id.removeprefix('chatcmpl-')}").first())
    assert row.status == "ok"
    assert row.organization_id == api_key.organization_id
    assert row.completion_tokens == completion.usage.completion_tokens


def test_chat_completion_stream_with_include_usage(gateway: LiveGateway, api_key: IssuedKey) -> None:
    stream = client(gateway, api_key).chat.completions.create(
        model=ALIAS,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expected, reason = expected_text(CHATML_HI, 7)
    assert text == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(simulated_tokens(CHATML_HI, 7)[0])


def test_unknown_model_raises_not_found(gateway: LiveGateway, api_key: IssuedKey) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(gateway, api_key).chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found"
    assert info.value.response.headers["x-request-id"].startswith("req_")
