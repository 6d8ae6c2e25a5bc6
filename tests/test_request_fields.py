"""The request fields beyond what the router takes, through the official SDKs against a live gateway: the end-user id
is stored on the usage row, fields ignored on purpose change nothing, fields that cannot be honoured are refused by name.

The full list of decisions is in gateway/translate/openai_chat.py and anthropic_messages.py (and the README's
compatibility table); tests/translate/ pins each one, these pin what a client sees end to end.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest

from simulator import SimulatorServer, simulated_tokens
from tests.conftest import ALIAS, IssuedKey, LiveGateway, issue_key, wait_for
from usage.models import UsageEvent

HI = [{"role": "user", "content": "hi"}]
CHATML_HI = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
TEXT = "".join(simulated_tokens(CHATML_HI, 64)[0])


@pytest.fixture
def key(gateway: LiveGateway) -> IssuedKey:
    return issue_key(slug="fields-org", plan="pro")


def openai_client(gateway: LiveGateway, key: IssuedKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key.raw, max_retries=0, timeout=20)


def anthropic_client(gateway: LiveGateway, key: IssuedKey) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key.raw, max_retries=0, timeout=20)


def row(request_id: str) -> UsageEvent:
    return wait_for(lambda: UsageEvent.objects.filter(request_id=request_id).first())


def router_body(sim: SimulatorServer) -> dict[str, Any]:
    """What the router was sent, less what differs between two requests by design."""
    sent = dict(sim.stats()["last_request"])
    for varying in ("client_reference", "session_id"):
        sent.pop(varying)
    return sent


# --- the end user, on the usage row ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_openai_user_is_stored_on_the_usage_row(gateway: LiveGateway, key: IssuedKey, stream: bool) -> None:
    client = openai_client(gateway, key)
    if stream:
        chunks = list(client.chat.completions.create(model=ALIAS, messages=HI, max_tokens=64, user="customer-7", stream=True))
        completion_id = chunks[0].id
    else:
        completion_id = client.chat.completions.create(model=ALIAS, messages=HI, max_tokens=64, user="customer-7").id
    assert row(f"req_{completion_id.removeprefix('chatcmpl-')}").end_user == "customer-7"

    # safety_identifier, OpenAI's successor of `user`, names the end user when `user` is not sent.
    completion = client.chat.completions.create(model=ALIAS, messages=HI, max_tokens=64, extra_body={"safety_identifier": "s-1"})
    assert row(f"req_{completion.id.removeprefix('chatcmpl-')}").end_user == "s-1"
    plain = client.chat.completions.create(model=ALIAS, messages=HI, max_tokens=64)
    assert row(f"req_{plain.id.removeprefix('chatcmpl-')}").end_user == ""


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_anthropic_metadata_user_id_is_stored_on_the_usage_row(gateway: LiveGateway, key: IssuedKey, stream: bool) -> None:
    client = anthropic_client(gateway, key)
    metadata = {"user_id": "customer-9"}
    if stream:
        with client.messages.stream(model=ALIAS, max_tokens=64, messages=HI, metadata=metadata) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(model=ALIAS, max_tokens=64, messages=HI, metadata=metadata)
    assert message.content[0].text == TEXT  # type: ignore[union-attr]
    assert row(f"req_{message.id.removeprefix('msg_')}").end_user == "customer-9"


def test_an_end_user_postgresql_cannot_store_as_sent_is_stored_readable(gateway: LiveGateway, key: IssuedKey) -> None:
    """JSON may carry NUL and lone surrogates, which a text column refuses: the row would be dropped from its batch."""
    raw = b'{"model": "oss-20b", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "user": "a\\u0000b\\ud800c"}'
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=raw,
        headers={"authorization": f"Bearer {key.raw}", "content-type": "application/json"},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    assert row(response.headers["x-request-id"]).end_user == "a\ufffdb?c"


def test_an_end_user_id_over_256_characters_is_refused_by_name(gateway: LiveGateway, key: IssuedKey) -> None:
    with pytest.raises(openai.BadRequestError) as too_long:
        openai_client(gateway, key).chat.completions.create(model=ALIAS, messages=HI, user="u" * 257)
    assert too_long.value.param == "user"
    with pytest.raises(anthropic.BadRequestError) as too_long_too:
        anthropic_client(gateway, key).messages.create(model=ALIAS, max_tokens=8, messages=HI, metadata={"user_id": "u" * 257})
    assert "metadata.user_id" in too_long_too.value.message


# --- ignored on purpose: the same answer, the same router call -----------------------------------------------------------


def test_openai_fields_ignored_on_purpose_change_nothing(gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer) -> None:
    client = openai_client(gateway, key)
    plain = client.chat.completions.create(model=ALIAS, messages=HI, max_tokens=64)
    sent_plain = router_body(sim)
    ignored = client.chat.completions.create(
        model=ALIAS,
        messages=HI,
        max_tokens=64,
        seed=7,
        metadata={"team": "search"},
        store=False,
        service_tier="auto",
        parallel_tool_calls=False,
        prediction={"type": "content", "content": "a guess"},
        prompt_cache_key="conversation-1",
        logit_bias={},
        modalities=["text"],
    )
    assert router_body(sim) == sent_plain
    assert ignored.choices[0].message.content == plain.choices[0].message.content == TEXT
    assert ignored.usage == plain.usage


def test_anthropic_beta_header_and_fields_ignored_on_purpose_change_nothing(
    gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer
) -> None:
    client = anthropic_client(gateway, key)
    plain = client.messages.create(model=ALIAS, max_tokens=64, messages=HI)
    sent_plain = router_body(sim)
    # The beta resource sends `anthropic-beta` and posts to /v1/messages?beta=true.
    beta = client.beta.messages.create(
        model=ALIAS,
        max_tokens=64,
        messages=HI,
        betas=["token-efficient-tools-2025-02-19"],
        service_tier="standard_only",
        extra_body={"cache_control": {"type": "ephemeral"}, "speed": "standard"},
    )
    assert router_body(sim) == sent_plain
    assert beta.content[0].text == plain.content[0].text == TEXT  # type: ignore[union-attr]
    assert (beta.usage.input_tokens, beta.usage.output_tokens) == (plain.usage.input_tokens, plain.usage.output_tokens)


# --- refused by name --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"store": True}, "store"),
        ({"service_tier": "priority"}, "service_tier"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"extra_body": {"top_logprobs": 3}}, "top_logprobs"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_openai_fields_that_cannot_be_honoured_are_refused_by_name(
    gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(gateway, key).chat.completions.create(model=ALIAS, messages=HI, max_tokens=8, **fields)
    assert (refused.value.status_code, refused.value.param, refused.value.type) == (400, param, "invalid_request_error")
    assert f"'{param}'" in refused.value.message
    assert sim.stats()["requests_total"] == 0  # refused before any router call


@pytest.mark.parametrize(
    ("extra_body", "param"),
    [
        ({"speed": "fast"}, "speed"),
        ({"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}, "output_config.format"),
        ({"mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "m"}]}, "mcp_servers"),
    ],
    ids=["speed", "output_config", "mcp_servers"],
)
def test_anthropic_fields_that_cannot_be_honoured_are_refused_by_name(
    gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer, extra_body: dict[str, Any], param: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        anthropic_client(gateway, key).messages.create(model=ALIAS, max_tokens=8, messages=HI, extra_body=extra_body)
    body = refused.value.response.json()
    assert body["error"]["type"] == "invalid_request_error" and f"'{param}'" in body["error"]["message"]
    assert sim.stats()["requests_total"] == 0
