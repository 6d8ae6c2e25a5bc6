"""The live usage feed loses nothing: what happened between the page's render and the socket's subscription, or
while a socket was away, comes in the socket's first message ("ready"), once, then live; across daphne processes
sharing PostgreSQL and Redis.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.db import connection, transaction

import usage.selectors as selectors
from accounts.models import Organization, User
from simulator import SimulatorServer
from tests.conftest import (
    ALIAS,
    IssuedKey,
    LiveGateway,
    issue_key,
    live_gateway_env,
    wait_for,
    wait_until_gateway_caught_up,
)
from tests.portal_support import ensure_site_and_plans, make_org, make_user
from tests.support.feed import FeedSocket, page_cursor, signed_in_session
from usage.live import apublish_usage_events
from usage.models import UsageEvent
from usage.services import UsageRecord

BAD_CURSOR = 4400

needs_redis = pytest.mark.skipif(
    not os.environ.get("REDIS_URL"), reason="daphne processes share a feed only through the Redis channel layer"
)


# --- Helpers ---------------------------------------------------------------------------------------------------------


@dataclass
class Watcher:
    """A signed-in member of an organization with a key: who opens the usage page, and the key that makes requests."""

    user: User
    org: Organization
    key: IssuedKey
    session_key: str


def make_watcher(slug: str) -> Watcher:
    ensure_site_and_plans()
    user = make_user(f"{slug}@example.com")
    org = make_org(slug, owner=user, plan="pro")
    key = issue_key(slug=slug, plan="pro")
    return Watcher(user=user, org=org, key=key, session_key=signed_in_session(user))


def call(base_url: str, key: IssuedKey) -> str:
    """One chat completion through a gateway; its request id."""
    response = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"model": ALIAS, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        headers={"Authorization": f"Bearer {key.raw}"},
        timeout=20,
    )
    assert response.status_code == 200, response.text[:300]
    return response.headers["x-request-id"]


def written(*request_ids: str) -> None:
    """Wait until these requests' usage rows are in the database (the writer flushes every PORTAL_USAGE_FLUSH_MS)."""
    wait_for(lambda: UsageEvent.objects.filter(request_id__in=request_ids).count() == len(request_ids), timeout=10)


def stored_row(org: Organization, request_id: str | None = None) -> UsageEvent:
    """A usage row written straight into the database: committed, never published to the channel layer."""
    return UsageEvent.objects.create(
        request_id=request_id or f"req_direct_{uuid.uuid4().hex[:12]}",
        organization=org,
        alias=ALIAS,
        route="chat.completions",
        status="ok",
        http_status=200,
        prompt_tokens=2,
        completion_tokens=3,
        total_tokens=5,
        duration_ms=7,
    )


def record_of(row: UsageEvent) -> UsageRecord:
    return UsageRecord(
        request_id=row.request_id,
        organization_id=row.organization_id,
        api_key_id=row.api_key_id,
        alias=row.alias,
        route=row.route,
        status=row.status,
        http_status=row.http_status,
        created_at=row.created_at,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        total_tokens=row.total_tokens,
        duration_ms=row.duration_ms,
    )


def caught_up(ready: dict) -> list[str]:
    return [event["request_id"] for event in ready["events"]]


def in_write_order(*request_ids: str) -> list[str]:
    """These requests in the order the database took their rows (a batch sorts its rows by request id)."""
    return list(UsageEvent.objects.filter(request_id__in=request_ids).order_by("id").values_list("request_id", flat=True))


def gap_ranges(cursor: str) -> list[tuple[int, int]]:
    gaps = cursor.partition("~")[2]
    return [(int(a), int(b or a)) for a, _, b in (part.partition("-") for part in gaps.split(".") if part)]


def covers(cursor: str, row_id: int) -> bool:
    """Whether a page holding this cursor holds the row."""
    return row_id <= int(cursor.partition("~")[0]) and not any(a <= row_id <= b for a, b in gap_ranges(cursor))


@pytest.fixture
def open_feed() -> Iterator[Callable[..., FeedSocket]]:
    """Opens feeds; every socket opened is closed after the test, passed or failed."""
    opened: list[FeedSocket] = []

    def opener(base_url: str, session_key: str, **options: object) -> FeedSocket:
        feed = FeedSocket(base_url, session_key, **options)  # type: ignore[arg-type]
        opened.append(feed)
        return feed

    yield opener
    for feed in opened:
        feed.close()


# --- The cursor itself -------------------------------------------------------------------------------------------------


