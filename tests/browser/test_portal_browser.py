"""The portal in a real browser: sign up to revocation, the live usage feed, the playground, and every page on a phone."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from simulator import simulated_tokens
from tests.browser.support import CHROMIUM, DESKTOP, PHONE, PortalServer, link_in, shot
from tests.support.live import ALIAS
from tests.support.portal import PASSWORD

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
)

EMAIL = "ada@example.com"


def chat_body(text: str = "hi") -> dict[str, object]:
    return {"model": ALIAS, "messages": [{"role": "user", "content": text}], "max_tokens": 9}


def sign_in(page, portal: PortalServer, email: str, password: str = PASSWORD) -> None:  # noqa: ANN001
    page.goto(f"{portal.url}/accounts/login/")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{portal.url}/portal/api-keys")


def make_verified_user(email: str) -> None:
    from tests.support.portal import make_org, make_user

    user = make_user(email, name="Grace Hopper")
    make_org(email.split("@")[0].replace(".", "-"), owner=user)


def test_sign_up_create_copy_call_watch_live_revoke(portal: PortalServer, browser) -> None:  # noqa: ANN001
    context = browser.new_context(viewport=DESKTOP, permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    started = time.time()

    # Sign up, then confirm the address from the mail the server wrote.
    page.goto(f"{portal.url}/accounts/signup/")
    shot(page, "signup")
    page.fill("input[name=email]", EMAIL)
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{portal.url}/accounts/confirm-email/")
    assert "Confirm your e-mail address" in page.content()
    assert page.inner_text("#pending-address") == EMAIL
    assert page.locator("#resend button", has_text="Send the link again").is_visible()
    page.click("#change-address summary")
    assert page.locator("#id_change_email").input_value() == EMAIL
    shot(page, "verify-email")
    confirm = link_in(portal.mail_to(EMAIL, after=started), "/accounts/confirm-email/")
    assert confirm.startswith(portal.url)
    page.goto(confirm)
    page.click("button[type=submit]")
    page.wait_for_url(f"{portal.url}/portal/")  # a new account lands on the first-run checklist
    assert "Get started with ada's workspace" in page.inner_text("h1")
    assert page.locator("#step-email.is-done").count() == 1 and page.locator("#step-key.is-done").count() == 0
    page.click("#step-key a")
    page.wait_for_url(f"{portal.url}/portal/api-keys#create-key")
    assert "ada's workspace" in page.inner_text(".org-name")
    assert "No keys yet." in page.inner_text("main")

    # Create a key: shown once, copied with the button.
    page.fill("input[name=name]", "browser test")
    page.click("#create-key button[type=submit]")
    raw = page.inner_text("#new-key-value").strip()
    assert raw.startswith("ctr_")
    page.click("button[data-copy-target=new-key-value]")
    page.wait_for_selector("button[data-copy-target=new-key-value].is-done")
    assert page.evaluate("navigator.clipboard.readText()") == raw
    shot(page, "key-created")
    page.goto(f"{portal.url}/portal/api-keys")
    assert raw not in page.content()

    # The usage page's live feed shows the request made with the key, without a reload.
    page.goto(f"{portal.url}/portal/usage")
    page.wait_for_selector("#live-status[data-state=open]")
    page.evaluate("window.__noReload = true")
    with httpx.Client(base_url=portal.url, timeout=20) as http:
        answer = http.post("/v1/chat/completions", json=chat_body(), headers={"Authorization": f"Bearer {raw}"})
        assert answer.status_code == 200
        request_id = answer.headers["x-request-id"]
        row = page.wait_for_selector(f'#latest tr[data-request-id="{request_id}"]', timeout=10_000)
        assert page.evaluate("window.__noReload") is True
        assert "browser test" in row.inner_text() and ALIAS in row.inner_text()
        assert page.inner_text("#kpi-requests") == "1"
        shot(page, "usage-live")

        # Revoke it in the page; the gateway refuses it within a moment.
        page.goto(f"{portal.url}/portal/api-keys")
        page.click("#keys-table a:has-text('Revoke')")
        page.wait_for_selector("text=Every app using this key gets")
        shot(page, "revoke-confirm")
        page.click("button:has-text('Revoke key')")
        page.wait_for_selector(".alert-success")
        assert "Revoked" in page.inner_text("#keys-table")
        deadline = time.monotonic() + 5
        status = 0
        while time.monotonic() < deadline:
            status = http.post("/v1/chat/completions", json=chat_body(), headers={"Authorization": f"Bearer {raw}"}).status_code
            if status == 401:
                break
            time.sleep(0.05)
        assert status == 401
    shot(page, "key-revoked")
    context.close()


def test_playground_streams_the_answer(portal: PortalServer, browser, sim) -> None:  # noqa: ANN001
    make_verified_user("grace@example.com")
    sim.configure(token_delay_ms=60)  # slow enough to see the answer grow
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    sign_in(page, portal, "grace@example.com")
    page.goto(f"{portal.url}/portal/playground")
    page.fill("#pg-prompt", "hi")
    page.press("#pg-prompt", "Enter")
    page.wait_for_function(
        "() => { const b = document.querySelector('.msg-assistant.is-streaming'); return b && b.textContent.trim().split(' ').length >= 2; }"
    )
    partial = page.inner_text(".msg-assistant")
    shot(page, "playground-streaming")
    page.wait_for_selector(".msg-assistant:not(.is-streaming)", timeout=15_000)
    expected = "".join(simulated_tokens("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", 256)[0])
    assert page.inner_text(".msg-assistant") == expected
    assert len(partial) < len(expected)
    assert "tokens" in page.inner_text("#pg-meta") and "req_" in page.inner_text("#pg-meta")
    shot(page, "playground-done")
    context.close()


PAGES = ["usage", "api-keys", "playground", "docs", "organization", "profile", "billing"]
SIGNED_OUT_PAGES = ["/accounts/login/", "/accounts/signup/", "/accounts/confirm-email/", "/accounts/password/reset/"]
SIGNED_IN_PAGES = [f"/portal/{name}" for name in PAGES] + ["/portal/", "/accounts/email/", "/accounts/password/change/"]
# What overflows sideways, the page itself or any element that scrolls (a table inside its card counts too: on a
# phone the key's status and its Revoke button must be on screen, not behind a sideways scroll).
SIDEWAYS = """
() => {
  const width = window.innerWidth;
  const out = [];
  if (document.scrollingElement.scrollWidth > width) out.push(`page ${document.scrollingElement.scrollWidth}px`);
  for (const node of document.querySelectorAll(".table-wrap, .nav, .card")) {
    if (node.scrollWidth > node.clientWidth + 1) out.push(`${node.className || node.tagName} ${node.scrollWidth}>${node.clientWidth}`);
  }
  for (const node of document.querySelectorAll(".nav a, #keys-table .btn, #latest td")) {
    const box = node.getBoundingClientRect();
    if (box.width && (box.right > width + 0.5 || box.left < -0.5)) out.push(`off-screen: ${node.textContent.trim().slice(0, 30)}`);
  }
  return out;
}
"""


def phone_sized_data(email: str) -> None:
    """A user whose pages hold what makes tables wide: long key names, request ids, end users, several sessions."""
    import uuid

    from apikeys.services import apikey_create
    from tests.support.portal import make_org, make_user
    from usage.models import UsageEvent

    user = make_user(email, name="Phone Person With A Rather Long Name")
    org = make_org(email.split("@")[0].replace(".", "-"), owner=user)
    key = apikey_create(organization=org, name="production backend for the mobile application", created_by=user).api_key
    apikey_create(organization=org, name="ci", created_by=user)
    UsageEvent.objects.bulk_create(
        UsageEvent(
            request_id=f"req_{uuid.uuid4().hex}",
            organization=org,
            api_key=key,
            alias="oss-20b",
            route="chat.completions",
            status="error" if i % 3 == 0 else "ok",
            http_status=429 if i % 3 == 0 else 200,
            error_code="insufficient_quota" if i % 3 == 0 else "",
            end_user=f"customer-{i:04d}@a-long-domain.example.com",
            prompt_tokens=1200,
            completion_tokens=345,
            total_tokens=1545,
            duration_ms=12345,
        )
        for i in range(6)
    )


@pytest.mark.parametrize("width", [390, 360])
def test_every_page_fits_a_phone(portal: PortalServer, browser, width: int) -> None:  # noqa: ANN001
    email = f"phone{width}@example.com"
    phone_sized_data(email)
    viewport = {"width": width, "height": PHONE["height"]}
    context = browser.new_context(viewport=viewport, is_mobile=True, has_touch=True)
    page = context.new_page()
    for path in SIGNED_OUT_PAGES:
        page.goto(f"{portal.url}{path}")
        assert page.evaluate(SIDEWAYS) == [], path
        shot(page, f"phone{width}-{path.strip('/').replace('/', '-')}")
    sign_in(page, portal, email)
    for path in SIGNED_IN_PAGES:
        page.goto(f"{portal.url}{path}")
        assert page.locator("h1").first.is_visible(), path
        assert page.evaluate(SIDEWAYS) == [], path
        shot(page, f"phone{width}-{path.strip('/').replace('/', '-')}")
    # Every tab is on screen without scrolling the bar, and the key's status and Revoke button are visible.
    page.goto(f"{portal.url}/portal/api-keys")
    for tab in ("Usage", "API keys", "Playground", "Docs", "Billing", "Organization", "Profile"):
        assert page.locator(".nav a", has_text=tab).is_visible(), tab
    row = page.locator("#keys-table tr", has_text="production backend")
    assert row.locator("text=Active").is_visible() and row.locator("text=Revoke").is_visible()
    context.close()


def test_pages_keep_the_content_security_policy_and_still_work(portal: PortalServer, browser) -> None:  # noqa: ANN001
    """Under the policy (no inline script, handler or style), what the inline bits used to do still happens: the
    organization switch submits itself, bars have their widths, the live feed connects. The `no_csp_violations`
    fixture fails the test on any violation a page reports."""
    from accounts.models import Membership
    from tests.support.portal import add_member, make_org, make_user

    user = make_user("two-orgs@example.com", name="Two Orgs")
    make_org("first-co", owner=user)
    add_member(make_org("second-co"), user, Membership.Role.MEMBER)
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    sign_in(page, portal, "two-orgs@example.com")
    response = page.goto(f"{portal.url}/portal/usage")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_selector("#live-status[data-state=open]")  # the WebSocket is 'self' too
    bar = page.locator(".allowance .meter > span").first
    assert bar.evaluate("node => getComputedStyle(node).width") == "0px"  # pct-0: a class, not a style attribute
    with page.expect_navigation():
        page.select_option("#org-switch", label="Second-Co")  # data-autosubmit, no onchange="…"
    assert page.locator("#org-switch option:checked").inner_text() == "Second-Co"
    for path, shown in (("/portal/docs", "h1"), ("/portal/billing", "h1"), ("/portal/playground", "#pg-prompt"),
                        ("/accounts/password/change/", "input[type=password]")):  # fmt: skip
        response = page.goto(f"{portal.url}{path}")
        assert response.ok and "frame-ancestors 'none'" in response.headers["content-security-policy"], path
        assert page.locator(shown).first.is_visible(), path
    # The admin signs in through the portal's form: signed out, /admin/login/ lands there, under the policy too.
    page.context.clear_cookies()
    response = page.goto(f"{portal.url}/admin/login/")
    assert (
        response.ok and "/accounts/login/" in page.url and "frame-ancestors 'none'" in response.headers["content-security-policy"]
    )
    assert page.locator("input[type=password]").first.is_visible()
    context.close()
