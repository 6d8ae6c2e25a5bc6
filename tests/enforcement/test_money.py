"""Money on the hot path, end to end through live gateways on PostgreSQL and Redis: prices in the gateway's state, the
cost of a request (header, usage row, ledger debit: one number), /v1/models pricing, unpriced aliases on paid plans,
prepaid balances and spend caps reserved in the admission, the key's own rate limit, and two processes under bursts."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from fractions import Fraction

import anthropic
import httpx
import openai
import pytest
import redis

from accounts.models import Organization
from apikeys.models import ApiKey
from billing.models import LedgerEntry, ModelPrice, Plan
from billing.selectors import organization_balance
from billing.services import ledger_entry_add
from gateway.limits import limiter
from gateway.limits.money import month_bounds
from tests.support.enforcement import (
    CHAT,
    ENVELOPE,
    MESSAGES,
    SURFACES,
    burst,
    expect_error,
    make_plan,
    minute_room,
    new_org_key,
    second_key,
    send,
    statuses,
)
from tests.support.live import (
    ALIAS,
    IssuedKey,
    LiveGateway,
    needs_shared_redis,
    wait_for,
    wait_until_gateway_caught_up,
    wait_until_usage_written,
)
from usage.models import UsageEvent

INPUT, OUTPUT = 1_500_000, 6_000_000  # micro-units per million tokens: $1.50 and $6 per million


def set_price(alias: str = ALIAS, input_micros: int = INPUT, output_micros: int = OUTPUT, plan: Plan | None = None) -> None:
    ModelPrice.objects.update_or_create(
        alias=alias,
        plan=plan,
        defaults={"input_micros_per_million": input_micros, "output_micros_per_million": output_micros},
    )


def cost_of(prompt: int, completion: int, input_micros: int = INPUT, output_micros: int = OUTPUT) -> int:
    return math.ceil(Fraction(prompt * input_micros + completion * output_micros, 1_000_000))


def usage_tokens(response: httpx.Response, path: str) -> tuple[int, int]:
    body = response.json()
    if path == MESSAGES:
        return body["usage"]["input_tokens"], body["usage"]["output_tokens"]
    usage = body["data"]["usage"] if path == ENVELOPE else body["usage"]
    return usage["prompt_tokens"], usage["completion_tokens"]


def debit_of(request_id: str) -> int:
    return -LedgerEntry.objects.get(kind="debit", request_id=request_id).amount_micros


def credit(key: IssuedKey, micros: int) -> None:
    ledger_entry_add(organization=Organization.objects.get(pk=key.organization_id), kind="credit", amount_micros=micros)


def reservation_in(refusal: httpx.Response) -> int:
    """The micro-units a refused request would have reserved, as its message says ("may cost up to $0.000123")."""
    dollars = refusal.json()["error"]["message"].split("may cost up to $")[1].split(")")[0].split(" ")[0]
    return int(Fraction(dollars) * 1_000_000)


@pytest.fixture(autouse=True)
def writer_on_the_gateways_prefix(gateway: LiveGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process writes credits as the Stripe webhook or the admin would: on the same limiter keys as the gateways
    (one deployment, one PORTAL_LIMITS_PREFIX; the live gateways of the tests get a prefix of their own)."""
    monkeypatch.setattr(limiter, "prefix", gateway.env["PORTAL_LIMITS_PREFIX"])


# --- the cost of a request ------------------------------------------------------------------------------------------


