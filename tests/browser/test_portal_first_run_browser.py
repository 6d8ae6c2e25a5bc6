"""The first run (issue 16): /portal/ is a checklist for a new organization, and its "waiting for your first request…"
ticks itself over the usage feed the moment the request lands, at desktop and phone width."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.browser.support import CHROMIUM, DESKTOP, PHONE, PortalServer, shot
from tests.browser.test_portal_browser import chat_body, sign_in
from tests.support.portal import make_org, make_user

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"browser tests need Chromium at {CHROMIUM}")


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_the_checklist_ticks_the_first_request_live(portal: PortalServer, browser, viewport) -> None:  # noqa: ANN001
    from apikeys.services import apikey_create

    email = f"first{viewport['width']}@example.com"
    user = make_user(email, name="First Runner")
    org = make_org(f"first-{viewport['width']}", owner=user)
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    sign_in(page, portal, email)

    page.goto(f"{portal.url}/portal/")
    assert page.locator("h1").inner_text() == f"Get started with {org.name}"
    assert page.locator("#step-email.is-done").count() == 1
    assert page.locator("#step-key.is-done").count() == 0 and page.locator("#step-key a", has_text="Create a key").is_visible()
    raw = apikey_create(organization=org, name="laptop", created_by=user).raw
    page.reload()
    assert page.locator("#step-key.is-done").count() == 1 and "“laptop”" in page.inner_text("#step-key")
    assert page.inner_text("#first-request-status") == "Waiting for your first request…"
    assert page.evaluate("document.scrollingElement.scrollWidth") <= viewport["width"]
    shot(page, f"first-run-waiting-{viewport['width']}")

    page.evaluate("window.__noReload = true")
    with httpx.Client(base_url=portal.url, timeout=20) as http:
        answer = http.post("/v1/chat/completions", json=chat_body(), headers={"Authorization": f"Bearer {raw}"})
    assert answer.status_code == 200
    request_id = answer.headers["x-request-id"]
    page.wait_for_selector("#step-request.is-done", timeout=10_000)
    assert page.evaluate("window.__noReload") is True  # ticked live, not by a reload
    status = page.inner_text("#first-request-status")
    assert status.startswith(f"We saw {request_id} (") and "with “laptop”" in status, status
    assert page.locator("#next-steps").is_visible()
    shot(page, f"first-run-done-{viewport['width']}")

    # A reload keeps every step ticked, from the database.
    page.reload()
    assert page.locator(".step.is-done").count() == 3
    assert request_id in page.inner_text("#first-request-status")
    context.close()
