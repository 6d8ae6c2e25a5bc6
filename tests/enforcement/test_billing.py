"""Billing and usage accounting through live gateways: rows, tokens and debits exact."""

from __future__ import annotations

import math

from django.db.models import Sum

from billing.models import LedgerEntry, ModelPrice
from billing.selectors import organization_balance
from simulator import SimulatorServer
from tests.support.enforcement import (
    CHAT,
    ENVELOPE,
    MESSAGES,
    burst,
    expect_error,
    make_plan,
    minute_room,
    new_org_key,
    send,
    sim_answer,
    statuses,
    window_room,
)
from tests.support.live import (
    ALIAS,
    LiveGateway,
    wait_for,
    wait_until_usage_written,
)
from usage.models import RequestLog, UsageEvent

# --- billing and usage accounting ------------------------------------------------------------------------------------


def test_the_ledger_balances_to_the_token_after_a_concurrent_burst(gateway: LiveGateway, sim: SimulatorServer) -> None:
    input_price, output_price = 1_234_567, 2_345_679  # micro-units per million tokens: every request rounds up
    # The alias has its default price since it was synced (billing.signals): this test sets its own.
    ModelPrice.objects.update_or_create(
        alias=ALIAS, plan=None, defaults={"input_micros_per_million": input_price, "output_micros_per_million": output_price}
    )
    key = new_org_key("pro", gateway)
    kinds = [(CHAT, False), (CHAT, True), (MESSAGES, False), (MESSAGES, True), (ENVELOPE, False)]
    requests = []
    for i in range(40):
        path, stream = kinds[i % len(kinds)]
        requests.append((gateway, key, path, {"text": f"bill me {i}", "max_tokens": 5 + i, "stream": stream}))
    results = burst(requests)
    assert statuses(results) == {200: 40}
    rids = {r.headers["x-request-id"] for r in results}
    assert len(rids) == 40

    wait_until_usage_written(gateway)
    wait_for(lambda: UsageEvent.objects.filter(organization_id=key.organization_id).count() == 40)
    events = list(UsageEvent.objects.filter(organization_id=key.organization_id))
    assert {e.request_id for e in events} == rids
    assert all(e.status == "ok" and not e.estimated for e in events)

    # The token counts are the simulator's, request by request (matched on client_reference).
    sent = {b["client_reference"]: b for b in sim.stats()["last_bodies"] if isinstance(b, dict)}
    assert rids <= set(sent)
    for event in events:
        body = sent[event.request_id]
        assert (event.prompt_tokens, event.completion_tokens) == sim_answer(body["prompt"], body["max_tokens"])
        assert event.total_tokens == event.prompt_tokens + event.completion_tokens

    debits = LedgerEntry.objects.filter(organization_id=key.organization_id, kind=LedgerEntry.Kind.DEBIT)
    assert debits.count() == 40
    assert set(debits.values_list("request_id", flat=True)) == rids
    expected = sum(math.ceil((input_price * e.prompt_tokens + output_price * e.completion_tokens) / 1_000_000) for e in events)
    assert organization_balance(key.organization_id) == -expected
    by_request = {e.request_id: e for e in events}
    for debit in debits:
        event = by_request[debit.request_id]
        assert (debit.input_tokens, debit.output_tokens) == (event.prompt_tokens, event.completion_tokens)
        assert debit.amount_micros == -math.ceil(
            (input_price * event.prompt_tokens + output_price * event.completion_tokens) / 1_000_000
        )
    assert debits.aggregate(total=Sum("amount_micros"))["total"] == -expected


def test_a_429_is_logged_and_never_billed(gateway: LiveGateway) -> None:
    window_room(3600)
    minute_room()
    ModelPrice.objects.update_or_create(
        alias=ALIAS, plan=None, defaults={"input_micros_per_million": 1_000_000, "output_micros_per_million": 2_000_000}
    )
    plan = make_plan(rpm=2, window_requests=3)
    key = new_org_key(plan, gateway)
    ok = [send(gateway, key, CHAT, text=f"ok {i}") for i in range(2)]
    rate_limited = send(gateway, key, MESSAGES)
    assert [r.status_code for r in ok] == [200, 200] and rate_limited.status_code == 429
    quota_key = new_org_key(make_plan(window_requests=1), gateway)
    assert send(gateway, quota_key, ENVELOPE).status_code == 200
    quota = send(gateway, quota_key, ENVELOPE)
    expect_error(quota, ENVELOPE, "quota")

    wait_until_usage_written(gateway)
    for refused in (rate_limited, quota):
        rid = refused.headers["x-request-id"]
        log = wait_for(lambda rid=rid: RequestLog.objects.filter(request_id=rid).first())
        assert log.status == 429
        event = UsageEvent.objects.get(request_id=rid)
        assert (event.status, event.http_status, event.total_tokens) == ("error", 429, 0)
        assert not LedgerEntry.objects.filter(request_id=rid).exists()
    assert LedgerEntry.objects.filter(organization_id=key.organization_id, kind="debit").count() == 2
    assert LedgerEntry.objects.filter(organization_id=quota_key.organization_id, kind="debit").count() == 1
    codes = dict(
        UsageEvent.objects.filter(
            request_id__in=[rate_limited.headers["x-request-id"], quota.headers["x-request-id"]]
        ).values_list("request_id", "error_code")
    )
    assert codes == {
        rate_limited.headers["x-request-id"]: "rate_limit_exceeded",
        quota.headers["x-request-id"]: "insufficient_quota",
    }