def test_the_cost_header_the_usage_row_and_the_debit_are_one_number_and_a_price_change_reaches_the_gateway(
    gateway: LiveGateway,
) -> None:
    set_price()
    key = new_org_key(make_plan(), gateway)
    for path in SURFACES:
        response = send(gateway, key, path, text=f"what does {path} cost", max_tokens=24)
        assert response.status_code == 200, response.text
        expected = cost_of(*usage_tokens(response, path))
        assert expected > 0
        assert response.headers["x-cortensor-cost-micros"] == str(expected)
        assert response.headers["x-cortensor-cost-usd"] == f"0.{expected:06d}"
        wait_until_usage_written(gateway)
        rid = response.headers["x-request-id"]
        assert UsageEvent.objects.get(request_id=rid).cost_micros == expected
        assert debit_of(rid) == expected

    # Staff change the price: every process reloads its table, the next request costs the new price; and the row
    # made under the old price keeps the old cost (the debit is the row's, never re-priced at write time).
    set_price(input_micros=INPUT * 10, output_micros=OUTPUT * 10)
    wait_until_gateway_caught_up(gateway)
    response = send(gateway, key, CHAT, text="and now?", max_tokens=24)
    assert response.headers["x-cortensor-cost-micros"] == str(cost_of(*usage_tokens(response, CHAT), INPUT * 10, OUTPUT * 10))
    # A plan's own price wins over the alias-wide one.
    plan = Plan.objects.get(slug=Organization.objects.get(pk=key.organization_id).plan.slug)
    set_price(input_micros=1_000_000, output_micros=2_000_000, plan=plan)
    wait_until_gateway_caught_up(gateway)
    response = send(gateway, key, CHAT, text="on my plan?", max_tokens=24)
    assert response.headers["x-cortensor-cost-micros"] == str(cost_of(*usage_tokens(response, CHAT), 1_000_000, 2_000_000))


def test_a_stream_is_billed_on_its_usage_row_exactly(gateway: LiveGateway) -> None:
    set_price()
    key = new_org_key(make_plan(), gateway)
    response = send(gateway, key, CHAT, text="stream me", max_tokens=24, stream=True)
    assert response.status_code == 200
    assert "x-cortensor-cost-micros" not in response.headers  # headers leave before the tokens are known
    wait_until_usage_written(gateway)
    row = UsageEvent.objects.get(request_id=response.headers["x-request-id"])
    assert row.cost_micros == cost_of(row.prompt_tokens, row.completion_tokens) > 0
    assert debit_of(row.request_id) == row.cost_micros