def test_a_cursor_reads_back_as_written() -> None:
    FeedCursor = selectors.FeedCursor
    for cursor in (FeedCursor(0), FeedCursor(7), FeedCursor(5000, ((3001, 3001), (4000, 4010), (4999, 4999)))):
        assert FeedCursor.parse(str(cursor)) == cursor
    assert str(FeedCursor(5000, ((3001, 3001), (4000, 4010)))) == "5000~3001.4000-4010"


def test_a_cursor_holds_the_newest_id_and_the_missing_ids_below_it(db) -> None:  # noqa: ANN001
    org = make_org("gaps")
    assert selectors.usage_feed_cursor() == selectors.FeedCursor(0)
    ids = [stored_row(org).pk for _ in range(40)]
    first, high = ids[0], ids[-1]
    floor = max(1, high - selectors.FEED_CURSOR_WINDOW + 1)
    below = ((floor, first - 1),) if first > floor else ()  # ids other tests used: rolled back, never committed here
    assert selectors.usage_feed_cursor() == selectors.FeedCursor(high, below)
    UsageEvent.objects.filter(pk__in=[ids[5], ids[6], ids[9]]).delete()
    assert selectors.usage_feed_cursor() == selectors.FeedCursor(high, (*below, (ids[5], ids[6]), (ids[9], ids[9])))
    UsageEvent.objects.filter(pk__in=[ids[2], *ids[12:-1:2]]).delete()  # 15 more gaps: the cursor keeps the newest 16
    assert selectors.usage_feed_cursor() == selectors.FeedCursor(
        high, ((ids[5], ids[6]), (ids[9], ids[9]), *((pk, pk) for pk in ids[12:-1:2]))
    )


def test_a_catch_up_looks_only_at_the_newest_ids_and_says_so(db, monkeypatch) -> None:  # noqa: ANN001
    org = make_org("far-behind")
    rows = [stored_row(org) for _ in range(8)]
    monkeypatch.setattr(selectors, "FEED_CATCHUP_SCAN", 3)
    old = selectors.FeedCursor(rows[0].pk)
    caught = selectors.usage_feed_since(organization_id=org.pk, cursor=old)
    assert [row.pk for row in caught.rows] == [row.pk for row in rows[-3:]]
    assert caught.truncated is True and caught.cursor.high == rows[-1].pk
    recent = selectors.usage_feed_since(organization_id=org.pk, cursor=selectors.FeedCursor(rows[-3].pk))
    assert [row.pk for row in recent.rows] == [row.pk for row in rows[-2:]] and recent.truncated is False


# --- One process: the window between render and subscription, a reconnect ---------------------------------------------


def test_the_page_renders_a_cursor_for_its_feed_and_a_past_range_has_none(gateway: LiveGateway) -> None:
    watcher = make_watcher("cursor-page")
    cursor = page_cursor(gateway.url, watcher.session_key)
    assert re.fullmatch(r"[0-9]+(~[0-9.-]+)?", cursor), cursor
    past = httpx.get(f"{gateway.url}/portal/usage?from=2026-01-01&to=2026-01-02", cookies={"sessionid": watcher.session_key})
    assert past.status_code == 200 and "data-live-cursor" not in past.text and "data-live-url" not in past.text


def test_a_request_answered_between_render_and_subscription_comes_in_the_first_message(
    gateway: LiveGateway, open_feed: Callable[..., FeedSocket]
) -> None:
    watcher = make_watcher("window")
    before = call(gateway.url, watcher.key)
    written(before)
    cursor = page_cursor(gateway.url, watcher.session_key)  # the page shows `before`
    between = [call(gateway.url, watcher.key), call(gateway.url, watcher.key)]
    written(*between)  # in the database, published to no one: no socket is open yet
    feed = open_feed(gateway.url, watcher.session_key, org=watcher.org.pk, after=cursor)
    ready = feed.ready()
    assert caught_up(ready) == in_write_order(*between)  # oldest first, `before` not again
    assert ready["truncated"] is False and ready["cursor"] != cursor
    event = ready["events"][0]
    assert event["type"] == "request" and event["model"] == ALIAS and event["status"] == "ok"
    assert event["key"]["name"] == "test key" and event["total_tokens"] > 0
    after = call(gateway.url, watcher.key)
    assert feed.requests_until([after]) == [after]


