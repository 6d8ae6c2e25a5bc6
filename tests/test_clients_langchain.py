"""LangChain's ChatOpenAI (langchain-openai) and ChatAnthropic (langchain-anthropic) against a live gateway.

Invoke and stream through each, as a LangChain user points them at a hosted API (`base_url`, `api_key`): the text
is the simulator's answer (simulator/tokens.py `simulated_tokens`, deterministic), the usage LangChain reports
is what the usage row bills, and the request id LangChain exposes is the one the gateway recorded. Nothing leaves
the machine (tests/support/offline.py): LangSmith tracing is off unless asked for, and nothing else is fetched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import reduce
from operator import add
from typing import Any

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_openai import ChatOpenAI

from simulator import SimulatorServer, simulated_tokens
from tests.conftest import ALIAS, IssuedKey, LiveGateway, issue_key, wait_for
from tests.support.offline import loopback_only
from usage.models import UsageEvent

QUESTION = [("system", "Answer briefly."), ("human", "What is Cortensor?")]
PROMPT = "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat is Cortensor?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(autouse=True)
def offline() -> Iterator[None]:
    with loopback_only() as attempts:
        yield
    assert attempts == [], f"the client looked up hosts outside this machine: {attempts}"


@pytest.fixture
def key(gateway: LiveGateway) -> IssuedKey:
    return issue_key(slug="langchain-org", plan="pro")


def expected(max_tokens: int) -> tuple[list[str], int]:
    """The simulator's tokens for PROMPT and the prompt tokens it reports (about 4 characters a token)."""
    return simulated_tokens(PROMPT, max_tokens)[0], math.ceil(len(PROMPT) / 4)


def usage_row(request_id: str) -> UsageEvent:
    return wait_for(lambda: UsageEvent.objects.filter(request_id=request_id).first())


def check_row(row: UsageEvent, key: IssuedKey, *, route: str, streamed: bool, usage: dict[str, Any]) -> None:
    assert (row.status, row.http_status, row.route, row.alias) == ("ok", 200, route, ALIAS)
    assert (row.streamed, row.estimated) == (streamed, False)
    assert (row.organization_id, row.api_key_id) == (key.organization_id, key.key_id)
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (
        usage["input_tokens"], usage["output_tokens"], usage["total_tokens"],
    )  # fmt: skip


# --- ChatOpenAI ------------------------------------------------------------------------------------------------------------


def chat_openai(gateway: LiveGateway, key: IssuedKey, **kwargs: Any) -> ChatOpenAI:
    # include_response_headers: LangChain then puts the HTTP headers, x-request-id among them, in response_metadata.
    return ChatOpenAI(
        model=ALIAS, base_url=f"{gateway.url}/v1", api_key=key.raw, max_retries=0, timeout=20, include_response_headers=True,
        **kwargs,
    )  # fmt: skip


def test_chat_openai_invoke(gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer) -> None:
    tokens, prompt_tokens = expected(64)
    message = chat_openai(gateway, key, max_tokens=64, temperature=0.2).invoke(QUESTION)

    assert isinstance(message, AIMessage)
    assert message.content == "".join(tokens)
    usage = {"input_tokens": prompt_tokens, "output_tokens": len(tokens), "total_tokens": prompt_tokens + len(tokens)}
    assert message.usage_metadata is not None and {k: message.usage_metadata[k] for k in usage} == usage  # type: ignore[literal-required]
    meta = message.response_metadata
    assert (meta["model_name"], meta["finish_reason"]) == (ALIAS, "stop")
    request_id = meta["headers"]["x-request-id"]
    assert meta["id"] == f"chatcmpl-{request_id.removeprefix('req_')}"

    sent = sim.stats()["last_request"]
    assert (sent["prompt"], sent["max_tokens"], sent["temperature"], sent["stream"]) == (PROMPT, 64, 0.2, False)
    assert sent["client_reference"] == request_id
    check_row(usage_row(request_id), key, route="chat.completions", streamed=False, usage=usage)


def test_chat_openai_without_max_tokens_gets_the_alias_cap(gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer) -> None:
    """LangChain sends no max_tokens unless told: the answer may be as long as /v1/models says, not a hidden 512."""
    message = chat_openai(gateway, key).invoke(QUESTION)
    assert message.content == "".join(expected(4096)[0])
    assert sim.stats()["last_request"]["max_tokens"] == 4096


