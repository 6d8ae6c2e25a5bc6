"""The rate-limit headers of every surface: OpenAI's and Anthropic's, their meaning, their resets."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from gateway.limits import format_duration
from routerpools.models import ModelAlias
from simulator import SimulatorServer
from tests.support.enforcement import (
    CHAT,
    DURATION,
    ENVELOPE,
    HTTP,
    MESSAGES,
    OTHER_ALIAS,
    RFC3339,
    SURFACES,
    body_for,
    chatml,
    duration_seconds,
    expect_error,
    headers_for,
    make_plan,
    minute_room,
    new_org_key,
    ratelimit_headers,
    remaining_requests,
    remaining_tokens,
    reservation,
    router_prompt,
    send,
    sim_answer,
)
from tests.support.live import (
    ALIAS,
    LiveGateway,
)

# --- headers ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_every_completion_response_carries_the_rate_limit_headers(gateway: LiveGateway, stream: bool) -> None:
    minute_room()
    rpm, tpm = 50, 50_000
    plan = make_plan(rpm=rpm, tpm=tpm)
    key = new_org_key(plan, gateway)
    used_tokens = 0
    for n, path in enumerate([CHAT, MESSAGES, ENVELOPE, CHAT, MESSAGES, ENVELOPE]):
        text = f"headers {n}"
        before = time.time()
        response = send(gateway, key, path, text=text, max_tokens=12, stream=stream)
        assert response.status_code == 200, response.text
        minute_end = (before // 60 + 1) * 60
        got = ratelimit_headers(response, path)
        prompt = router_prompt(path, text)
        expected_remaining_tokens = tpm - used_tokens - reservation(prompt, 12)
        if path == MESSAGES:
            assert set(got) == {
                f"anthropic-ratelimit-{part}-{field}"
                for part in ("requests", "tokens")
                for field in ("limit", "remaining", "reset")
            }
            assert got["anthropic-ratelimit-requests-limit"] == str(rpm)
            assert got["anthropic-ratelimit-tokens-limit"] == str(tpm)
            for part in ("requests", "tokens"):
                reset = got[f"anthropic-ratelimit-{part}-reset"]
                assert RFC3339.match(reset), reset
                assert datetime.strptime(reset, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() == minute_end
        else:
            assert set(got) == {
                f"x-ratelimit-{field}-{part}" for part in ("requests", "tokens") for field in ("limit", "remaining", "reset")
            }
            assert got["x-ratelimit-limit-requests"] == str(rpm)
            assert got["x-ratelimit-limit-tokens"] == str(tpm)
            for part in ("requests", "tokens"):
                reset = got[f"x-ratelimit-reset-{part}"]
                assert DURATION.match(reset) and reset.endswith("s") and "h" not in reset, reset
                assert abs(duration_seconds(reset) - (minute_end - before)) <= 1.5
        # Remaining requests fall by exactly one a request; remaining tokens by the reservation, after the
        # earlier requests settled to their real usage.
        assert remaining_requests(response, path) == rpm - 1 - n
        assert remaining_tokens(response, path) == expected_remaining_tokens
        prompt_tokens, completion_tokens = sim_answer(prompt, 12)
        used_tokens += prompt_tokens + completion_tokens


def test_a_429_carries_retry_after_and_says_which_limit_and_when(gateway: LiveGateway) -> None:
    minute_room()
    plan = make_plan(rpm=1, tpm=10_000)
    key = new_org_key(plan, gateway)
    assert send(gateway, key, CHAT).status_code == 200
    for path in SURFACES:
        before = time.time()
        refused = send(gateway, key, path)
        assert refused.status_code == 429
        retry = refused.headers["retry-after"]
        assert retry.isdigit() and abs(int(retry) - (60 - before % 60)) <= 1.5
        message = expect_error(refused, path, "rate_limited")
        assert message == f"API key requests per minute limit of 1 reached; resets in {format_duration(int(retry))}"
        got = ratelimit_headers(refused, path)
        if path == MESSAGES:
            assert got["anthropic-ratelimit-requests-remaining"] == "0"
            assert RFC3339.match(got["anthropic-ratelimit-requests-reset"])
            assert got["anthropic-ratelimit-tokens-limit"] == "10000"
        else:
            assert got["x-ratelimit-remaining-requests"] == "0"
            # In OpenAI's duration format: after minute_room's wait the reset may be a whole minute away (`1m0s`).
            assert got["x-ratelimit-reset-requests"] == format_duration(int(retry))
            assert got["x-ratelimit-limit-tokens"] == "10000"


def test_an_upstream_failure_after_admission_still_carries_the_headers(gateway: LiveGateway, sim: SimulatorServer) -> None:
    minute_room()
    plan = make_plan(rpm=9, tpm=9_000)
    key = new_org_key(plan, gateway)
    sim.configure(fail_status=500)
    for n, path in enumerate(SURFACES):
        failed = send(gateway, key, path)
        assert failed.status_code >= 500
        assert remaining_requests(failed, path) == 8 - n
        assert remaining_tokens(failed, path) == 9_000 - reservation(router_prompt(path, "hi"), 16)  # settled to 0


def test_refusals_after_authentication_carry_the_headers_without_consuming(gateway: LiveGateway, other_alias: ModelAlias) -> None:
    minute_room()
    plan = make_plan(rpm=10, tpm=5_000, aliases=[ALIAS])
    key = new_org_key(plan, gateway)
    first = send(gateway, key, CHAT)
    assert first.status_code == 200
    left_tokens = remaining_tokens(first)
    used = sum(sim_answer(chatml("hi"), 16))
    left_tokens += reservation(chatml("hi"), 16) - used  # settled

    refusals = [
        (CHAT, {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400),
        (MESSAGES, {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}]}, 400),  # no max_tokens
        (CHAT, body_for(CHAT, model=OTHER_ALIAS), 403),
        (MESSAGES, body_for(MESSAGES, model=OTHER_ALIAS), 403),
        (ENVELOPE, body_for(ENVELOPE, model=OTHER_ALIAS), 403),
        (CHAT, body_for(CHAT, model="no-such-model"), 404),
        (ENVELOPE, body_for(ENVELOPE, model="no-such-model"), 404),
    ]
    for path, body, status in refusals:
        response = HTTP.post(f"{gateway.url}{path}", json=body, headers=headers_for(key, path))
        assert response.status_code == status, response.text
        assert len(ratelimit_headers(response, path)) == 6, (path, status, response.headers)
        assert remaining_requests(response, path) == 9  # read, not consumed
        assert remaining_tokens(response, path) == left_tokens

    listed = HTTP.get(f"{gateway.url}/v1/models", headers=headers_for(key, CHAT), timeout=10)
    one = HTTP.get(f"{gateway.url}/v1/models/{OTHER_ALIAS}", headers=headers_for(key, CHAT), timeout=10)
    counted = HTTP.post(
        f"{gateway.url}/v1/messages/count_tokens",
        headers=headers_for(key, MESSAGES),
        timeout=10,
        json={"model": ALIAS, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert (listed.status_code, one.status_code, counted.status_code) == (200, 404, 200)
    for response, path in ((listed, CHAT), (one, CHAT), (counted, MESSAGES)):
        assert len(ratelimit_headers(response, path)) == 6, response.headers
    assert remaining_requests(listed) == remaining_requests(one) == 9
    # Counting tokens is admitted like a request (a request a minute; tests/hostile/test_billing.py has the rest).
    assert remaining_requests(counted, MESSAGES) == 8
    assert remaining_tokens(counted, MESSAGES) == left_tokens

    # The refusals took nothing: only the count and this request since the first.
    assert remaining_requests(send(gateway, key, ENVELOPE)) == 7
    # Unauthenticated refusals say nothing about anyone's limits.
    assert ratelimit_headers(send(gateway, "ctr_nonsense", CHAT), CHAT) == {}
