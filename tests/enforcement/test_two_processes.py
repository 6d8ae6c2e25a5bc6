"""Two gateway processes sharing Redis admit exactly the limit together."""

from __future__ import annotations

import httpx
import pytest

from simulator import SimulatorServer
from tests.support.enforcement import (
    CHAT,
    SURFACES,
    body_for,
    burst,
    expect_error,
    headers_for,
    make_plan,
    minute_room,
    new_org_key,
    remaining_requests,
    send,
    statuses,
)
from tests.support.live import (
    LiveGateway,
    needs_shared_redis,
    wait_for,
)

# --- two processes sharing Redis ---------------------------------------------------------------------------


@needs_shared_redis
@pytest.mark.parametrize("limit,per_process", [(7, 6), (13, 10)])
def test_two_processes_sharing_redis_admit_exactly_the_limit(
    both: tuple[LiveGateway, LiveGateway], limit: int, per_process: int
) -> None:
    minute_room()
    plan = make_plan(rpm=limit)
    key = new_org_key(plan, *both)
    first, second = both
    requests = []
    for i in range(per_process):
        requests.append((first, key, SURFACES[i % 3], {"text": f"p1 {i}"}))
        requests.append((second, key, SURFACES[(i + 1) % 3], {"text": f"p2 {i}"}))
    results = burst(requests)
    assert statuses(results) == {200: limit, 429: 2 * per_process - limit}
    admitted_remaining = sorted(
        remaining_requests(r, p) for r, (_, _, p, _) in zip(results, requests, strict=True) if r.status_code == 200
    )
    assert admitted_remaining == list(range(limit))  # each admission saw a distinct count: one shared counter
    for response, (_, _, path, _) in zip(results, requests, strict=True):
        if response.status_code == 429:
            assert f"requests per minute limit of {limit} reached" in expect_error(response, path, "rate_limited")
            assert int(response.headers["retry-after"]) >= 1
    # Both processes still refuse afterwards.
    assert [send(gw, key).status_code for gw in both] == [429, 429]


@needs_shared_redis
def test_two_processes_share_the_concurrency_slots(both: tuple[LiveGateway, LiveGateway], sim: SimulatorServer) -> None:
    plan = make_plan(concurrent=3)
    key = new_org_key(plan, *both)
    first, second = both
    sim.configure(token_delay_ms=200)
    with httpx.Client(timeout=20) as client:
        held = []
        for gw, text in ((first, "a"), (second, "b"), (first, "c")):
            request = client.build_request(
                "POST",
                f"{gw.url}{CHAT}",
                json=body_for(CHAT, text=text, max_tokens=40, stream=True),
                headers=headers_for(key, CHAT),
            )
            held.append(client.send(request, stream=True))
        assert [r.status_code for r in held] == [200, 200, 200]
        for gw in both:
            assert "concurrent requests limit of 3 reached" in expect_error(send(gw, key, CHAT), CHAT, "rate_limited")
        held[1].close()  # hung up on the second process: the slot frees for both
        wait_for(lambda: send(first, key, CHAT).status_code == 200, timeout=3)
        for response in held:
            response.close()
