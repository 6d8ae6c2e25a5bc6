"""Prices, spend caps and alerts in a real browser against the live portal and gateway: the owner reads the model's
price, sets a webhook, rotates the secret, spends, and a daily cap lowered below the day's spend brings an e-mail and
a webhook signed with the new secret, and refuses the next request."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.browser.support import CHROMIUM, DESKTOP, PortalServer, shot
from tests.support.live import ALIAS, wait_for, wait_until_gateway_caught_up
from tests.support.portal import PASSWORD
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
)

EMAIL = "caps@example.com"


def test_an_owner_sets_a_cap_and_a_webhook_and_traffic_past_it_alerts(portal: PortalServer, browser) -> None:  # noqa: ANN001
    from apikeys.services import apikey_create
    from billing.alerts import verify_signature
    from billing.models import SpendAlert
    from tests.support.portal import make_org, make_user
    from usage.models import UsageEvent

    user = make_user(EMAIL, name="Cap Owner")
    org = make_org("caps-co", owner=user, plan="pro")  # a plan that pays list prices (the free plan's are 0/0)
    raw = apikey_create(organization=org, name="backend", created_by=user).raw
    wait_until_gateway_caught_up(portal)
    receiver = Receiver()
    try:
        context = browser.new_context(viewport=DESKTOP)
        page = context.new_page()
        page.goto(f"{portal.url}/accounts/login/")
        page.fill("input[name=login]", EMAIL)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{portal.url}/portal/api-keys")

        page.goto(f"{portal.url}/portal/billing")
        row = page.locator(f'#model-prices tr[data-model="{ALIAS}"]')
        assert row.locator(".m-input").inner_text() == "$0.10" and row.locator(".m-output").inner_text() == "$0.40"

        # A bad cap: the form comes back with the field's error, nothing saved.
        page.fill("#id_daily_cap", "-1")
        page.click("#spend-settings button[type=submit]")
        assert "greater than or equal to 0" in page.inner_text("#spend-settings")

        # The webhook first, and its secret rotated; no daily cap yet.
        page.fill("#id_daily_cap", "")
        page.fill("#id_monthly_cap", "25")
        page.fill("#id_alert_webhook_url", receiver.url)
        page.click("#spend-settings button[type=submit]")
        page.wait_for_url(f"{portal.url}/portal/billing#alerts")
        assert "Spend caps and alerts are saved." in page.inner_text("main")
        assert page.input_value("#id_daily_cap") == "" and page.input_value("#id_monthly_cap") == "25.00"
        first = page.inner_text("#webhook-secret")
        assert first.startswith("whsec_")
        page.click("#rotate-webhook-secret button[type=submit]")
        page.wait_for_url(f"{portal.url}/portal/billing#alerts")
        secret = page.inner_text("#webhook-secret")
        assert secret.startswith("whsec_") and secret != first

        # A request under no daily cap. (A cap is enforced before a request: one whose reservation, its prompt and
        # max_tokens at the price, does not fit is refused, so it is a cap lowered below the day's spend that is
        # crossed at once, checked when it is saved.)
        with httpx.Client(base_url=portal.url, timeout=20) as http:
            answer = http.post(
                "/v1/chat/completions",
                json={"model": ALIAS, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 9},
                headers={"Authorization": f"Bearer {raw}"},
            )
            assert answer.status_code == 200, answer.text
        cost = int(answer.headers["x-cortensor-cost-micros"])
        assert cost > 1
        wait_for(lambda: UsageEvent.objects.filter(request_id=answer.headers["x-request-id"]).exists(), timeout=10)
        assert not receiver.requests  # $25 a month is far off

        page.fill("#id_daily_cap", "0.000001")  # one micro-dollar, below what the day has cost
        page.click("#spend-settings button[type=submit]")
        page.wait_for_url(f"{portal.url}/portal/billing#alerts")
        assert page.input_value("#id_daily_cap") == "0.000001" and page.input_value("#id_monthly_cap") == "25.00"
        assert "The daily spend cap of $0.000001 is reached" in page.inner_text('[data-cap-reached="daily"]')
        shot(page, "billing-spend-caps")
        context.close()

        wait_for(lambda: receiver.requests, timeout=15)
        ((headers, body),) = receiver.requests
        event = json.loads(body)
        assert (event["type"], event["data"]["period"], event["data"]["threshold_percent"]) == (
            "spend_cap.threshold_reached",
            "daily",
            100,
        )
        assert event["data"]["cap_micros"] == 1 and event["data"]["spent_micros"] == cost
        assert verify_signature(secret, body, headers["X-Cortensor-Signature"])
        assert not verify_signature(first, body, headers["X-Cortensor-Signature"])  # the rotated-out secret
        mail = portal.mail_to(EMAIL)
        assert "Caps-Co has reached its daily spend cap" in mail
        alert = SpendAlert.objects.get(organization=org, threshold=100)
        assert alert.webhook_status == "delivered: HTTP 200" and alert.email_status == "sent to 1"
        wait_until_gateway_caught_up(portal)  # the new cap
        with httpx.Client(base_url=portal.url, timeout=20) as http:
            refused = http.post(
                "/v1/chat/completions",
                json={"model": ALIAS, "messages": [{"role": "user", "content": "again"}], "max_tokens": 9},
                headers={"Authorization": f"Bearer {raw}"},
            )
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "spend_cap_reached", refused.text
    finally:
        receiver.stop()
