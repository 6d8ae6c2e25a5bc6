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
from usage.selectors import user_time_zone

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


def test_live_requests_update_the_totals_charts_and_splits_once_each(portal: PortalServer, browser) -> None:  # noqa: ANN001
    """Rows published to the feed (as the usage writer does once they are in the database) move the KPIs, the day's
    bars, the splits and the cost, in the user's time zone; a row the reconnect's catch-up sends again counts once."""
    import asyncio
    import threading
    from datetime import timedelta

    from django.utils import timezone

    from apikeys.models import ApiKey
    from usage.live import apublish_usage_events

    user = make_user("auditor@example.com")
    user.time_zone = "Asia/Kolkata"
    user.save(update_fields=["time_zone"])
    org = make_org("auditors", owner=user, plan="pro")
    key = ApiKey.objects.get(pk=issue_key(slug=org.slug, name="auditor key").key_id)
    made = iter(range(1, 100))

    def written(
        *,
        alias: str = ALIAS,
        status: str = "ok",
        http: int = 200,
        code: str = "",
        cost: int = 0,
        tokens: int = 10,
        publish: bool = True,
    ) -> UsageEvent:  # noqa: E501
        n = next(made)
        row = UsageEvent.objects.create(
            request_id=f"req_live{n:04d}",
            organization=org,
            api_key=key,
            alias=alias,
            route="chat.completions",
            status=status,
            http_status=http,
            error_code=code,
            prompt_tokens=max(0, tokens - 1),
            completion_tokens=min(1, tokens),
            total_tokens=tokens,
            cost_micros=cost,
            created_at=timezone.now() - timedelta(seconds=1),
        )
        if publish:  # from a thread of its own: Playwright's sync API keeps an event loop in this one
            sender = threading.Thread(target=lambda: asyncio.run(apublish_usage_events([row])))
            sender.start()
            sender.join(10)
        return row

    written(cost=1_500, publish=False)
    written(status="error", http=429, code="rate_limit_exceeded", tokens=0, publish=False)

    context = browser.new_context(viewport=DESKTOP)
    context.add_cookies([{"name": "sessionid", "value": signed_in_session(user), "url": portal.url}])
    page = context.new_page()
    sockets = []
    held_back: list[UsageEvent] = []

    def on_socket(socket) -> None:  # noqa: ANN001
        sockets.append(socket)
        # Written and published before this socket joined its group: only the catch-up brings it.
        held_back.append(
            written(alias="gemma4", cost=2_000_000, tokens=20)
            if len(sockets) == 1
            else written(alias="gemma4", status="error", http=502, code="upstream_error", tokens=0)
        )  # noqa: E501
        socket.connect_to_server()

    page.route_web_socket(re.compile(r".*/portal/ws/usage\b.*"), on_socket)
    rendered = page.goto(f"{portal.url}/portal/usage").text()  # as served: the socket may have added rows since
    assert 'id="kpi-requests">2<' in rendered and 'id="kpi-errors">1<' in rendered
    assert 'id="kpi-cost" data-micros="1500">$0.0015<' in rendered
    page.wait_for_selector("#live-status[data-state=open]")
    page.wait_for_selector(f'#latest tr[data-request-id="{held_back[0].request_id}"]')
    live = written(cost=250, tokens=5)
    page.wait_for_selector(f'#latest tr[data-request-id="{live.request_id}"]')

    sockets[0].close(code=1012, reason="dropped by the test")
    page.wait_for_selector("#live-status[data-state=closed]")
    page.wait_for_selector("#live-status[data-state=open]")  # its catch-up holds `live` again, and the held-back row
    page.wait_for_selector(f'#latest tr[data-request-id="{held_back[1].request_id}"]')

    assert page.inner_text("#kpi-requests") == "5"
    assert page.inner_text("#kpi-errors") == "2"
    assert page.inner_text("#kpi-tokens") == "35"  # 10 + 0 + 20 + 5 + 0
    assert page.inner_text("#kpi-cost") == "$2.00175"  # 1,500 + 2,000,000 + 250 micro-units
    today = timezone.localtime(live.created_at, user_time_zone(user)).date().isoformat()
    requests_bar = page.locator(f'figure[data-metric="requests"] g[data-day="{today}"]')
    assert requests_bar.get_attribute("data-value") == "5" and requests_bar.get_attribute("data-errors") == "2"
    assert requests_bar.locator("rect.bar").get_attribute("height") == "100.000"  # the peak
    assert page.locator(f'figure[data-metric="total_tokens"] g[data-day="{today}"]').get_attribute("data-value") == "35"
    models = page.eval_on_selector_all(
        "#by-model tbody tr",
        "rows => rows.map(r => [r.dataset.group, r.querySelector('[data-requests]').textContent, r.querySelector('[data-cost]').textContent])",  # noqa: E501
    )
    assert sorted(models) == [["gemma4", "2", "$2.00"], [ALIAS, "3", "$0.00175"]]
    keys = page.eval_on_selector_all("#by-key tbody tr", "rows => rows.map(r => r.querySelector('[data-requests]').textContent)")
    assert keys == ["5"]
    # The times are the page's zone's (+05:30), as the server renders them for the rows it drew.
    shown = page.inner_text(f'#latest tr[data-request-id="{live.request_id}"] td:first-child')
    assert shown == timezone.localtime(live.created_at, user_time_zone(user)).strftime("%b %-d %H:%M:%S")
    assert page.inner_text(f'#latest tr[data-request-id="{held_back[0].request_id}"] .cost') == "$2.00"
    assert page.inner_text("#kpi-errors + .kpi-note") == "of 5 requests"
    failed = page.inner_text(f'#latest tr[data-request-id="{held_back[1].request_id}"] .badge')
    assert failed == "502 · upstream_error"
    shot(page, "usage-live-totals")
    # The filters fit a phone's width: one control a line, none wider than the screen.
    page.set_viewport_size({"width": 360, "height": 800})
    overflow = page.eval_on_selector("#usage-filters", "f => f.scrollWidth - f.clientWidth")
    assert overflow <= 0
    shot(page, "usage-filters-phone")
    context.close()