def test_chat_openai_stream(gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer) -> None:
    tokens, prompt_tokens = expected(64)
    # stream_usage: LangChain asks for stream_options.include_usage and reports the last chunk's usage.
    chunks = list(chat_openai(gateway, key, max_tokens=64, stream_usage=True).stream(QUESTION))

    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert [c.content for c in chunks if c.content] == tokens  # one chunk per router token
    message = reduce(add, chunks)
    assert message.content == "".join(tokens)
    usage = {"input_tokens": prompt_tokens, "output_tokens": len(tokens), "total_tokens": prompt_tokens + len(tokens)}
    assert message.usage_metadata is not None and {k: message.usage_metadata[k] for k in usage} == usage  # type: ignore[literal-required]
    assert (message.response_metadata["model_name"], message.response_metadata["finish_reason"]) == (ALIAS, "stop")
    request_id = message.response_metadata["headers"]["x-request-id"]
    assert message.response_metadata["headers"]["content-type"].startswith("text/event-stream")

    sent = sim.stats()["last_request"]
    assert (sent["prompt"], sent["stream"], sent["client_reference"]) == (PROMPT, True, request_id)
    check_row(usage_row(request_id), key, route="chat.completions", streamed=True, usage=usage)


# --- ChatAnthropic ----------------------------------------------------------------------------------------------------------


def chat_anthropic(gateway: LiveGateway, key: IssuedKey, **kwargs: Any) -> ChatAnthropic:
    return ChatAnthropic(
        model=ALIAS, base_url=gateway.url, api_key=key.raw, max_retries=0, default_request_timeout=20, **kwargs
    )  # fmt: skip


def test_chat_anthropic_invoke(gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer) -> None:
    tokens, prompt_tokens = expected(64)
    message = chat_anthropic(gateway, key, max_tokens=64, temperature=0.2).invoke(QUESTION)

    assert isinstance(message, AIMessage)
    assert message.content == "".join(tokens)
    usage = {"input_tokens": prompt_tokens, "output_tokens": len(tokens), "total_tokens": prompt_tokens + len(tokens)}
    assert message.usage_metadata is not None and {k: message.usage_metadata[k] for k in usage} == usage  # type: ignore[literal-required]
    meta = message.response_metadata
    assert (meta["model"], meta["stop_reason"], meta["stop_sequence"]) == (ALIAS, "end_turn", None)
    request_id = f"req_{meta['id'].removeprefix('msg_')}"

    sent = sim.stats()["last_request"]  # the system message went to Anthropic's `system`, rendered first
    assert (sent["prompt"], sent["max_tokens"], sent["temperature"], sent["stream"]) == (PROMPT, 64, 0.2, False)
    assert sent["client_reference"] == request_id
    check_row(usage_row(request_id), key, route="messages", streamed=False, usage=usage)


def test_chat_anthropic_stream(gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer) -> None:
    """ChatAnthropic's stream keeps neither message_start's id nor the headers: the request is found by its key (the
    test's own organization makes this one request), and the router was told the same id."""
    tokens, prompt_tokens = expected(64)
    chunks = list(chat_anthropic(gateway, key, max_tokens=64).stream(QUESTION))

    assert [c.text for c in chunks if c.text] == tokens
    message = reduce(add, chunks)
    assert message.text == "".join(tokens)
    usage = {"input_tokens": prompt_tokens, "output_tokens": len(tokens), "total_tokens": prompt_tokens + len(tokens)}
    assert message.usage_metadata is not None and {k: message.usage_metadata[k] for k in usage} == usage  # type: ignore[literal-required]
    assert (message.response_metadata["model_name"], message.response_metadata["stop_reason"]) == (ALIAS, "end_turn")

    row = wait_for(lambda: UsageEvent.objects.filter(api_key_id=key.key_id).first())
    assert UsageEvent.objects.filter(api_key_id=key.key_id).count() == 1
    sent = sim.stats()["last_request"]
    assert (sent["prompt"], sent["stream"], sent["client_reference"]) == (PROMPT, True, row.request_id)
    check_row(row, key, route="messages", streamed=True, usage=usage)
