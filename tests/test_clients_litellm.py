"""LiteLLM's Python SDK as a client of the gateway: `litellm.completion(model="openai/<alias>", api_base=<gateway>/v1)`.

Many teams put LiteLLM in front of every provider; with the `openai/` prefix it speaks OpenAI's chat completions to
any base URL. Each test checks the text (the simulator's deterministic answer), the usage LiteLLM reports against the
usage row, and the request id LiteLLM exposes (`_response_headers`, and the completion id it is made of).

Offline: at import LiteLLM fetches its model price list (and an Anthropic beta-header map) from the internet unless
told not to. LITELLM_LOCAL_MODEL_COST_MAP=True makes it use the copy it ships, LITELLM_OFFLINE_MODE=true covers
every other catalogue or tokenizer it would fetch on its own, and LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS=True the
beta-header map. They are set before the import, and both the import and every call run under
tests/support/offline.py, which fails the test on any look-up of a host other than loopback.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from simulator import SimulatorServer, simulated_tokens
from tests.conftest import ALIAS, IssuedKey, LiveGateway, issue_key, wait_for
from tests.support.offline import loopback_only
from usage.models import UsageEvent

# LiteLLM's own pydantic models warn on first use (ReadOnly TypedDict items, instance model_fields): not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Item .* is using the `ReadOnly` qualifier:UserWarning"),
    pytest.mark.filterwarnings("ignore:Accessing the 'model_.*' attribute on the instance is deprecated"),
]

OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_OFFLINE_MODE": "true",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
}
MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is Cortensor?"}]
PROMPT = "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat is Cortensor?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def litellm() -> Iterator[ModuleType]:
    saved = {name: os.environ.get(name) for name in OFFLINE_ENV}
    os.environ.update(OFFLINE_ENV)
    try:
        with loopback_only() as attempts:
            module = importlib.import_module("litellm")
        assert attempts == [], f"importing litellm looked up hosts outside this machine: {attempts}"
        yield module
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(autouse=True)
def offline() -> Iterator[None]:
    with loopback_only() as attempts:
        yield
    assert attempts == [], f"litellm looked up hosts outside this machine: {attempts}"


@pytest.fixture
def key(gateway: LiveGateway) -> IssuedKey:
    return issue_key(slug="litellm-org", plan="pro")


def completion(litellm: ModuleType, gateway: LiveGateway, key: IssuedKey, **kwargs: Any) -> Any:
    return litellm.completion(
        model=f"openai/{ALIAS}", api_base=f"{gateway.url}/v1", api_key=key.raw, messages=MESSAGES, num_retries=0, timeout=20,
        **kwargs,
    )  # fmt: skip


def expected(max_tokens: int) -> tuple[list[str], int]:
    return simulated_tokens(PROMPT, max_tokens)[0], math.ceil(len(PROMPT) / 4)


def check_row(request_id: str, key: IssuedKey, *, streamed: bool, usage: Any, end_user: str = "") -> None:
    row = wait_for(lambda: UsageEvent.objects.filter(request_id=request_id).first())
    assert (row.status, row.route, row.alias, row.streamed, row.estimated) == ("ok", "chat.completions", ALIAS, streamed, False)
    assert (row.organization_id, row.api_key_id, row.end_user) == (key.organization_id, key.key_id, end_user)
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (
        usage.prompt_tokens, usage.completion_tokens, usage.total_tokens,
    )  # fmt: skip


def test_completion(litellm: ModuleType, gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer) -> None:
    tokens, prompt_tokens = expected(64)
    # LiteLLM forwards `user` only to models of OpenAI's own catalogue, safety_identifier (its successor) to every
    # OpenAI-compatible endpoint: the gateway takes either as the end user of the usage row.
    response = completion(litellm, gateway, key, max_tokens=64, temperature=0.2, safety_identifier="team-a/user-1")

    assert response.choices[0].message.content == "".join(tokens)
    assert response.choices[0].finish_reason == "stop"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.total_tokens) == (
        prompt_tokens, len(tokens), prompt_tokens + len(tokens),
    )  # fmt: skip
    request_id = response._response_headers["x-request-id"]
    assert response.id == f"chatcmpl-{request_id.removeprefix('req_')}"

    sent = sim.stats()["last_request"]
    assert (sent["prompt"], sent["max_tokens"], sent["temperature"], sent["stream"]) == (PROMPT, 64, 0.2, False)
    assert sent["client_reference"] == request_id
    check_row(request_id, key, streamed=False, usage=response.usage, end_user="team-a/user-1")


def test_completion_without_max_tokens_gets_the_alias_cap(
    litellm: ModuleType, gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer
) -> None:
    response = completion(litellm, gateway, key)
    assert response.choices[0].message.content == "".join(expected(4096)[0])
    assert sim.stats()["last_request"]["max_tokens"] == 4096


def test_streaming_completion(litellm: ModuleType, gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer) -> None:
    tokens, prompt_tokens = expected(64)
    stream = completion(litellm, gateway, key, max_tokens=64, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)

    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == tokens  # one chunk per router token
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    request_id = stream._response_headers["x-request-id"]
    assert {c.id for c in chunks} == {f"chatcmpl-{request_id.removeprefix('req_')}"}
    usage = chunks[-1].usage  # the include_usage chunk, last
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        prompt_tokens, len(tokens), prompt_tokens + len(tokens),
    )  # fmt: skip
    # LiteLLM's own reassembly of a stream agrees.
    built = litellm.stream_chunk_builder(chunks, messages=MESSAGES)
    assert built.choices[0].message.content == "".join(tokens) and built.usage.completion_tokens == len(tokens)

    sent = sim.stats()["last_request"]
    assert (sent["prompt"], sent["stream"], sent["client_reference"]) == (PROMPT, True, request_id)
    check_row(request_id, key, streamed=True, usage=usage)


def test_a_refusal_is_litellms_own_exception_with_the_gateways_message(
    litellm: ModuleType, gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer
) -> None:
    with pytest.raises(litellm.BadRequestError) as refused:
        completion(litellm, gateway, key, max_tokens=8, logit_bias={"50256": -100})
    assert "Unsupported parameter: 'logit_bias'" in str(refused.value)
    with pytest.raises(litellm.NotFoundError):
        litellm.completion(
            model="openai/no-such-model", api_base=f"{gateway.url}/v1", api_key=key.raw, messages=MESSAGES, num_retries=0
        )
    assert sim.stats()["requests_total"] == 0
