"""Token reservations: prompt plus max_tokens reserved at admission, settled from the real usage."""

from __future__ import annotations

from simulator import SimulatorServer
from tests.support.enforcement import (
    CHAT,
    ENVELOPE,
    MESSAGES,
    burst,
    chatml,
    error_details,
    expect_error,
    make_plan,
    minute_room,
    new_org_key,
    remaining_tokens,
    reservation,
    second_key,
    send,
    sim_answer,
    statuses,
)
from tests.support.live import (
    LiveGateway,
)

# --- token reservations -------------------------------------------------------------------------------------


def test_a_burst_cannot_overshoot_tokens_per_minute_and_settling_frees_the_budget(
    gateway: LiveGateway, sim: SimulatorServer
) -> None:
    minute_room()
    text, max_tokens = "count my tokens", 100
    prompt = chatml(text)
    reserve = reservation(prompt, max_tokens)
    prompt_tokens, completion_tokens = sim_answer(prompt, max_tokens)
    actual = prompt_tokens + completion_tokens
    assert actual < reserve
    tpm = 3 * reserve + reserve // 2  # room for three reservations, not four
    plan = make_plan(tpm=tpm)
    key = new_org_key(plan, gateway)

    # Eight at once, each held a second upstream, so nothing settles during the burst: exactly three fit.
    sim.configure(first_byte_delay_ms=1000)
    paths = [CHAT, MESSAGES] * 4
    results = burst([(gateway, key, p, {"text": text, "max_tokens": max_tokens}) for p in paths])
    assert statuses(results) == {200: 3, 429: 5}
    admitted = [(r, p) for r, p in zip(results, paths, strict=True) if r.status_code == 200]
    assert sorted(remaining_tokens(r, p) for r, p in admitted) == [tpm - 3 * reserve, tpm - 2 * reserve, tpm - reserve]
    for response, path in zip(results, paths, strict=True):
        if response.status_code == 429:
            message = expect_error(response, path, "rate_limited")
            assert message.startswith(f"API key tokens per minute limit of {tpm} reached; resets in "), message
            assert remaining_tokens(response, path) == tpm - 3 * reserve
        else:
            usage = response.json()["usage"]
            got = (
                (usage["prompt_tokens"], usage["completion_tokens"])
                if path == CHAT
                else (usage["input_tokens"], usage["output_tokens"])
            )
            assert got == (prompt_tokens, completion_tokens)
    sim.configure(first_byte_delay_ms=0)

    # Settled from real usage: the three used 3 * actual, so a fourth reservation fits now.
    assert tpm - 3 * reserve < reserve <= tpm - 3 * actual
    fourth = send(gateway, key, CHAT, text=text, max_tokens=max_tokens)
    assert fourth.status_code == 200
    assert remaining_tokens(fourth) == tpm - 3 * actual - reserve
    used = 4 * actual

    # A second held burst gets exactly what is left of the minute, no more.
    sim.configure(first_byte_delay_ms=1000)
    fits = (tpm - used) // reserve
    results = burst([(gateway, key, ENVELOPE, {"text": prompt, "max_tokens": max_tokens}) for _ in range(fits + 3)])
    assert statuses(results) == {200: fits, 429: 3}
    sim.configure(first_byte_delay_ms=0)
    used += fits * actual

    # Another key of the organization sees the organization's settled count (its own key count is zero).
    sibling = second_key(key)
    response = send(gateway, sibling, CHAT, text=text, max_tokens=max_tokens)
    if tpm - used >= reserve:
        assert response.status_code == 200
        assert remaining_tokens(response) == tpm - used - reserve
    else:
        expect_error(response, CHAT, "rate_limited")
        assert error_details(send(gateway, sibling, ENVELOPE, text=prompt, max_tokens=max_tokens))["scope"] == "organization"


def test_a_reservation_is_capped_at_the_plans_tokens_per_minute(gateway: LiveGateway, sim: SimulatorServer) -> None:
    minute_room()
    tpm = 300
    plan = make_plan(tpm=tpm)
    key = new_org_key(plan, gateway)
    text, max_tokens = "a long answer please", 2000  # estimate + 2000 is far above the whole minute's budget
    prompt_tokens, completion_tokens = sim_answer(chatml(text), max_tokens)

    sim.configure(first_byte_delay_ms=800)
    results = burst([(gateway, key, CHAT, {"text": text, "max_tokens": max_tokens}) for _ in range(3)])
    sim.configure(first_byte_delay_ms=0)
    # The whole budget is reserved by one request (it runs), the others wait for the minute.
    assert statuses(results) == {200: 1, 429: 2}
    ok = next(r for r in results if r.status_code == 200)
    assert remaining_tokens(ok) == 0
    for response in results:
        if response.status_code == 429:
            assert f"tokens per minute limit of {tpm} reached" in expect_error(response, CHAT, "rate_limited")

    # Settled: what it really used is gone from the budget, the rest is usable by a small request.
    small = send(gateway, key, CHAT, text="hi", max_tokens=10)
    assert small.status_code == 200
    assert remaining_tokens(small) == tpm - (prompt_tokens + completion_tokens) - reservation(chatml("hi"), 10)