def test_a_chat_streams_final_usage_event_carries_its_cost_and_the_openai_sdk_reads_it(gateway: LiveGateway) -> None:
    set_price()
    key = new_org_key(make_plan(), gateway)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key.raw, max_retries=0)
    stream = client.chat.completions.with_raw_response.create(
        model=ALIAS,
        messages=[{"role": "user", "content": "stream the cost"}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    request_id = stream.headers["x-request-id"]
    chunks = list(stream.parse())
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    cost = (final.usage.model_extra or {})["cost_micros"]
    assert cost == cost_of(final.usage.prompt_tokens, final.usage.completion_tokens) > 0
    assert all(c.usage is None for c in chunks[:-1])
    wait_until_usage_written(gateway)
    assert UsageEvent.objects.get(request_id=request_id).cost_micros == cost == debit_of(request_id)


# --- /v1/models -------------------------------------------------------------------------------------------------------


def test_models_show_the_plans_prices_and_both_sdks_still_parse_them(gateway: LiveGateway) -> None:
    set_price(input_micros=500_000, output_micros=1_500_000)
    key = new_org_key(make_plan(), gateway)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key.raw, max_retries=0)
    (model,) = [m for m in client.models.list().data if m.id == ALIAS]
    extra = model.model_extra or {}
    assert extra["pricing"] == {"prompt": "0.0000005", "completion": "0.0000015"}
    assert isinstance(extra["max_output_tokens"], int) and "context_length" in extra
    assert client.models.retrieve(ALIAS).model_extra["pricing"] == extra["pricing"]  # type: ignore[index]
    listed = anthropic.Anthropic(base_url=gateway.url, api_key=key.raw, max_retries=0).models.list()
    assert ALIAS in [m.id for m in listed.data]


def test_a_paid_plan_refuses_an_unpriced_alias_on_every_surface_and_a_free_plan_serves_it(gateway: LiveGateway) -> None:
    ModelPrice.objects.filter(alias=ALIAS).delete()
    paid = new_org_key(make_plan(monthly_price_micros=20_000_000), gateway)
    for path in SURFACES:
        response = send(gateway, paid, path)
        assert "no price" in expect_error(response, path, "model_not_priced")
    listed = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {paid.raw}"}).json()["data"]
    assert ALIAS not in [m["id"] for m in listed]
    free = new_org_key(make_plan(), gateway)
    response = send(gateway, free, CHAT)
    assert response.status_code == 200 and response.headers["x-cortensor-cost-micros"] == "0"
    listed = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {free.raw}"}).json()["data"]
    assert [m["pricing"] for m in listed if m["id"] == ALIAS] == [None]


# --- prepaid balances -------------------------------------------------------------------------------------------------


@needs_shared_redis  # the credit is written by this process, as the Stripe webhook would be: Redis carries it over
def test_a_prepaid_balance_refuses_what_it_cannot_pay_and_a_credit_is_spendable_within_a_second(gateway: LiveGateway) -> None:
    set_price()
    key = new_org_key(make_plan(prepaid=True), gateway)
    for path in SURFACES:
        response = send(gateway, key, path, max_tokens=16)
        message = expect_error(response, path, "insufficient_balance")
        assert "retry-after" not in response.headers
        assert "prepaid balance is $0.00" in message
    assert response.json()["error"]["details"]["balance_micros"] == 0  # the envelope's details

    credit(key, 1_000)  # $0.001: a few requests' worth
    since = time.monotonic()
    wait_for(lambda: send(gateway, key, CHAT, max_tokens=16).status_code == 200, timeout=2)
    assert time.monotonic() - since < 1.5
    # Spend until refused: every admitted request was paid for, and the last refusal says what is left.
    served = 1
    while (response := send(gateway, key, CHAT, max_tokens=16)).status_code == 200:
        served += 1
        assert served < 50
    expect_error(response, CHAT, "insufficient_balance")
    wait_until_usage_written(gateway)
    billed = sum(UsageEvent.objects.filter(organization_id=key.organization_id).values_list("cost_micros", flat=True))
    debited = LedgerEntry.objects.filter(organization_id=key.organization_id, kind="debit").values_list(
        "amount_micros", flat=True
    )
    assert billed == -sum(debited) > 0
    assert organization_balance(key.organization_id) == 1_000 - billed
    assert 0 <= 1_000 - billed < reservation_in(response)  # refused only when the balance could not pay one more


@needs_shared_redis
def test_a_flushed_redis_is_seeded_from_the_ledger_and_grants_nothing(gateway: LiveGateway) -> None:
    set_price()
    key = new_org_key(make_plan(prepaid=True), gateway)
    credit(key, 500)
    wait_for(lambda: send(gateway, key, CHAT, max_tokens=8).status_code == 200, timeout=2)
    wait_until_usage_written(gateway)
    spent = -sum(
        LedgerEntry.objects.filter(organization_id=key.organization_id, kind="debit").values_list("amount_micros", flat=True)
    )
    assert spent > 0
    store = redis.Redis.from_url(gateway.env["REDIS_URL"])
    prefix = gateway.env["PORTAL_LIMITS_PREFIX"]
    gone = store.delete(f"{prefix}:{{o{key.organization_id}}}:cred", f"{prefix}:{{o{key.organization_id}}}:spent")
    assert gone == 2
    assert send(gateway, key, CHAT, max_tokens=8).status_code == 200  # seeded again: the balance that is left
    held = int(store.get(f"{prefix}:{{o{key.organization_id}}}:cred") or 0)
    assert held == 500


# --- spend caps and the key's own rate limit --------------------------------------------------------------------------


def test_an_organization_daily_cap_refuses_on_every_surface_naming_the_cap_and_its_reset(gateway: LiveGateway) -> None:
    set_price()
    key = new_org_key(make_plan(), gateway)
    org = Organization.objects.get(pk=key.organization_id)
    org.spend_cap_daily_micros = 300
    org.save()  # the change reaches the gateways (scope org)
    wait_until_gateway_caught_up(gateway)
    served = 0
    while (response := send(gateway, key, CHAT, max_tokens=16)).status_code == 200:
        served += 1
        assert served < 50
    assert served >= 1
    now = time.time()
    reset = (now // 86400 + 1) * 86400
    for path in SURFACES:
        response = send(gateway, key, path, max_tokens=16)
        message = expect_error(response, path, "spend_cap")
        assert "organization daily spend cap of $0.0003 reached" in message
        assert datetime.fromtimestamp(reset, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ") in message
        assert abs(int(response.headers["retry-after"]) - (reset - now)) < 5
    wait_until_usage_written(gateway)
    billed = sum(UsageEvent.objects.filter(organization_id=key.organization_id).values_list("cost_micros", flat=True))
    assert billed <= 300


def test_a_key_monthly_cap_binds_that_key_only(gateway: LiveGateway) -> None:
    set_price()
    key = new_org_key(make_plan(), gateway)
    row = ApiKey.objects.get(pk=key.key_id)
    row.spend_cap_monthly_micros = 1
    row.save()
    wait_until_gateway_caught_up(gateway)
    response = send(gateway, key, ENVELOPE, max_tokens=16)
    assert "API key monthly spend cap of $0.000001 reached" in expect_error(response, ENVELOPE, "spend_cap")
    assert response.json()["error"]["details"]["reset_seconds"] == pytest.approx(
        month_bounds(time.time())[1] - time.time(), abs=5
    )
    assert send(gateway, second_key(key), CHAT).status_code == 200  # the organization's other key is not capped


def test_the_keys_own_requests_per_minute_is_one_more_limit(gateway: LiveGateway) -> None:
    minute_room()
    key = new_org_key(make_plan(rpm=100), gateway)
    row = ApiKey.objects.get(pk=key.key_id)
    row.requests_per_minute = 2
    row.save()
    wait_until_gateway_caught_up(gateway)
    assert [send(gateway, key, CHAT).status_code for _ in range(3)] == [200, 200, 429]
    assert "API key requests per minute limit of 2 reached" in expect_error(send(gateway, key, CHAT), CHAT, "rate_limited")


# --- two processes, one Redis, one database ---------------------------------------------------------------------------


@needs_shared_redis
def test_a_burst_on_two_processes_never_bills_past_a_daily_cap_or_a_prepaid_balance(
    both: tuple[LiveGateway, LiveGateway],
) -> None:
    set_price()
    first, second = both
    capped = new_org_key(make_plan(), first, second)
    org = Organization.objects.get(pk=capped.organization_id)
    org.spend_cap_daily_micros = 1_000
    org.save()
    prepaid = new_org_key(make_plan(prepaid=True), first, second)
    credit(prepaid, 1_000)
    for gw in both:
        wait_until_gateway_caught_up(gw)
    requests = [
        (gw, key, SURFACES[i % 3], {"text": f"burst {i}", "max_tokens": 16})
        for i in range(12)
        for gw in both
        for key in (capped, prepaid)
    ]
    results = burst(requests)
    for gw in both:
        wait_until_usage_written(gw)
    largest_reservation = 0
    for key, limit, kind in ((capped, 1_000, "spend_cap"), (prepaid, 1_000, "insufficient_balance")):
        mine = [(r, path) for r, (_, k, path, _) in zip(results, requests, strict=True) if k is key]
        counts = statuses([r for r, _ in mine])
        assert counts.get(200, 0) >= 1 and sum(n for s, n in counts.items() if s != 200) >= 1, counts
        for response, path in mine:
            if response.status_code != 200:
                expect_error(response, path, kind)
                largest_reservation = max(largest_reservation, reservation_in(response))
        billed = -sum(
            LedgerEntry.objects.filter(organization_id=key.organization_id, kind="debit").values_list("amount_micros", flat=True)
        )
        served = UsageEvent.objects.filter(organization_id=key.organization_id, status="ok").count()
        assert served == counts[200]
        assert billed <= limit + largest_reservation, (billed, limit, largest_reservation)
