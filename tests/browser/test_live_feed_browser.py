"""The usage page's live feed in a real browser: every request shows once, whether it was answered before the page
rendered, between the render and the socket's subscription, live, or while the socket was down."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.browser.support import CHROMIUM, DESKTOP, PortalServer, shot
from tests.support.feed import signed_in_session
from tests.support.live import ALIAS, IssuedKey, issue_key, wait_for
from tests.support.portal import make_org, make_user
from usage.models import UsageEvent

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
)


def call(portal: PortalServer, key: IssuedKey) -> str:
    """One request through the gateway, waited for until its usage row is in the database; its request id."""
    response = httpx.post(
        f"{portal.url}/v1/chat/completions",
        json={"model": ALIAS, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        headers={"Authorization": f"Bearer {key.raw}"},
        timeout=20,
    )
    assert response.status_code == 200, response.text[:300]
    request_id = response.headers["x-request-id"]
    wait_for(lambda: UsageEvent.objects.filter(request_id=request_id).exists(), timeout=10)
    return request_id


def test_every_request_shows_once_around_the_page_load_and_a_dropped_socket(portal: PortalServer, browser) -> None:  # noqa: ANN001
    user = make_user("watcher@example.com")
    org = make_org("watchers", owner=user, plan="pro")
    key = issue_key(slug=org.slug)
    context = browser.new_context(viewport=DESKTOP)
    context.add_cookies([{"name": "sessionid", "value": signed_in_session(user), "url": portal.url}])
    page = context.new_page()

    # Each socket the page opens is held back while a request is answered and written: the first one's request lands
    # between the page's render and the socket's subscription, the second one's while the page is reconnecting.
    sockets = []
    held_back: list[str] = []

    def on_socket(socket) -> None:  # noqa: ANN001
        sockets.append(socket)
        held_back.append(call(portal, key))
        socket.connect_to_server()

    page.route_web_socket(re.compile(r".*/portal/ws/usage\b.*"), on_socket)

    before = call(portal, key)  # on the page as rendered
    page.goto(f"{portal.url}/portal/usage")
    page.wait_for_selector("#live-status[data-state=open]")
    page.wait_for_selector(f'#latest tr[data-request-id="{held_back[0]}"]')
    live = call(portal, key)
    page.wait_for_selector(f'#latest tr[data-request-id="{live}"]')

    sockets[0].close(code=1012, reason="dropped by the test")
    page.wait_for_selector("#live-status[data-state=closed]")
    away = call(portal, key)  # while the page has no socket
    page.wait_for_selector("#live-status[data-state=open]")  # reopened with its newest cursor
    assert len(sockets) == 2
    page.wait_for_selector(f'#latest tr[data-request-id="{away}"]')
    page.wait_for_selector(f'#latest tr[data-request-id="{held_back[1]}"]')
    after = call(portal, key)
    page.wait_for_selector(f'#latest tr[data-request-id="{after}"]')

    made = [before, held_back[0], live, away, held_back[1], after]
    shown = page.eval_on_selector_all("#latest tr[data-request-id]", "rows => rows.map(r => r.dataset.requestId)")
    assert sorted(shown) == sorted(made)  # each once: the reconnect's catch-up resent `live`, the page dropped it
    assert page.inner_text("#kpi-requests") == "6"
    assert page.inner_text("#live-status") == "Live"
    shot(page, "usage-live-catch-up")
    context.close()
