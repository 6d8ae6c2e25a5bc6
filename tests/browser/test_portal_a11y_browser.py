"""The portal for keyboards, screen readers and dark screens (issue 16): a skip link, arrow keys on the docs' tabs,
copy buttons that say what they copy, and dark mode from the system's preference."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.support import CHROMIUM, DESKTOP, PHONE, PortalServer, shot
from tests.browser.test_portal_browser import make_verified_user, sign_in

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"browser tests need Chromium at {CHROMIUM}")


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_skip_link_docs_tabs_and_copy_buttons_work_from_the_keyboard(portal: PortalServer, browser, viewport) -> None:  # noqa: ANN001
    make_verified_user(f"keys{viewport['width']}@example.com")
    context = browser.new_context(viewport=viewport, permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    sign_in(page, portal, f"keys{viewport['width']}@example.com")
    page.goto(f"{portal.url}/portal/docs")

    # The first Tab reaches the skip link, visible once focused; following it lands past the navigation.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    box = page.locator(".skip-link").bounding_box()
    assert box is not None and box["y"] >= 0
    page.keyboard.press("Enter")
    assert page.url.endswith("#main")
    page.keyboard.press("Tab")
    assert not page.evaluate("document.activeElement.closest('.sidebar')")  # past the navigation

    # The docs' tabs: arrow keys move the selection (and the focus), Home and End go to the ends.
    tabs = page.locator("[role=tab]")
    assert tabs.count() == 4
    tabs.first.focus()
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.textContent") == "Python · OpenAI"
    assert tabs.nth(1).get_attribute("aria-selected") == "true" and tabs.first.get_attribute("aria-selected") == "false"
    page.keyboard.press("End")
    assert tabs.nth(3).get_attribute("aria-selected") == "true"
    page.keyboard.press("ArrowRight")  # wraps around
    assert tabs.first.get_attribute("aria-selected") == "true"
    page.keyboard.press("ArrowLeft")
    assert tabs.nth(3).get_attribute("aria-selected") == "true"
    assert page.locator("[role=tabpanel]:visible").count() == 1

    # Every copy button names what it copies.
    labels = page.eval_on_selector_all("[data-copy-target]", "nodes => nodes.map(n => n.getAttribute('aria-label'))")
    assert labels and all(label and label.startswith("Copy the ") for label in labels), labels
    assert "Copy the base URL" in labels and "Copy the code: curl · chat completion" in labels
    page.click("button[data-copy-target=base-url]")
    page.wait_for_selector("#copy-status:not(:empty)", state="attached")  # (wait_for_function would eval: CSP)
    assert page.inner_text("#copy-status") == "Copied the base URL"
    context.close()


def test_dark_mode_follows_the_system_preference(portal: PortalServer, browser) -> None:  # noqa: ANN001
    make_verified_user("night@example.com")
    for scheme, background, text in (
        ("light", "rgb(245, 246, 248)", "rgb(16, 24, 40)"),
        ("dark", "rgb(11, 17, 32)", "rgb(229, 231, 235)"),
    ):
        context = browser.new_context(viewport=DESKTOP, color_scheme=scheme)
        page = context.new_page()
        page.goto(f"{portal.url}/accounts/login/")
        sign_in(page, portal, "night@example.com")
        for path in ("/portal/api-keys", "/portal/docs", "/portal/profile"):
            page.goto(f"{portal.url}{path}")
            colors = page.evaluate(
                "() => { const s = getComputedStyle(document.body), c = getComputedStyle(document.querySelector('.card'));"
                " return [s.backgroundColor, s.color, c.backgroundColor]; }"
            )
            assert colors[:2] == [background, text], (scheme, path, colors)
        shot(page, f"{scheme}-profile")
        context.close()