def test_a_socket_opened_without_a_cursor_starts_live_with_a_cursor(
    gateway: LiveGateway, open_feed: Callable[..., FeedSocket]
) -> None:
    watcher = make_watcher("no-cursor")
    written(call(gateway.url, watcher.key))
    feed = open_feed(gateway.url, watcher.session_key)
    ready = feed.ready()
    assert ready == {
        "type": "ready",
        "organization_id": watcher.org.pk,
        "cursor": ready["cursor"],
        "events": [],
        "truncated": False,
    }
    assert ready["cursor"] and ready["cursor"].split("~")[0].isdigit()


def test_a_reconnect_with_the_last_cursor_catches_up_on_what_happened_while_away(
    gateway: LiveGateway, open_feed: Callable[..., FeedSocket]
) -> None:
    watcher = make_watcher("reconnect")
    feed = open_feed(gateway.url, watcher.session_key, after=page_cursor(gateway.url, watcher.session_key))
    assert caught_up(feed.ready()) == []
    live = call(gateway.url, watcher.key)
    assert feed.requests_until([live]) == [live]
    feed.close()  # the drop
    away = [call(gateway.url, watcher.key), call(gateway.url, watcher.key)]
    written(*away)
    again = open_feed(gateway.url, watcher.session_key, after=feed.cursor)
    ready = again.ready()
    # Everything since the cursor the socket had: the request it saw live too (the page drops an id it shows).
    assert caught_up(ready) == in_write_order(live, *away)
    later = call(gateway.url, watcher.key)
    assert again.requests_until([later]) == [later]


def test_a_row_committed_after_the_render_under_an_older_id_is_caught_up(
    gateway: LiveGateway, open_feed: Callable[..., FeedSocket]
) -> None:
    # Two writers: the first takes its id, the second takes the next one and commits first. A cursor of "the newest
    # id shown" would skip the first row for good; the cursor remembers the ids below it not yet committed.
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has one writer at a time: its ids are committed in order")
    watcher = make_watcher("in-flight")
    inserted, commit, done = threading.Event(), threading.Event(), threading.Event()
    slow: dict[str, UsageEvent] = {}

    def slow_writer() -> None:
        try:
            with transaction.atomic():
                slow["row"] = stored_row(watcher.org, "req_slow_writer")
                inserted.set()
                assert commit.wait(10)
        finally:
            connection.close()
            done.set()

    thread = threading.Thread(target=slow_writer)
    thread.start()
    try:
        assert inserted.wait(10)
        fast = stored_row(watcher.org, "req_fast_writer")
        assert fast.pk > slow["row"].pk
        cursor = page_cursor(gateway.url, watcher.session_key)
        assert cursor.partition("~")[0] == str(fast.pk)
        assert any(a <= slow["row"].pk <= b for a, b in gap_ranges(cursor)), cursor
    finally:
        commit.set()
        assert done.wait(10)
        thread.join()
    feed = open_feed(gateway.url, watcher.session_key, after=cursor)
    assert caught_up(feed.ready()) == ["req_slow_writer"]


def test_a_catch_up_carries_the_newest_rows_at_most_and_says_it_was_cut(
    gateway: LiveGateway, open_feed: Callable[..., FeedSocket]
) -> None:
    watcher = make_watcher("flood")
    cursor = page_cursor(gateway.url, watcher.session_key)
    limit = selectors.FEED_CATCHUP_MAX
    rows = [stored_row(watcher.org, f"req_flood_{i:04d}") for i in range(limit + 3)]
    feed = open_feed(gateway.url, watcher.session_key, after=cursor)
    ready = feed.ready()
    assert caught_up(ready) == [row.request_id for row in rows[3:]]
    assert ready["truncated"] is True


@needs_redis  # published from this process: reaches the daphne through Redis only
def test_a_row_in_the_catch_up_is_not_sent_again_when_its_live_event_arrives(
    gateway: LiveGateway, open_feed: Callable[..., FeedSocket]
) -> None:
    watcher = make_watcher("twice")
    cursor = page_cursor(gateway.url, watcher.session_key)
    row = stored_row(watcher.org)
    feed = open_feed(gateway.url, watcher.session_key, after=cursor)
    assert caught_up(feed.ready()) == [row.request_id]
    fresh = stored_row(watcher.org)
    # The live copy of a caught-up row (its batch was published after the socket joined), then a new one: in that
    # order on the socket's channel, so the new one coming first proves the copy was dropped.
    async_to_sync(apublish_usage_events)([record_of(row)])
    async_to_sync(apublish_usage_events)([record_of(fresh)])
    assert feed.requests_until([fresh.request_id]) == [fresh.request_id]


