"""API keys in a real browser: a key with its own limits, edited, rotated with a grace period, an admin key that scripts
the management API, and a member who sees the keys without the buttons."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.browser.support import CHROMIUM, DESKTOP, PortalServer, shot
from tests.browser.test_portal_browser import chat_body, sign_in
from tests.support.live import ALIAS

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
)


def test_limits_edit_rotate_and_an_admin_key(portal: PortalServer, browser) -> None:  # noqa: ANN001
    from accounts.models import Membership
    from apikeys.models import ApiKey
    from tests.support.portal import add_member, make_org, make_user

    owner = make_user("olivia@example.com", name="Olivia")
    org = make_org("olivia-co", owner=owner, plan="pro")
    add_member(org, make_user("mia@example.com", name="Mia"), Membership.Role.MEMBER)
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    sign_in(page, portal, "olivia@example.com")

    # A key for one model with a daily cap in dollars.
    page.fill("input[name=name]", "capped")
    page.click("details.key-settings summary")
    page.check(f"input[name=allowed_models][value={ALIAS}]")
    page.fill("input[name=requests_per_minute]", "30")
    page.fill("input[name=spend_cap_daily]", "2.50")
    page.click("#create-key button[type=submit]")
    raw = page.inner_text("#new-key-value").strip()
    assert raw.startswith("ctr_")
    row = page.inner_text("#keys-table")
    assert f"{ALIAS} · 30/min · $2.50/day" in row
    key = ApiKey.objects.get(name="capped")
    assert (key.allowed_aliases, key.requests_per_minute, key.spend_cap_daily_micros) == ([ALIAS], 30, 2_500_000)
    shot(page, "key-with-limits")

    # Edit it: a monthly cap below the daily one is refused on the form, then a good one saved.
    page.click("#keys-table a:has-text('Edit')")
    page.fill("input[name=spend_cap_monthly]", "1")
    page.click("#edit-key button[type=submit]")
    assert "must be at most the key's monthly cap" in page.inner_text("main")
    shot(page, "key-edit-refused")
    page.fill("input[name=spend_cap_monthly]", "40")
    page.click("#edit-key button[type=submit]")
    page.wait_for_selector(".alert-success")
    assert f"{ALIAS} · 30/min · $2.50/day · $40.00/month" in page.inner_text("#keys-table")
    key.refresh_from_db()
    assert key.spend_cap_monthly_micros == 40_000_000

    # Rotate with an hour's grace: the new key is shown once, and both keys work.
    page.click("#keys-table a:has-text('Rotate')")
    page.select_option("select[name=grace_seconds]", "3600")
    shot(page, "rotate-confirm")
    page.click("#rotate-key button[type=submit]")
    new_raw = page.inner_text("#new-key-value").strip()
    assert new_raw.startswith("ctr_") and new_raw != raw
    assert "works until" in page.inner_text(".alert-success")
    assert page.locator("#keys-table a:has-text('Rotate')").count() == 1  # the old key is rotated already
    with httpx.Client(base_url=portal.url, timeout=20) as http:
        for secret in (raw, new_raw):
            answer = http.post("/v1/chat/completions", json=chat_body(), headers={"Authorization": f"Bearer {secret}"})
            assert answer.status_code == 200, answer.text

        # An admin key, made on the page, scripts the management API and is refused by /v1.
        page.goto(f"{portal.url}/portal/api-keys")
        page.fill("input[name=name]", "terraform")
        page.click("details.key-settings summary")
        page.select_option("select[name=kind]", "admin")
        page.click("#create-key button[type=submit]")
        admin_raw = page.inner_text("#new-key-value").strip()
        assert admin_raw.startswith("cta_")
        example = page.inner_text("#new-key-example")
        assert f"{portal.url}/portal/api-keys" in example and "/v1/" not in example
        shot(page, "admin-key-created")
        listed = http.get("/portal/api-keys", headers={"Authorization": f"Bearer {admin_raw}"})
        assert listed.status_code == 200
        assert sorted(k["name"] for k in listed.json()) == ["capped", "capped"]
        refused = http.post("/v1/chat/completions", json=chat_body(), headers={"Authorization": f"Bearer {admin_raw}"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    context.close()

    # A member sees the keys, and no button that changes one.
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    sign_in(page, portal, "mia@example.com")
    page.goto(f"{portal.url}/portal/api-keys")
    table = page.inner_text("#keys-table")
    assert "capped" in table and "terraform" in table
    for label in ("Edit", "Rotate", "Revoke"):
        assert page.locator(f"#keys-table a:has-text('{label}')").count() == 0
    assert page.locator("#create-key").count() == 0
    shot(page, "keys-as-member")
    context.close()
