"""Money end to end in a real browser, the flow of issue 13's "Done when": an owner on a prepaid plan with nothing in
the balance is refused (402), tops up through the (fake) Stripe Checkout page, spends, sets a daily spend cap on the
billing page, is refused at the cap (429), raises it, spends the balance down to a refusal and tops up again.

The /v1 calls go to the same live daphne the browser uses (the portal and the gateway are one process), so the
credits, the caps and the spend all go through the real admission in Redis, the usage writer and the ledger in
PostgreSQL. Every number is checked to the micro-dollar: each answer's x-cortensor-cost-micros header, its usage row
and its ledger debit are one number; the balance the page shows is the credits minus the debits; when the cap refused,
the day's spend was within the cap (the admission reserves a request's most before serving it, so one request at a
time never passes it) and the next request's reservation did not fit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.browser.support import CHROMIUM, DESKTOP, PortalServer, balance, shot, sign_in, top_up
from tests.support.fake_stripe import FakeStripe
from tests.support.live import ALIAS, needs_shared_redis, wait_for, wait_until_gateway_caught_up
from tests.support.portal import PASSWORD

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
)

EMAIL = "spender@example.com"
# Prices that make each answer about a dollar: max_tokens=5 and the simulator answers at least 8 tokens, so every
# answer is exactly 5 output tokens ($0.20 each: $1.00) plus its prompt at $0.001 a token.
INPUT_PER_MILLION = 1_000_000_000  # $1,000 per million input tokens: 1,000 micro-dollars a token
OUTPUT_PER_MILLION = 200_000_000_000  # $200,000 per million output tokens: 200,000 micro-dollars a token
MAX_TOKENS = 5


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict
    request_id: str
    cost_micros: int | None  # the x-cortensor-cost-micros header of an answer


def ask(portal: PortalServer, raw_key: str, n: int) -> Answer:
    """One /v1 chat request with the owner's key; a 200 is waited for until its usage row and debit are written."""
    from billing.models import LedgerEntry

    response = httpx.post(
        f"{portal.url}/v1/chat/completions",
        json={"model": ALIAS, "messages": [{"role": "user", "content": f"spend {n}"}], "max_tokens": MAX_TOKENS},
        headers={"Authorization": f"Bearer {raw_key}"},
        timeout=20,
    )
    request_id = response.headers["x-request-id"]
    cost = response.headers.get("x-cortensor-cost-micros")
    if response.status_code == 200:
        wait_for(lambda: LedgerEntry.objects.filter(kind="debit", request_id=request_id).exists(), timeout=10)
    return Answer(response.status_code, response.json(), request_id, int(cost) if cost is not None else None)


def expected_cost(answer: Answer) -> int:
    """What the answer's tokens cost at the test's prices, from the usage the answer itself reports."""
    from billing.services import request_cost_micros

    usage = answer.body["usage"]
    assert usage["completion_tokens"] == MAX_TOKENS
    return request_cost_micros(
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
        input_micros_per_million=INPUT_PER_MILLION,
        output_micros_per_million=OUTPUT_PER_MILLION,
    )


def refused(answer: Answer, status: int, code: str) -> dict:
    """The OpenAI-shaped error of a refusal, checked: the status, the code and the type; no cost, no debit."""
    from billing.models import LedgerEntry

    assert answer.status == status, answer.body
    error = answer.body["error"]
    assert error["code"] == code, error
    assert error["type"] == "insufficient_quota", error
    assert answer.cost_micros in (None, 0)
    assert not LedgerEntry.objects.filter(request_id=answer.request_id).exists()
    return error


