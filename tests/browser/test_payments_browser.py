"""Paying in a real browser: an owner on a prepaid plan tops up through the (fake) Stripe Checkout page and comes back
to the new balance. Steps are tests/browser/support.py's, so a longer flow (spend, cap, refusal, top-up again) chains
them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.support import CHROMIUM, DESKTOP, PortalServer, balance, shot, sign_in, top_up
from tests.support.fake_stripe import FakeStripe
from tests.support.portal import PASSWORD

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
)

EMAIL = "payer@example.com"


def test_an_owner_on_a_prepaid_plan_tops_up_ten_dollars_and_sees_the_balance(
    portal: PortalServer,
    stripe_fake: FakeStripe,
    browser,  # noqa: ANN001
) -> None:
    from billing.models import LedgerEntry, Plan
    from tests.support.portal import make_org, make_user

    Plan.objects.create(slug="payg", name="Pay as you go", prepaid=True, requests_per_minute=60)
    user = make_user(EMAIL, name="Pat Payer")
    org = make_org("payg-co", owner=user, plan="payg")

    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    sign_in(page, portal, EMAIL, PASSWORD)
    page.goto(f"{portal.url}/portal/billing")
    assert balance(page) == "$0.00"
    assert page.inner_text("#kpi-plan") == "Pay as you go"

    top_up(page, portal, "10")

    assert page.inner_text("#payment-notice") == "Thank you: your payment is credited below."
    assert balance(page) == "$10.00"
    [session_id] = stripe_fake.sessions
    assert f"Stripe top-up, Checkout session {session_id}" in page.inner_text("#ledger")
    [credit] = LedgerEntry.objects.filter(organization=org)
    assert (credit.kind, credit.amount_micros) == ("credit", 10_000_000)
    [delivered] = stripe_fake.events
    assert delivered.type == "checkout.session.completed" and delivered.deliveries == [200]
    shot(page, "billing-topped-up")
    context.close()
