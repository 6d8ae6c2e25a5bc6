"""Access that can be taken back, attacked through a live daphne with PostgreSQL and Redis.

The live usage feed must close once the session that opened it ends, whichever way it ends, and once its user is no
longer in the organization; the admin's sign-in must hold against guessing.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.utils import timezone

from accounts.models import Membership, User
from tests.support.feed import FeedSocket, feed_refused
from tests.support.live import LiveGateway, live_gateway_env
from tests.support.portal import PASSWORD, add_member, ensure_site_and_plans, make_org, make_user
from usage.live import apublish_usage_events
from usage.services import UsageRecord

SIGNED_OUT, NOT_A_MEMBER = 4401, 4403


# --- Helpers ---------------------------------------------------------------------------------------------------------


def sign_in(base_url: str, email: str, password: str = PASSWORD, *, agent: str = "hostile-tests") -> httpx.Client:
    """A browser-like client signed in through allauth's form on the live server."""
    http = httpx.Client(base_url=base_url, timeout=30, headers={"User-Agent": agent})
    http.get("/accounts/login/")
    response = post_form(http, "/accounts/login/", {"login": email, "password": password})
    assert response.status_code == 302 and response.headers["location"] == "/portal/api-keys", response.text[:500]
    return http


def post_form(http: httpx.Client, path: str, data: dict[str, object] | None = None) -> httpx.Response:
    if "csrftoken" not in http.cookies:
        http.get("/accounts/login/")
    return http.post(path, data={**(data or {}), "csrfmiddlewaretoken": http.cookies["csrftoken"]})


def session_of(http: httpx.Client) -> str:
    return http.cookies["sessionid"]