@needs_shared_redis  # the admission as production runs it: balance and caps in Redis (the embedded store is not run here)
def test_top_up_spend_cap_refused_raise_spend_out_and_top_up_again(
    portal: PortalServer,
    stripe_fake: FakeStripe,
    browser,  # noqa: ANN001
) -> None:
    from apikeys.services import apikey_create
    from billing.models import LedgerEntry, ModelPrice, Plan
    from billing.money import format_micros_cents, format_micros_exact
    from tests.support.portal import make_org, make_user
    from usage.models import UsageEvent

    # Not across midnight UTC: the daily cap and the day's spend must be the same day's.
    left = 86400 - time.time() % 86400
    if left < 180:
        time.sleep(left + 1)

    plan = Plan.objects.create(slug="payg", name="Pay as you go", prepaid=True, requests_per_minute=600)
    ModelPrice.objects.create(
        plan=plan, alias=ALIAS, input_micros_per_million=INPUT_PER_MILLION, output_micros_per_million=OUTPUT_PER_MILLION
    )
    user = make_user(EMAIL, name="Sam Spender")
    org = make_org("spend-co", owner=user, plan="payg")
    raw = apikey_create(organization=org, name="backend", created_by=user).raw
    wait_until_gateway_caught_up(portal)
    answers: list[Answer] = []
    n = iter(range(1, 1000))

    def spend() -> Answer:
        answer = ask(portal, raw, next(n))
        answers.append(answer)
        if answer.status == 200:
            assert answer.cost_micros == expected_cost(answer), answer.body["usage"]
        return answer

    def ledger() -> tuple[int, int]:
        """(credits, debits) of the organization's ledger, each positive, in micro-dollars."""
        entries = list(LedgerEntry.objects.filter(organization=org).values_list("kind", "amount_micros"))
        return (sum(a for k, a in entries if k == "credit"), -sum(a for k, a in entries if k == "debit"))

    def shows_balance(page, micros: int) -> None:  # noqa: ANN001
        page.goto(f"{portal.url}/portal/billing")
        assert balance(page) == format_micros_cents(micros)
        assert page.get_attribute("#kpi-balance", "title") == format_micros_exact(micros)

    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    sign_in(page, portal, EMAIL, PASSWORD)

    # 1. Nothing in the balance: the first request is refused before any router call, and says what it would cost.
    shows_balance(page, 0)
    assert "new requests are refused with insufficient_quota" in page.inner_text("#balance-empty")
    error = refused(spend(), 402, "insufficient_quota")
    assert "prepaid balance is $0.00" in error["message"], error

    # 2. A $5 top-up through Stripe's (fake) Checkout page: credited, shown, and spendable at once.
    top_up(page, portal, "5")
    assert page.inner_text("#payment-notice") == "Thank you: your payment is credited below."
    assert balance(page) == "$5.00"
    assert not page.locator("#balance-empty").count()
    first, second = spend(), spend()
    assert (first.status, second.status) == (200, 200), (first.body, second.body)
    spent_before_cap = first.cost_micros + second.cost_micros
    shows_balance(page, 5_000_000 - spent_before_cap)

    # 3. The usage page shows each request's cost, the refusal with its code, and the total billed.
    page.goto(f"{portal.url}/portal/usage")
    for answer in (first, second):
        row = page.locator(f'#latest tr[data-request-id="{answer.request_id}"]')
        assert row.locator(".cost").inner_text() == format_micros_exact(answer.cost_micros)
    assert "402 · insufficient_quota" in page.locator(f'#latest tr[data-request-id="{answers[0].request_id}"]').inner_text()
    assert page.get_attribute("#kpi-cost", "data-micros") == str(spent_before_cap)

    # 4. A daily cap of $3.50 on the billing page: today's $2.0x leaves room for one more request, not two.
    cap = 3_500_000
    page.goto(f"{portal.url}/portal/billing")
    page.fill("#id_daily_cap", "3.50")
    page.click("#spend-settings button[type=submit]")
    page.wait_for_url(f"{portal.url}/portal/billing#alerts")
    assert "Spend caps and alerts are saved." in page.inner_text("main")
    assert page.input_value("#id_daily_cap") == "3.50"
    wait_until_gateway_caught_up(portal)

    under_cap: list[Answer] = []
    while (answer := spend()).status == 200:
        under_cap.append(answer)
        assert len(under_cap) < 5, "the cap never refused"
    error = refused(answer, 429, "spend_cap_reached")
    spent_today = spent_before_cap + sum(a.cost_micros for a in under_cap)
    assert len(under_cap) == 1
    # Refused at the cap, not before: the next request's reservation (its prompt estimate and max_tokens at the
    # price, at least the $1.00 of its output) did not fit; and nothing was billed beyond the cap.
    assert spent_today + MAX_TOKENS * OUTPUT_PER_MILLION // 1_000_000 > cap
    assert spent_today <= cap
    assert "organization daily spend cap of $3.50 reached" in error["message"], error
    shows_balance(page, 5_000_000 - spent_today)
    assert page.inner_text('#cap-status li[data-cap="daily"] .cap-spent') == format_micros_exact(spent_today)
    assert page.inner_text('#cap-status li[data-cap="daily"] .cap-limit') == "$3.50"

    # 5. The owner raises the cap: requests go through again, until the balance cannot pay for the next one.
    page.fill("#id_daily_cap", "20")
    page.click("#spend-settings button[type=submit]")
    page.wait_for_url(f"{portal.url}/portal/billing#alerts")
    assert page.input_value("#id_daily_cap") == "20.00"
    wait_until_gateway_caught_up(portal)
    after_raise: list[Answer] = []
    while (answer := spend()).status == 200:
        after_raise.append(answer)
        assert len(after_raise) < 5, "the balance never ran out"
    assert len(after_raise) == 1  # $5 pays for four requests of $1.0x
    refused(answer, 402, "insufficient_quota")
    credits, debits = ledger()
    assert credits - debits < answer_floor() and credits - debits >= 0
    shows_balance(page, credits - debits)

    # 6. Top-up again: spendable at once.
    top_up(page, portal, "5")
    assert balance(page) == format_micros_cents(credits - debits + 5_000_000)
    again = spend()
    assert again.status == 200, again.body
    shot(page, "money-flow-billing")

    # The money, exactly: one debit per answered request, equal to its header and its usage row; refusals cost
    # nothing; the balance the page shows is the credits minus the debits.
    credits, debits = ledger()
    assert credits == 10_000_000
    paid = [a for a in answers if a.status == 200]
    assert [a.status for a in answers] == [402, 200, 200, 200, 429, 200, 402, 200]
    debited = dict(LedgerEntry.objects.filter(organization=org, kind="debit").values_list("request_id", "amount_micros"))
    assert debited == {a.request_id: -a.cost_micros for a in paid}
    rows = dict(UsageEvent.objects.filter(organization=org).values_list("request_id", "cost_micros"))
    assert rows == {a.request_id: a.cost_micros or 0 for a in answers}
    assert debits == sum(a.cost_micros for a in paid)
    shows_balance(page, credits - debits)
    assert format_micros_exact(credits - debits) in page.inner_text("#ledger-title + span")

    page.goto(f"{portal.url}/portal/usage")
    assert page.get_attribute("#kpi-cost", "data-micros") == str(debits)
    assert "429 · spend_cap_reached" in page.locator(f'#latest tr[data-request-id="{answers[4].request_id}"]').inner_text()
    shot(page, "money-flow-usage")
    context.close()


def answer_floor() -> int:
    """The least a request of this test can cost: its five output tokens."""
    return MAX_TOKENS * OUTPUT_PER_MILLION // 1_000_000