def test_another_organizations_rows_are_not_caught_up(gateway: LiveGateway, open_feed: Callable[..., FeedSocket]) -> None:
    watcher = make_watcher("mine")
    other = make_org("theirs", plan="pro")
    cursor = page_cursor(gateway.url, watcher.session_key)
    stored_row(other)
    own = stored_row(watcher.org)
    feed = open_feed(gateway.url, watcher.session_key, after=cursor)
    assert caught_up(feed.ready()) == [own.request_id]


@pytest.mark.parametrize(
    "cursor",
    [
        "junk",
        "-5",
        "12~",
        "12~13",  # a gap above the newest id
        "5000~1",  # a gap below the window the cursor covers
        "12~3-1",
        "1" * 30,
        "12~" + ".".join(str(i) for i in range(1, 12)) + "." + ".".join(str(i) for i in range(1, 12)),
    ],
)
def test_a_malformed_cursor_closes_the_socket_with_4400(
    gateway: LiveGateway, open_feed: Callable[..., FeedSocket], cursor: str
) -> None:
    watcher = make_watcher("bad-cursor")
    feed = open_feed(gateway.url, watcher.session_key, after=cursor)
    assert feed.receive() is None and feed.close_code == BAD_CURSOR


# --- The cursor moves while the socket is open ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def refreshing_server(django_db_setup, django_db_blocker, simulator: SimulatorServer) -> Iterator[LiveGateway]:  # noqa: ANN001
    server = LiveGateway(
        env=live_gateway_env(
            simulator.base_url, PORTAL_LIVE_CURSOR_REFRESH_MS="300", PORTAL_CACHE_PREFIX=f"feed-{uuid.uuid4().hex[:8]}"
        )
    ).start()
    yield server
    server.stop()


def test_an_open_socket_hands_out_newer_cursors_so_a_reconnect_resends_little(
    gateway: LiveGateway, refreshing_server: LiveGateway, open_feed: Callable[..., FeedSocket]
) -> None:
    watcher = make_watcher("refresh")
    wait_until_gateway_caught_up(refreshing_server)
    feed = open_feed(refreshing_server.url, watcher.session_key, after=page_cursor(gateway.url, watcher.session_key))
    feed.ready()
    seen = call(refreshing_server.url, watcher.key)
    assert feed.requests_until([seen]) == [seen]
    # A cursor is handed out one refresh after it was taken, and only when it moved: one soon covers the request.
    row_id = UsageEvent.objects.get(request_id=seen).pk
    while not covers(feed.next_cursor(), row_id):
        pass
    feed.close()
    away = call(refreshing_server.url, watcher.key)
    written(away)
    again = open_feed(refreshing_server.url, watcher.session_key, after=feed.cursor)
    assert caught_up(again.ready()) == [away]


# --- Two daphne processes sharing PostgreSQL and Redis ---------------------------------------------------------------


@pytest.fixture(scope="module")
def second_gateway(django_db_setup, django_db_blocker, simulator: SimulatorServer) -> Iterator[LiveGateway]:  # noqa: ANN001
    server = LiveGateway(env=live_gateway_env(simulator.base_url)).start()
    yield server
    server.stop()


@needs_redis
def test_a_page_on_one_process_gets_what_another_process_served_before_and_after_its_socket_opened(
    gateway: LiveGateway, second_gateway: LiveGateway, open_feed: Callable[..., FeedSocket]
) -> None:
    watcher = make_watcher("two-processes")
    wait_until_gateway_caught_up(second_gateway)
    cursor = page_cursor(gateway.url, watcher.session_key)  # rendered by the first process
    between = call(second_gateway.url, watcher.key)  # served by the second, before the socket subscribes
    written(between)
    feed = open_feed(gateway.url, watcher.session_key, after=cursor)  # held by the first
    assert caught_up(feed.ready()) == [between]
    live = [call(second_gateway.url, watcher.key), call(gateway.url, watcher.key)]
    assert sorted(feed.requests_until(live)) == sorted(live)
    # And the other way round: a socket on the second process, a request served by the first.
    other = open_feed(second_gateway.url, watcher.session_key, after=feed.cursor)
    # It opened later, with the first one's cursor: everything that came since.
    assert caught_up(other.ready()) == in_write_order(*live)
    last = call(gateway.url, watcher.key)
    assert other.requests_until([last]) == [last]
    assert feed.requests_until([last]) == [last]
