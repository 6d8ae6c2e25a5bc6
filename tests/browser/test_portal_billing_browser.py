"""The billing page in a real browser, near the limit: real gateway traffic fills the allowance the page reports."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.browser.support import CHROMIUM, DESKTOP, PHONE, PortalServer, shot
from tests.support.live import ALIAS, needs_shared_redis, wait_until_gateway_caught_up, wait_until_usage_written
from tests.support.portal import PASSWORD

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
)

EMAIL = "billing@example.com"
WINDOW_S = 3 * 3600


def sign_in(page, portal: PortalServer) -> None:  # noqa: ANN001
    page.goto(f"{portal.url}/accounts/login/")
    page.fill("input[name=login]", EMAIL)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{portal.url}/portal/api-keys")


@needs_shared_redis  # the page reads the limiter's Redis counters of another process
def test_billing_page_near_the_limit_on_desktop_and_phone(portal: PortalServer, browser) -> None:  # noqa: ANN001
    from apikeys.services import apikey_create
    from billing.models import ModelPrice, Plan
    from billing.services import ledger_entry_add
    from tests.support.portal import make_org, make_user

    # The free plan with a 10-request window, so nine real requests put the organization at 90%.
    Plan.objects.filter(slug="free").update(window_requests=10, weekly_requests=200)
    Plan.objects.get(slug="free").save()  # a save, not only an update: the gateway reloads its plans
    ModelPrice.objects.update_or_create(
        alias=ALIAS, plan=None, defaults={"input_micros_per_million": 250_000, "output_micros_per_million": 1_250_000}
    )
    user = make_user(EMAIL, name="Bill Ing")
    org = make_org("billing-co", owner=user)
    ledger_entry_add(organization=org, kind="credit", amount_micros=5_000_000, memo="Welcome credit")
    raw = apikey_create(organization=org, name="backend", created_by=user).raw
    wait_until_gateway_caught_up(portal)

    # Not across a window boundary: the nine requests and the page must see the same window.
    left = WINDOW_S - time.time() % WINDOW_S
    if left < 60:
        time.sleep(left + 1)
    with httpx.Client(base_url=portal.url, timeout=20) as http:
        for i in range(9):
            answer = http.post(
                "/v1/chat/completions",
                json={"model": ALIAS, "messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": 9},
                headers={"Authorization": f"Bearer {raw}"},
            )
            assert answer.status_code == 200, answer.text
        # The limiter's own view, which the page must agree with.
        assert answer.headers["x-ratelimit-remaining-requests"] == "1"
    wait_until_usage_written(portal)

    for name, options in (
        ("desktop", {"viewport": DESKTOP}),
        ("phone", {"viewport": PHONE, "is_mobile": True, "has_touch": True}),
    ):
        context = browser.new_context(**options)
        page = context.new_page()
        sign_in(page, portal)
        page.goto(f"{portal.url}/portal/billing")
        alert = page.inner_text(".allowance-alert")
        assert "You have used 90% of your 3-hour request allowance (9 of 10 requests)." in alert, alert
        assert "See what Pro changes" in alert
        window = page.locator('.allowance[data-allowance="window_requests"]')
        assert window.get_attribute("data-counted-by") == "limiter"
        assert window.locator(".allowance-used").inner_text() == "9" and "90% used" in window.inner_text()
        assert page.locator('.allowance[data-allowance="weekly_requests"] .allowance-used').inner_text() == "9"
        assert page.locator("#ledger tbody tr").count() == 10  # nine debits and the credit
        assert page.inner_text("#kpi-plan") == "Free"
        assert "Welcome credit" in page.inner_text("#ledger")
        assert page.locator("#plan-compare").is_visible()
        # Nothing scrolls the page sideways; wide tables scroll inside their card.
        assert page.evaluate("document.documentElement.scrollWidth") <= options["viewport"]["width"], name
        shot(page, f"billing-near-limit-{name}")
        context.close()