def test_the_csv_export_streams_from_daphne(portal: PortalServer) -> None:
    """Served as deployed (daphne, PostgreSQL): the body comes chunked, without a length, in more than one piece, and is
    every row of the range, newest first."""
    import csv
    from datetime import timedelta

    from django.utils import timezone

    from apikeys.models import ApiKey
    from usage.selectors import EXPORT_CHUNK

    user = make_user("exporter@example.com")
    org = make_org("exporters", owner=user, plan="pro")
    key = ApiKey.objects.get(pk=issue_key(slug=org.slug).key_id)
    now = timezone.now()
    total = EXPORT_CHUNK * 2 + 5
    UsageEvent.objects.bulk_create(
        [
            UsageEvent(
                request_id=f"req_csv{n:06d}", organization=org, api_key=key, alias=ALIAS, route="chat.completions",
                status="ok", http_status=200, cost_micros=n, created_at=now - timedelta(seconds=n),
            )
            for n in range(total)
        ]
    )  # fmt: skip
    pieces: list[bytes] = []
    with httpx.stream(
        "GET",
        f"{portal.url}/portal/usage/export?kind=rows",
        cookies={"sessionid": signed_in_session(user)},
        timeout=20,
    ) as response:
        assert response.status_code == 200, response.read()[:300]
        assert "content-length" not in response.headers and response.headers["transfer-encoding"] == "chunked"
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        pieces.extend(response.iter_raw())
    assert len(pieces) > 1
    rows = list(csv.DictReader(b"".join(pieces).decode().splitlines()))
    assert [row["request_id"] for row in rows] == [f"req_csv{n:06d}" for n in range(total)]
    assert sum(int(row["cost_micros"]) for row in rows) == total * (total - 1) // 2