def database_session(user: User) -> str:
    """What a sign-in leaves in the session table, made directly (no sign-in form, so no sign-in rate limit)."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "allauth.account.auth_backends.AuthenticationBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.create()
    return store.session_key


def usage_row(org_id: int, request_id: str) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        organization_id=org_id,
        api_key_id=None,
        alias="oss-20b",
        route="chat.completions",
        status="ok",
        http_status=200,
        created_at=timezone.now(),
        prompt_tokens=1,
        completion_tokens=2,
        total_tokens=3,
        duration_ms=5,
        streamed=False,
    )


@pytest.fixture
def open_feed() -> Iterator[Callable[..., FeedSocket]]:
    """Opens a feed and waits for its "ready"; every socket opened is closed after the test, passed or failed."""
    opened: list[FeedSocket] = []

    def opener(base_url: str, session_key: str, *, org: int | None = None) -> FeedSocket:
        feed = FeedSocket(base_url, session_key, org=org)
        opened.append(feed)
        ready = feed.receive()
        assert ready is not None and ready["type"] == "ready", ready
        return feed

    yield opener
    for feed in opened:
        feed.close()


def assert_still_streams(feed: FeedSocket, org_id: int) -> None:
    request_id = f"req_alive_{uuid.uuid4().hex[:10]}"
    async_to_sync(apublish_usage_events)([usage_row(org_id, request_id)])
    message = feed.receive()
    assert message is not None and message["request_id"] == request_id, message


# --- A gateway whose feeds never re-check on their own: only the push can close them --------------------------------


@pytest.fixture(scope="module")
def push_only_server(django_db_setup, django_db_blocker, simulator) -> Iterator[LiveGateway]:  # noqa: ANN001
    server = LiveGateway(
        env=live_gateway_env(
            simulator.base_url,
            PORTAL_LIVE_SESSION_CHECK_MS="600000",
            PORTAL_RATELIMIT_SIGNIN="1000/m",
            PORTAL_CACHE_PREFIX=f"access-{uuid.uuid4().hex[:8]}",
        )
    ).start()
    yield server
    server.stop()


@pytest.fixture
def pushed(transactional_db, push_only_server: LiveGateway) -> LiveGateway:  # noqa: ANN001
    ensure_site_and_plans()
    return push_only_server


@pytest.fixture
def rechecked(transactional_db, gateway: LiveGateway) -> LiveGateway:  # noqa: ANN001
    """The shared gateway, with the default re-check interval: what closes a feed when nothing pushes."""
    ensure_site_and_plans()
    return gateway


# --- Every way a session ends closes its feed ------------------------------------------------------------------------


def test_sign_out_closes_the_feed_at_once(pushed: LiveGateway, open_feed: Callable[..., FeedSocket]) -> None:
    user = make_user("leaver@example.com")
    org = make_org("leaver", owner=user)
    http = sign_in(pushed.url, user.email)
    session_key = session_of(http)
    feed = open_feed(pushed.url, session_key)
    assert_still_streams(feed, org.pk)
    assert post_form(http, "/accounts/logout/").status_code == 302
    assert feed.wait_closed() == SIGNED_OUT
    assert feed_refused(pushed.url, session_key)


def test_sign_out_everywhere_else_closes_the_other_sessions_feeds_only(
    pushed: LiveGateway, open_feed: Callable[..., FeedSocket]
) -> None:
    user = make_user("two-devices@example.com")
    org = make_org("two-devices", owner=user)
    laptop = sign_in(pushed.url, user.email, agent="laptop")
    phone = sign_in(pushed.url, user.email, agent="phone")
    laptop_feed, phone_feed = open_feed(pushed.url, session_of(laptop)), open_feed(pushed.url, session_of(phone))
    assert post_form(laptop, "/portal/profile/sessions/sign-out-others").status_code == 302
    assert phone_feed.wait_closed() == SIGNED_OUT
    assert_still_streams(laptop_feed, org.pk)


def test_password_change_closes_the_other_sessions_feeds(pushed: LiveGateway, open_feed: Callable[..., FeedSocket]) -> None:
    user = make_user("rotator@example.com")
    org = make_org("rotator", owner=user)
    laptop = sign_in(pushed.url, user.email, agent="laptop")
    phone = sign_in(pushed.url, user.email, agent="phone")
    phone_feed = open_feed(pushed.url, session_of(phone))
    changed = post_form(
        laptop,
        "/accounts/password/change/",
        {"oldpassword": PASSWORD, "password1": "a-new-pass-phrase-77", "password2": "a-new-pass-phrase-77"},
    )
    assert changed.status_code == 302, changed.text[:500]
    assert phone_feed.wait_closed() == SIGNED_OUT
    # The session that changed it stays signed in (under a new key) and opens a feed again.
    laptop_feed = open_feed(pushed.url, session_of(laptop))
    assert_still_streams(laptop_feed, org.pk)


def test_deleting_the_account_closes_its_feeds(pushed: LiveGateway, open_feed: Callable[..., FeedSocket]) -> None:
    user = make_user("goner@example.com")
    make_org("goner", owner=user)
    http = sign_in(pushed.url, user.email)
    other = sign_in(pushed.url, user.email, agent="other device")
    feed, other_feed = open_feed(pushed.url, session_of(http)), open_feed(pushed.url, session_of(other))
    response = post_form(http, "/portal/profile/delete", {"password": PASSWORD})
    assert response.status_code == 302 and response.headers["location"] == "/accounts/login/"
    assert feed.wait_closed() == SIGNED_OUT
    assert other_feed.wait_closed() == SIGNED_OUT


def test_deactivating_the_user_closes_its_feeds(pushed: LiveGateway, open_feed: Callable[..., FeedSocket]) -> None:
    user = make_user("suspect@example.com")
    make_org("suspect", owner=user)
    feed = open_feed(pushed.url, session_of(sign_in(pushed.url, user.email)))
    user.is_active = False
    user.save()  # what staff do in the admin
    assert feed.wait_closed() == SIGNED_OUT


# --- What nothing announces is caught by the interval check ------------------------------------------------------


def test_an_expired_session_closes_its_feed(rechecked: LiveGateway, open_feed: Callable[..., FeedSocket]) -> None:
    from django.contrib.sessions.models import Session

    user = make_user("sleepy@example.com")
    make_org("sleepy", owner=user)
    session_key = database_session(user)
    feed = open_feed(rechecked.url, session_key)
    Session.objects.filter(session_key=session_key).update(expire_date=timezone.now() - timedelta(seconds=1))  # no signal
    assert feed.wait_closed() == SIGNED_OUT


def test_a_password_changed_behind_the_portals_back_closes_the_feed(
    rechecked: LiveGateway, open_feed: Callable[..., FeedSocket]
) -> None:
    from django.contrib.auth.hashers import make_password

    user = make_user("reset-by-ops@example.com")
    make_org("reset-by-ops", owner=user)
    feed = open_feed(rechecked.url, database_session(user))
    User.objects.filter(pk=user.pk).update(password=make_password("set-by-a-script-42"))  # no signal
    assert feed.wait_closed() == SIGNED_OUT


def test_a_membership_gone_without_a_signal_closes_the_feed(rechecked: LiveGateway, open_feed: Callable[..., FeedSocket]) -> None:
    owner = make_user("owner@example.com")
    member = make_user("member@example.com")
    org = make_org("quiet", owner=owner)
    membership = add_member(org, member, Membership.Role.MEMBER)
    make_org("members-own", owner=member)
    feed = open_feed(rechecked.url, database_session(member), org=org.pk)
    with connection.cursor() as cursor:  # a repair by hand in the database: no Django signal
        cursor.execute("DELETE FROM accounts_membership WHERE id = %s", [membership.pk])
    assert feed.wait_closed() == NOT_A_MEMBER


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="the Redis channel layer needs REDIS_URL")
def test_a_feed_left_open_outlives_the_channel_layers_blocking_read(
    rechecked: LiveGateway, open_feed: Callable[..., FeedSocket]
) -> None:
    # channels_redis waits for a message with a 5 s BZPOPMIN; with redis-py's default 5 s socket timeout the read
    # timed out first and the consumer died (close 1006), so a page left open lost its feed every few seconds.
    user = make_user("patient@example.com")
    org = make_org("patient", owner=user)
    feed = open_feed(rechecked.url, database_session(user), org=org.pk)
    time.sleep(7)  # longer than one blocking read of the channel layer: the wait under test
    assert_still_streams(feed, org.pk)


# --- Losing the organization ----------------------------------------------------------------------------------


def test_a_removed_member_loses_the_organizations_feed_and_playground_at_once(
    pushed: LiveGateway, open_feed: Callable[..., FeedSocket]
) -> None:
    owner = make_user("boss@example.com")
    member = make_user("temp@example.com")
    org = make_org("shop", owner=owner)
    other = make_org("temps-own", owner=member)
    add_member(org, member, Membership.Role.MEMBER)
    member_http = sign_in(pushed.url, member.email)
    shop_feed = open_feed(pushed.url, session_of(member_http), org=org.pk)
    own_feed = open_feed(pushed.url, session_of(member_http), org=other.pk)
    owner_http = sign_in(pushed.url, owner.email)
    target = Membership.objects.get(user=member, organization=org)
    removed = post_form(owner_http, f"/portal/organization/members/{target.pk}/remove")
    assert removed.status_code == 302 and not Membership.objects.filter(pk=target.pk).exists()
    assert shop_feed.wait_closed() == NOT_A_MEMBER
    assert_still_streams(own_feed, other.pk)  # the same session's feed of its own organization goes on
    # A playground page left open on the shop is refused, not charged to the organization the session falls back to.
    member_http.get("/portal/playground")
    refused = member_http.post(
        "/portal/playground/chat/completions",
        json={"model": "oss-20b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        headers={"X-CSRFToken": member_http.cookies["csrftoken"], "X-Portal-Organization": str(org.pk)},
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "not_a_member"
    assert not feed_refused(pushed.url, session_of(member_http), org=other.pk)
    assert feed_refused(pushed.url, session_of(member_http), org=org.pk)


# --- The admin's door --------------------------------------------------------------------------------------------


@pytest.fixture
def admin_door(transactional_db, simulator) -> Iterator[LiveGateway]:  # noqa: ANN001
    """A daphne of its own with production's sign-in limit and admin two-factor: the guessing below uses up its
    per-address budget, which no other test should inherit."""
    ensure_site_and_plans()
    server = LiveGateway(
        env=live_gateway_env(
            simulator.base_url, PORTAL_ADMIN_REQUIRE_MFA="1", PORTAL_CACHE_PREFIX=f"admin-door-{uuid.uuid4().hex[:8]}"
        )
    ).start()
    yield server
    server.stop()


def sign_in_window_room(*, need_s: float) -> None:
    """Wait until this client's sign-in window (PORTAL_RATELIMIT_SIGNIN, 10/m) has `need_s` left. django-ratelimit's
    windows are fixed, with an offset per client (a crc32 of its address): a window that turned halfway through a burst
    would start the count again, and the burst's tail would be answered 200 (a flake, seen under load)."""
    from django_ratelimit.core import _get_window

    while _get_window("127.0.0.1", 60) - time.time() < need_s:
        time.sleep(0.25)


