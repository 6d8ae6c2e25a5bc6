"""Browser tests: Debian's Chromium driven by Playwright against a live daphne serving the whole project."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.support import ARTIFACTS, CHROMIUM, STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET, PortalServer
from tests.support.fake_stripe import FakeStripe, FakeStripeServer
from tests.support.live import live_gateway_env, router_env, wait_until_gateway_caught_up, wait_until_usage_written


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[FakeStripeServer]:
    """The fake Stripe the live portal pays through; its webhooks go to the portal (set by portal_server)."""
    server = FakeStripeServer(secret_key=STRIPE_SECRET_KEY, webhook_secret=STRIPE_WEBHOOK_SECRET).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def portal_server(django_db_setup, django_db_blocker, simulator, stripe_server: FakeStripeServer) -> Iterator[PortalServer]:  # noqa: ANN001
    mail_dir = Path(tempfile.mkdtemp(prefix="portal-mail-"))
    server = PortalServer(env={})
    server.env = live_gateway_env(
        simulator.base_url,
        EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
        EMAIL_FILE_PATH=str(mail_dir),
        PORTAL_PUBLIC_BASE_URL=server.url,
        # Spend alerts to a receiver of the test's own on 127.0.0.1, checked soon after each usage batch.
        PORTAL_ALERT_WEBHOOK_ALLOW_INSECURE="1",
        PORTAL_SPEND_ALERT_INTERVAL_MS="50",
        # Its own cache namespace: rate-limit counters of earlier runs do not carry over.
        PORTAL_CACHE_PREFIX=f"portal-browser-{uuid.uuid4().hex[:8]}",
        # Payments on, through the fake Stripe.
        PORTAL_STRIPE_SECRET_KEY=STRIPE_SECRET_KEY,
        PORTAL_STRIPE_WEBHOOK_SECRET=STRIPE_WEBHOOK_SECRET,
        PORTAL_STRIPE_API_BASE=stripe_server.base_url,
        # Every test signs in from 127.0.0.1: the per-IP sign-in limit (10/m) would refuse the module's later ones
        # when the suite runs fast. The limit itself is tested in tests/test_portal_accounts.py.
        PORTAL_RATELIMIT_SIGNIN="600/m",
    )
    server.mail_dir = mail_dir
    server.start()
    yield server
    server.stop()
    shutil.rmtree(mail_dir, ignore_errors=True)


@pytest.fixture
def stripe_fake(portal_server: PortalServer, stripe_server: FakeStripeServer) -> Iterator[FakeStripe]:
    """The fake Stripe, emptied, delivering its webhooks to the live portal."""
    stripe_server.fake.reset()
    stripe_server.fake.webhook_url = f"{portal_server.url}/stripe/webhook"
    yield stripe_server.fake
    stripe_server.fake.reset()


@pytest.fixture
def portal(transactional_db, portal_server: PortalServer, sim) -> Iterator[PortalServer]:  # noqa: ANN001
    """The live portal on an emptied database that holds routing, plans and the Site, as a fresh deployment does."""
    from billing.services import plans_seed_defaults
    from routerpools.config import parse_router_env
    from routerpools.services import router_pools_sync
    from tests.support.portal import ensure_site_and_plans

    plans_seed_defaults()
    router_pools_sync(config=parse_router_env(router_env(sim.base_url)))
    ensure_site_and_plans()
    wait_until_gateway_caught_up(portal_server)
    yield portal_server
    time.sleep(0.06)
    wait_until_usage_written(portal_server)


# Reported by the page itself for every blocked load, script, style or handler: a Content-Security-Policy violation
# is a failure of the test that met it, even when the page seemed to work.
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI || "inline"} in ${event.sourceFile || location.href}:${event.lineNumber}`);
});
"""


class WatchedBrowser:
    """The Chromium of the module, whose every context reports Content-Security-Policy violations into `violations`:
    the page's own `securitypolicyviolation` events and Chromium's console errors about the policy."""

    def __init__(self, chromium: object) -> None:
        self._chromium = chromium
        self.violations: list[str] = []

    def new_context(self, **options: object) -> object:
        context = self._chromium.new_context(**options)  # type: ignore[attr-defined]
        context.add_init_script(REPORT_CSP_VIOLATIONS)

        def on_console(message) -> None:  # noqa: ANN001
            text = message.text
            if message.type == "error" and ("CSP violation" in text or "Content Security Policy" in text):
                self.violations.append(text)

        context.on("console", on_console)
        return context

    def __getattr__(self, name: str) -> object:
        return getattr(self._chromium, name)


@pytest.fixture(autouse=True)
def no_csp_violations(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a browser test during which any page broke the Content-Security-Policy."""
    if "browser" not in request.fixturenames:
        yield
        return
    watched: WatchedBrowser = request.getfixturevalue("browser")
    watched.violations.clear()
    yield
    assert not watched.violations, "Content-Security-Policy violations:\n" + "\n".join(watched.violations)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One Chromium for the module, reporting CSP violations (WatchedBrowser). Playwright's sync API keeps an event loop
    in this thread, which Django's async-safety check would take for async code: allowed for these tests only, and put
    back afterwards."""
    from playwright.sync_api import sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
            )
            yield WatchedBrowser(chromium)
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous
