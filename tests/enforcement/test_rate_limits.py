"""Rate limits per key and per organization through live gateways, exact to the request."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import httpx
import pytest

from gateway.limits import MONDAY_OFFSET_S, WEEK_S, format_duration, week_start
from simulator import SimulatorServer
from tests.support.enforcement import (
    CHAT,
    ENVELOPE,
    MESSAGES,
    SURFACES,
    body_for,
    burst,
    chatml,
    duration_seconds,
    error_details,
    expect_error,
    headers_for,
    make_plan,
    minute_room,
    new_org_key,
    remaining_requests,
    remaining_tokens,
    reservation,
    second_key,
    seconds_left,
    send,
    statuses,
    window_room,
)
from tests.support.live import (
    IssuedKey,
    LiveGateway,
    wait_for,
)

# --- rate limits per key and per organization ----------------------------------------------------------


def test_requests_per_minute_per_key_then_per_organization(gateway: LiveGateway) -> None:
    minute_room()
    plan = make_plan(rpm=5)
    key = new_org_key(plan, gateway)
    sibling = second_key(key)
    stranger = new_org_key(plan, gateway)

    # Five admitted across the three surfaces, remaining counting down exactly.
    paths = [CHAT, MESSAGES, ENVELOPE, CHAT, MESSAGES]
    responses = [send(gateway, key, p, text=f"rpm {i}") for i, p in enumerate(paths)]
    assert [r.status_code for r in responses] == [200] * 5
    assert [remaining_requests(r, p) for r, p in zip(responses, paths, strict=True)] == [4, 3, 2, 1, 0]

    # The sixth is refused on every surface, by the key's limit.
    for path in SURFACES:
        refused = send(gateway, key, path)
        message = expect_error(refused, path, "rate_limited")
        wait = int(refused.headers["retry-after"])
        assert 1 <= wait <= 60
        # 60 s (refused on the minute boundary) reads 1m0s, as OpenAI writes it
        assert message == f"API key requests per minute limit of 5 reached; resets in {format_duration(wait)}", message
        if path == ENVELOPE:
            assert error_details(refused) == {
                "limit": "requests_per_minute",
                "scope": "key",
                "limit_value": 5,
                "reset_seconds": wait,
            }
        assert remaining_requests(refused, path) == 0

    # The organization's second key finds the organization's budget spent.
    refused = send(gateway, sibling, ENVELOPE)
    expect_error(refused, ENVELOPE, "rate_limited")
    assert error_details(refused)["scope"] == "organization"
    assert refused.json()["error"]["message"].startswith("organization requests per minute limit of 5 reached; resets in ")

    # Another organization on the same plan has its own five.
    others = [send(gateway, stranger, CHAT, text=f"other {i}").status_code for i in range(6)]
    assert others == [200] * 5 + [429]


def test_organization_budget_is_shared_by_its_keys(gateway: LiveGateway) -> None:
    minute_room()
    plan = make_plan(rpm=6)
    first = new_org_key(plan, gateway)
    second = second_key(first)
    results = burst(
        [(gateway, first, CHAT, {"text": f"a{i}"}) for i in range(4)]
        + [(gateway, second, CHAT, {"text": f"b{i}"}) for i in range(4)]
    )
    assert statuses(results) == {200: 6, 429: 2}
    for response in results:
        if response.status_code == 429:
            assert "requests per minute limit of 6 reached" in expect_error(response, CHAT, "rate_limited")


def test_concurrent_in_flight_requests_per_key_and_organization(gateway: LiveGateway, sim: SimulatorServer) -> None:
    plan = make_plan(concurrent=2)
    key = new_org_key(plan, gateway)
    sibling = second_key(key)
    sim.configure(token_delay_ms=300)  # a streamed answer of 8..12 tokens stays open for 2.4..3.6 s

    with httpx.Client(timeout=20) as client:

        def open_stream(who: IssuedKey, path: str, text: str) -> httpx.Response:
            request = client.build_request(
                "POST",
                f"{gateway.url}{path}",
                json=body_for(path, text=text, max_tokens=12, stream=True),
                headers=headers_for(who, path),
            )
            return client.send(request, stream=True)

        held = [open_stream(key, CHAT, "hold one"), open_stream(key, MESSAGES, "hold two")]
        assert [r.status_code for r in held] == [200, 200]

        # Both slots in use: a third request from the key, on any surface, is refused at once.
        for path in SURFACES:
            started = time.monotonic()
            refused = send(gateway, key, path)
            assert time.monotonic() - started < 1.0
            message = expect_error(refused, path, "rate_limited")
            assert (
                message == "API key concurrent requests limit of 2 reached; retry when one of the 2 in-flight requests finishes"
            )
            assert refused.headers["retry-after"] == "1"
        refused = send(gateway, sibling, ENVELOPE)
        expect_error(refused, ENVELOPE, "rate_limited")
        assert error_details(refused) == {
            "limit": "concurrent_requests",
            "scope": "organization",
            "limit_value": 2,
            "reset_seconds": 1,
        }

        # The client hanging up on a stream frees its slot; a non-streamed request (instant) then passes.
        held[0].close()
        wait_for(lambda: send(gateway, sibling, CHAT).status_code == 200, timeout=3)
        third = open_stream(sibling, ENVELOPE, "hold three")
        assert third.status_code == 200
        expect_error(send(gateway, key, CHAT), CHAT, "rate_limited")

        # Streams that run to their end free their slots too.
        for response in (held[1], third):
            text = response.read().decode()
            assert "message_stop" in text or "[DONE]" in text
            response.close()
    sim.configure(token_delay_ms=0)
    wait_for(lambda: send(gateway, key, CHAT).status_code == 200, timeout=3)
    assert statuses(burst([(gateway, key, CHAT, {"text": f"c{i}"}) for i in range(2)])) == {200: 2}


def test_a_client_that_hangs_up_frees_its_slot(gateway: LiveGateway, sim: SimulatorServer) -> None:
    plan = make_plan(concurrent=1)
    key = new_org_key(plan, gateway)
    sim.configure(first_byte_delay_ms=3000)  # the router takes 3 s before its first byte
    for path, stream in ((CHAT, False), (MESSAGES, True), (ENVELOPE, False)):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{gateway.url}{path}", json=body_for(path, stream=stream), headers=headers_for(key, path), timeout=0.5)
        # The gateway notices the hang-up, cancels the upstream call and releases the slot, long before 3 s.
        started = time.monotonic()
        sim.configure(first_byte_delay_ms=0)
        wait_for(lambda: send(gateway, key, CHAT).status_code == 200, timeout=2, interval=0.02)
        assert time.monotonic() - started < 2
        sim.configure(first_byte_delay_ms=3000)
    sim.configure(first_byte_delay_ms=0)


def test_the_short_window_cap_is_a_quota_on_every_surface(gateway: LiveGateway) -> None:
    window_room(3600)
    plan = make_plan(window_requests=3, window_seconds=3600, weekly=1000)
    key = new_org_key(plan, gateway)
    ok = [send(gateway, key, p) for p in SURFACES]
    assert [r.status_code for r in ok] == [200] * 3
    # The allowance is tighter than rpm, so the request headers report it.
    assert [remaining_requests(r, p) for r, p in zip(ok, SURFACES, strict=True)] == [2, 1, 0]
    assert ok[0].headers["x-ratelimit-limit-requests"] == "3"
    reset = duration_seconds(ok[0].headers["x-ratelimit-reset-requests"])
    assert abs(reset - seconds_left(3600)) <= 2

    for path in SURFACES:
        refused = send(gateway, key, path)
        message = expect_error(refused, path, "quota")
        wait = int(refused.headers["retry-after"])
        assert abs(wait - seconds_left(3600)) <= 2
        assert message.startswith("API key 1-hour request allowance of 3 reached; resets in "), message
        assert re.search(r"\(at \d{4}-\d\d-\d\dT\d\d:00:00Z\)$", message), message
        if path == ENVELOPE:
            assert error_details(refused) == {"limit": "window_requests", "scope": "key", "limit_value": 3, "reset_seconds": wait}


def test_the_weekly_allowance_is_a_quota_that_resets_monday(gateway: LiveGateway) -> None:
    window_room(WEEK_S, offset=MONDAY_OFFSET_S)
    plan = make_plan(weekly=4)
    key = new_org_key(plan, gateway)
    sibling = second_key(key)
    ok = [send(gateway, key, CHAT, text=f"w{i}") for i in range(3)] + [send(gateway, sibling, MESSAGES)]
    assert [r.status_code for r in ok] == [200] * 4
    assert [remaining_requests(r) for r in ok[:3]] == [3, 2, 1]
    assert remaining_requests(ok[3], MESSAGES) == 0  # the organization's weekly count, seen from the second key
    monday = datetime.fromtimestamp(week_start(time.time()) + WEEK_S, tz=UTC)
    assert ok[3].headers["anthropic-ratelimit-requests-reset"] == monday.strftime("%Y-%m-%dT00:00:00Z")
    assert abs(duration_seconds(ok[0].headers["x-ratelimit-reset-requests"]) - seconds_left(WEEK_S, MONDAY_OFFSET_S)) <= 2

    for who, path in ((key, CHAT), (key, MESSAGES), (sibling, ENVELOPE)):
        refused = send(gateway, who, path)
        message = expect_error(refused, path, "quota")
        assert "weekly request allowance of 4 reached" in message
        assert message.endswith(f"(at {monday.strftime('%Y-%m-%dT00:00:00Z')})")
        assert abs(int(refused.headers["retry-after"]) - seconds_left(WEEK_S, MONDAY_OFFSET_S)) <= 2


def test_the_free_plan_reports_its_own_numbers(gateway: LiveGateway) -> None:
    minute_room()
    key = new_org_key("free", gateway)
    response = send(gateway, key, CHAT, max_tokens=10)
    assert response.status_code == 200
    assert response.headers["x-ratelimit-limit-requests"] == "20"
    assert response.headers["x-ratelimit-remaining-requests"] == "19"
    assert response.headers["x-ratelimit-limit-tokens"] == "20000"
    assert remaining_tokens(response) == 20000 - reservation(chatml("hi"), 10)