def test_forty_admin_passwords_then_the_right_one_get_nowhere(admin_door: LiveGateway) -> None:
    staff = User.objects.create_superuser(email="root@example.com", password="the-real-admin-pass-9")
    http = httpx.Client(base_url=admin_door.url, timeout=30)
    http.get("/accounts/login/")
    for i in range(40):
        response = post_form(http, "/admin/login/?next=/admin/", {"username": staff.email, "password": f"guess-{i}"})
        assert response.status_code == 302 and response.headers["location"].startswith("/accounts/login/")
    post_form(http, "/admin/login/?next=/admin/", {"username": staff.email, "password": "the-real-admin-pass-9"})
    assert http.get("/admin/").status_code == 302  # the admin's own form signs no one in
    sign_in_window_room(need_s=15)
    statuses = [
        post_form(http, "/accounts/login/?next=/admin/", {"login": staff.email, "password": f"guess-{i}"}).status_code
        for i in range(40)
    ]
    assert statuses[:10] == [200] * 10 and set(statuses[10:]) == {429}
    right = post_form(http, "/accounts/login/?next=/admin/", {"login": staff.email, "password": "the-real-admin-pass-9"})
    assert right.status_code == 429
    assert http.get("/admin/").status_code == 302


def test_a_staff_password_alone_does_not_open_the_admin_when_two_factor_is_required(admin_door: LiveGateway) -> None:
    staff = User.objects.create_superuser(email="root2@example.com", password="the-real-admin-pass-9")
    http = httpx.Client(base_url=admin_door.url, timeout=30)
    http.get("/accounts/login/")
    signed = post_form(http, "/accounts/login/?next=/admin/", {"login": staff.email, "password": "the-real-admin-pass-9"})
    assert signed.status_code == 302 and signed.headers["location"] == "/admin/"
    assert http.get("/admin/").headers["location"] == "/admin/login/?next=/admin/"
    sent = http.get("/admin/login/?next=/admin/")
    assert sent.status_code == 302 and sent.headers["location"] == "/accounts/2fa/totp/activate/"
    assert http.get("/admin/accounts/user/").status_code == 302
