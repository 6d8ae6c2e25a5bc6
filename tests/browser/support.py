"""What the browser tests share: the live portal server, the mail it writes, screenshots, and steps of the portal's
flows (sign in, top up through the fake Stripe Checkout, read the balance) that longer flows chain."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.support.live import ROOT, LiveGateway

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}
# The live portal's Stripe keys (tests/browser/conftest.py), for the fake Stripe it pays through.
STRIPE_SECRET_KEY = "sk_test_51BrowserTestsFakeStripeKey"
STRIPE_WEBHOOK_SECRET = "whsec_BrowserTestsFakeWebhookSecret"


class PortalServer(LiveGateway):
    """A LiveGateway serving the project, mail written to files."""

    mail_dir: Path

    def mail_to(self, address: str, *, after: float = 0.0, timeout: float = 10.0) -> str:
        """The newest mail file holding this address, written after `after` (a time.time())."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for path in sorted(self.mail_dir.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True):
                text = path.read_text(errors="replace")
                if path.stat().st_mtime >= after and f"To: {address}" in text:
                    return text
            time.sleep(0.1)
        raise AssertionError(f"no mail to {address} in {self.mail_dir}")


def link_in(mail: str, fragment: str) -> str:
    return next(url for url in re.findall(r"https?://\S+", mail) if fragment in url)


def shot(page, name: str) -> Path:  # noqa: ANN001
    path = ARTIFACTS / f"portal-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page, portal: PortalServer, email: str, password: str) -> None:  # noqa: ANN001
    page.goto(f"{portal.url}/accounts/login/")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{portal.url}/portal/api-keys")


def top_up(page, portal: PortalServer, dollars: str, *, org: str = "") -> None:  # noqa: ANN001
    """From the billing page: the amount, Stripe's (fake) Checkout page, Pay, and back on the billing page."""
    page.goto(f"{portal.url}/portal/billing" + (f"?org={org}" if org else ""))
    page.fill("#topup-amount", dollars)
    page.click("#topup-submit")
    page.wait_for_selector("#pay")  # the hosted Checkout page, on Stripe's (the fake's) origin
    assert not page.url.startswith(portal.url), page.url
    page.click("#pay")
    page.wait_for_url(re.compile(re.escape(f"{portal.url}/portal/billing?") + ".*checkout=topup"))


def balance(page) -> str:  # noqa: ANN001
    """The balance as the billing page shows it ("$10.00")."""
    return page.inner_text("#kpi-balance").strip()
