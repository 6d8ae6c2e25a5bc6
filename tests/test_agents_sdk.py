"""The OpenAI Agents SDK (openai-agents) running a plain agent through `/v1/responses` of a live gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    Runner,
    RunResult,
    RunResultStreaming,
    set_default_openai_api,
    set_default_openai_client,
    set_tracing_disabled,
)

from gateway.translate.common import ChatMessage
from gateway.translate.prompt import render_prompt
from responsestore.models import StoredResponse
from simulator import SimulatorServer, simulated_tokens
from tests.conftest import ALIAS, IssuedKey, LiveGateway, issue_key, wait_for
from usage.models import UsageEvent

INSTRUCTIONS = "You are a terse assistant."
MAX_TOKENS = 64  # above the simulator's longest natural answer: every answer here completes


@pytest.fixture
def key(gateway: LiveGateway) -> IssuedKey:
    return issue_key(slug="agents-org", plan="pro")


@pytest.fixture
def agent(gateway: LiveGateway, key: IssuedKey) -> Iterator[Agent]:
    """A plain agent (no tools) on our alias, its SDK pointed at the gateway the way the docs say: a client with our
    base URL and key as the default, the Responses API (the SDK's default, said explicitly), tracing off."""
    set_tracing_disabled(True)
    set_default_openai_api("responses")
    set_default_openai_client(
        openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=key.raw, max_retries=0, timeout=20), use_for_tracing=False
    )
    yield Agent(name="Assistant", instructions=INSTRUCTIONS, model=ALIAS, model_settings=ModelSettings(max_tokens=MAX_TOKENS))


def prompt_of(*turns: tuple[str, str]) -> str:
    return render_prompt([ChatMessage(role, text) for role, text in turns], "chatml", system=INSTRUCTIONS)


def answer_for(prompt: str) -> str:
    return "".join(simulated_tokens(prompt, MAX_TOKENS)[0])


def router_usage(prompt: str) -> tuple[int, int]:
    return -(-len(prompt) // 4), len(simulated_tokens(prompt, MAX_TOKENS)[0])


def check_run(result: RunResult | RunResultStreaming, prompt: str, key: IssuedKey, *, streamed: bool) -> str:
    """The text, the usage and the ids the agent's client saw; returns the response id."""
    assert result.final_output == answer_for(prompt)
    [raw] = result.raw_responses
    assert raw.response_id is not None and raw.response_id.startswith("resp_")
    # The request id the client saw (x-request-id) is the response's own, and the usage row's.
    assert raw.request_id == f"req_{raw.response_id.removeprefix('resp_')}"
    usage = result.context_wrapper.usage
    assert (usage.requests, usage.input_tokens, usage.output_tokens) == (1, *router_usage(prompt))
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert (raw.usage.input_tokens, raw.usage.output_tokens) == router_usage(prompt)
    row = wait_for(lambda: UsageEvent.objects.filter(request_id=raw.request_id).first())
    assert (row.route, row.status, row.streamed, row.organization_id) == ("responses", "ok", streamed, key.organization_id)
    assert (row.prompt_tokens, row.completion_tokens) == (usage.input_tokens, usage.output_tokens)
    return raw.response_id


def test_runner_run_answers_through_the_gateway(agent: Agent, key: IssuedKey, sim: SimulatorServer) -> None:
    result = asyncio.run(Runner.run(agent, "What is Cortensor?"))
    prompt = prompt_of(("user", "What is Cortensor?"))
    assert sim.stats()["last_request"]["prompt"] == prompt
    assert sim.stats()["last_request"]["max_tokens"] == MAX_TOKENS
    response_id = check_run(result, prompt, key, streamed=False)
    assert result.last_response_id == response_id
    assert wait_for(lambda: StoredResponse.objects.filter(pk=response_id).first()).organization_id == key.organization_id


def test_runner_run_streamed_answers_through_the_gateway(agent: Agent, key: IssuedKey, sim: SimulatorServer) -> None:
    async def run() -> tuple[RunResultStreaming, list[str], str]:
        result = Runner.run_streamed(agent, "Stream a reply.")
        deltas: list[str] = []
        async for event in result.stream_events():
            if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
                deltas.append(event.data.delta)
        return result, deltas, str(result.final_output)

    result, deltas, final = asyncio.run(run())
    prompt = prompt_of(("user", "Stream a reply."))
    assert sim.stats()["last_request"]["prompt"] == prompt and sim.stats()["last_request"]["stream"] is True
    assert "".join(deltas) == final
    check_run(result, prompt, key, streamed=True)


def test_an_agent_conversation_continues_from_the_previous_response(agent: Agent, key: IssuedKey, sim: SimulatorServer) -> None:
    async def run() -> tuple[RunResult, RunResult]:  # one event loop: the client's connections belong to it
        first = await Runner.run(agent, "My name is Ada.")
        return first, await Runner.run(agent, "What is my name?", previous_response_id=first.last_response_id)

    first, second = asyncio.run(run())
    # The agent sent only its new turn; the gateway put the stored conversation before it.
    prompt = prompt_of(("user", "My name is Ada."), ("assistant", str(first.final_output)), ("user", "What is my name?"))
    assert sim.stats()["last_request"]["prompt"] == prompt
    check_run(second, prompt, key, streamed=False)
