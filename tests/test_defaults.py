"""Defaults that don't surprise: a request without max_tokens gets its alias's cap, the number /v1/models shows, and a
plan's tokens per minute limit never turns such a request away for its default's sake."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from billing.models import Plan
from gateway.translate.common import estimate_tokens
from routerpools.models import ModelAlias
from simulator import SimulatorServer, estimate_prompt_tokens, simulated_tokens
from tests.conftest import ALIAS, IssuedKey, LiveGateway, issue_key, wait_until_gateway_caught_up, wait_until_usage_written
from tests.test_enforcement import minute_room

CHAT = "/v1/chat/completions"
ENVELOPE = "/v1/completions"
HI = [{"role": "user", "content": "hi"}]
CHATML_HI = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def post(gateway: LiveGateway, key: IssuedKey, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gateway.url}{path}", json=body, headers={"authorization": f"Bearer {key.raw}"}, timeout=20)


def set_cap(gateway: LiveGateway, cap: int) -> None:
    alias = ModelAlias.objects.get(alias=ALIAS)
    alias.max_tokens_cap = cap
    alias.save()
    wait_until_gateway_caught_up(gateway)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("path", [CHAT, ENVELOPE], ids=["chat", "envelope"])
def test_without_max_tokens_the_router_is_asked_for_the_alias_cap(
    gateway: LiveGateway, api_key: IssuedKey, sim: SimulatorServer, path: str, stream: bool
) -> None:
    """It used to be a hidden 512 (ModelAlias.default_max_tokens), whatever the cap /v1/models could have shown."""
    body: dict[str, Any] = {"model": ALIAS, "stream": stream}
    body.update({"messages": HI} if path == CHAT else {"prompt": "hi"})
    for cap in (4096, 700):
        if cap != 4096:
            set_cap(gateway, cap)
        response = post(gateway, api_key, path, body)
        assert response.status_code == 200, response.text
        assert sim.stats()["last_request"]["max_tokens"] == cap
        listed = httpx.get(f"{gateway.url}/v1/models/{ALIAS}", headers={"authorization": f"Bearer {api_key.raw}"}, timeout=10)
        assert listed.json()["max_output_tokens"] == cap
    # Asked for: as asked, and never above the cap.
    for asked, sent in ((12, 12), (5000, 700)):
        assert post(gateway, api_key, path, {**body, "max_tokens": asked}).status_code == 200
        assert sim.stats()["last_request"]["max_tokens"] == sent


def remaining_tokens(response: httpx.Response) -> int:
    return int(response.headers["x-ratelimit-remaining-tokens"])


def test_a_request_without_max_tokens_is_never_refused_for_its_default_on_a_small_tokens_per_minute_plan(
    gateway: LiveGateway, sim: SimulatorServer
) -> None:
    """A 300 tokens-a-minute plan, an alias capped at 4096: requests naming no max_tokens run one after another.

    Reserving the cap against what the limit leaves after the prompt (as an explicit max_tokens is) needs the whole
    minute's budget, so every such request after the first of a minute was refused. They now reserve what is left.
    """
    minute_room(need=20)
    slug = f"t{uuid.uuid4().hex[:12]}"
    tpm = 300
    Plan.objects.create(slug=slug, name=f"test {slug}", requests_per_minute=1000, tokens_per_minute=tpm)
    key = issue_key(slug=f"org-{uuid.uuid4().hex[:10]}", plan=slug)
    wait_until_gateway_caught_up(gateway)
    prompt_tokens = estimate_prompt_tokens(CHATML_HI)
    answer_tokens = len(simulated_tokens(CHATML_HI, 4096)[0])
    used_each = prompt_tokens + answer_tokens  # what each request settles at (the simulator reports its usage)

    used = 0
    for _ in range(3):
        response = post(gateway, key, CHAT, {"model": ALIAS, "messages": HI})
        assert response.status_code == 200, response.text
        assert sim.stats()["last_request"]["max_tokens"] == 4096  # the answer is not cut to what the minute has left
        assert remaining_tokens(response) == 0  # it reserved all the minute had left...
        wait_until_usage_written(gateway)
        used += used_each
    # ...and was settled at what it used: a small explicit max_tokens fits beside the three.
    small = post(gateway, key, CHAT, {"model": ALIAS, "messages": HI, "max_tokens": 10})
    assert small.status_code == 200, small.text
    assert remaining_tokens(small) == tpm - used - (estimate_tokens(CHATML_HI) + 10)
    # An explicit max_tokens keeps its meaning: the cap asked for needs the whole minute, which is partly used.
    asked = post(gateway, key, CHAT, {"model": ALIAS, "messages": HI, "max_tokens": 4096})
    assert asked.status_code == 429 and "tokens per minute limit of 300 reached" in asked.json()["error"]["message"]
