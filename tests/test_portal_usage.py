"""The usage page, the usage summary API and the live feed: exact numbers, one organization at a time, bounded queries."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.test import Client
from django.urls import path
from django.utils import timezone

from apikeys.models import ApiKey
from apikeys.services import apikey_create
from portal.consumers import UsageFeedConsumer
from tests.support.portal import Team, ensure_site_and_plans, make_team, portal_settings  # noqa: F401
from usage.live import apublish_usage_events
from usage.models import UsageEvent
from usage.selectors import DateRange, date_range_parse
from usage.services import UsageRecord

DAY1 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
DAY2 = datetime(2026, 3, 3, 23, 59, 59, tzinfo=UTC)
DAY3 = datetime(2026, 3, 4, 0, 0, 0, tzinfo=UTC)


def event(
    team_org,
    key,
    n: int,
    *,
    when: datetime,
    alias: str = "oss-20b",
    prompt: int = 0,
    completion: int = 0,  # noqa: ANN001
    status: str = "ok",
    http_status: int = 200,
    cost: int = 0,
    error_code: str = "",
) -> UsageEvent:
    return UsageEvent(
        request_id=f"req_{team_org.slug}_{n:06d}",
        organization=team_org,
        api_key=key,
        alias=alias,
        route="chat.completions",
        status=status,
        http_status=http_status,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        duration_ms=100 + n,
        created_at=when,
        cost_micros=cost,
        error_code=error_code,
    )


@pytest.fixture
def team(db, portal_settings) -> Team:  # noqa: ANN001, F811
    ensure_site_and_plans()
    return make_team()


@pytest.fixture
def known_events(team: Team) -> dict[str, ApiKey]:
    """Eight acme events over three days, two models, two keys (one later deleted), plus globex noise."""
    backend = ApiKey.objects.get(pk=team.acme_key_id)
    batch = apikey_create(organization=team.acme, name="batch jobs", created_by=team.owner).api_key
    gone = apikey_create(organization=team.acme, name="deleted later", created_by=team.owner).api_key
    acme = team.acme
    UsageEvent.objects.bulk_create(
        [
            event(acme, backend, 1, when=DAY1, prompt=10, completion=20, cost=1_250),
            event(acme, backend, 2, when=DAY1 + timedelta(hours=1), prompt=5, completion=5, cost=500),
            event(acme, batch, 3, when=DAY1 + timedelta(hours=2), alias="gemma4", prompt=100, completion=1, cost=10_100),
            event(
                acme, backend, 4, when=DAY2, prompt=7, completion=0, status="error", http_status=502, error_code="upstream_error"
            ),
            event(acme, batch, 5, when=DAY3, alias="gemma4", prompt=1, completion=2, cost=70),
            event(acme, gone, 6, when=DAY3 + timedelta(hours=5), prompt=3, completion=3, cost=90),
            event(acme, backend, 7, when=DAY3 + timedelta(hours=6), prompt=0, completion=0, status="cancelled"),
            # Outside every range asked for below: the last second before it and the first one after.
            event(
                acme,
                backend,
                8,
                when=datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC),
                prompt=1000,
                completion=1000,
                cost=99_999_999,
            ),
            event(acme, backend, 9, when=datetime(2026, 3, 5, tzinfo=UTC), prompt=1000, completion=1000, cost=99_999_999),
            # Another organization's traffic in the same days.
            event(
                team.globex, ApiKey.objects.get(pk=team.globex_key_id), 1, when=DAY1, prompt=999, completion=999, cost=1_000_000
            ),
        ]
    )
    gone.delete()  # its events stay, detached from any key
    return {"backend": backend, "batch": batch}


def summary(client: Client, query: str) -> tuple[int, dict]:
    response = client.get(f"/portal/usage-summary?{query}", HTTP_ACCEPT="application/json")
    return response.status_code, response.json()


def test_summary_by_day_is_exact_and_zero_fills(team: Team, known_events: dict[str, ApiKey]) -> None:
    status, body = summary(team.client(team.member), "from=2026-03-01&to=2026-03-04&group_by=day")
    assert status == 200
    assert body == {
        "organization": "acme",
        "from": "2026-03-01",
        "to": "2026-03-04",
        "time_zone": "UTC",
        "group_by": "day",
        "totals": {
            "requests": 7,
            "errors": 1,
            "prompt_tokens": 126,
            "completion_tokens": 31,
            "total_tokens": 157,
            "cost_micros": 12_010,
        },
        "rows": [
            {
                "day": "2026-03-01",
                "requests": 0,
                "errors": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "total_tokens": 0,
                "cost_micros": 0,
            },
            {
                "day": "2026-03-02",
                "requests": 3,
                "errors": 0,
                "prompt_tokens": 115,
                "completion_tokens": 26,
                "total_tokens": 141,
                "cost_micros": 11_850,
            },
            {
                "day": "2026-03-03",
                "requests": 1,
                "errors": 1,
                "prompt_tokens": 7,
                "completion_tokens": 0,
                "total_tokens": 7,
                "cost_micros": 0,
            },
            {
                "day": "2026-03-04",
                "requests": 3,
                "errors": 0,
                "prompt_tokens": 4,
                "completion_tokens": 5,
                "total_tokens": 9,
                "cost_micros": 160,
            },
        ],
    }


def test_summary_by_model_and_by_key_are_exact(team: Team, known_events: dict[str, ApiKey]) -> None:
    client = team.client(team.owner)
    _, by_model = summary(client, "from=2026-03-02&to=2026-03-04&group_by=model")
    assert by_model["rows"] == [
        {
            "model": "oss-20b",
            "requests": 5,
            "errors": 1,
            "prompt_tokens": 25,
            "completion_tokens": 28,
            "total_tokens": 53,
            "cost_micros": 1_840,
        },
        {
            "model": "gemma4",
            "requests": 2,
            "errors": 0,
            "prompt_tokens": 101,
            "completion_tokens": 3,
            "total_tokens": 104,
            "cost_micros": 10_170,
        },
    ]
    _, by_key = summary(client, "from=2026-03-02&to=2026-03-04&group_by=key")
    backend, batch = known_events["backend"], known_events["batch"]
    assert by_key["rows"] == [
        {
            "key_id": backend.pk,
            "key_name": "acme backend",
            "key_masked": backend.masked,
            "requests": 4,
            "errors": 1,
            "prompt_tokens": 22,
            "completion_tokens": 25,
            "total_tokens": 47,
            "cost_micros": 1_750,
        },
        {
            "key_id": batch.pk,
            "key_name": "batch jobs",
            "key_masked": batch.masked,
            "requests": 2,
            "errors": 0,
            "prompt_tokens": 101,
            "completion_tokens": 3,
            "total_tokens": 104,
            "cost_micros": 10_170,
        },
        {
            "key_id": None,
            "key_name": "(deleted key)",
            "key_masked": "",
            "requests": 1,
            "errors": 0,
            "prompt_tokens": 3,
            "completion_tokens": 3,
            "total_tokens": 6,
            "cost_micros": 90,
        },
    ]
    assert (
        by_key["totals"]
        == by_model["totals"]
        == {
            "requests": 7,
            "errors": 1,
            "prompt_tokens": 126,
            "completion_tokens": 31,
            "total_tokens": 157,
            "cost_micros": 12_010,
        }
    )


def test_summary_sees_only_the_callers_organization(team: Team, known_events: dict[str, ApiKey]) -> None:
    _, body = summary(team.client(team.outsider), "from=2026-03-01&to=2026-03-04&group_by=model")
    assert body["organization"] == "globex"
    assert body["rows"] == [
        {
            "model": "oss-20b",
            "requests": 1,
            "errors": 0,
            "prompt_tokens": 999,
            "completion_tokens": 999,
            "total_tokens": 1998,
            "cost_micros": 1_000_000,
        }
    ]
    status, refused = summary(team.client(team.outsider), "from=2026-03-01&to=2026-03-04&org=acme")
    assert status == 404 and refused == {"detail": "No such organization."}
    status, refused = summary(team.client(team.outsider), f"org={team.acme.pk}")
    assert status == 404


def test_summary_rejects_bad_parameters(team: Team) -> None:
    client = team.client(team.owner)
    assert summary(client, "group_by=hour") == (400, {"group_by": ["one of day, model, key"]})
    assert summary(client, "from=2026-13-01") == (400, {"detail": "dates are written YYYY-MM-DD"})
    assert summary(client, "from=2026-03-05&to=2026-03-01") == (400, {"detail": "'from' is after 'to'"})
    assert summary(client, "from=2024-01-01&to=2026-01-01")[0] == 400


def test_summary_refuses_anonymous_callers(team: Team) -> None:
    response = Client().get("/portal/usage-summary", HTTP_ACCEPT="application/json")
    assert response.status_code == 403
    assert response.json() == {"detail": "Authentication credentials were not provided."}


def test_summary_defaults_to_the_last_two_weeks(team: Team) -> None:
    _, body = summary(team.client(team.owner), "")
    today = timezone.now().astimezone(UTC).date()
    assert body["to"] == today.isoformat()
    assert body["from"] == (today - timedelta(days=13)).isoformat()
    assert len(body["rows"]) == 14


def test_date_range_parse() -> None:
    assert date_range_parse("2026-03-01", "2026-03-01") == DateRange(date(2026, 3, 1), date(2026, 3, 1))
    assert date_range_parse(None, "2026-03-14") == DateRange(date(2026, 3, 1), date(2026, 3, 14))
    assert date_range_parse(None, None, today=date(2026, 3, 14)).start == date(2026, 3, 1)


# --- The page ---------------------------------------------------------------------------------------------


def test_page_shows_totals_splits_and_latest_requests(team: Team, known_events: dict[str, ApiKey]) -> None:
    response = team.client(team.member).get("/portal/usage?from=2026-03-01&to=2026-03-04")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="kpi-requests">7<' in page
    assert 'id="kpi-tokens">157<' in page
    assert "Requests per day" in page and "<svg" in page and page.count('class="bar"') == 8  # 4 days × 2 charts
    assert (
        "req_acme_000004" in page and '<span class="badge badge-red" title="upstream_error">502 · upstream_error</span>' in page
    )
    assert "req_acme_000008" not in page and "req_acme_000009" not in page  # outside the range
    assert "req_globex_000001" not in page
    assert "batch jobs" in page and "(deleted key)" in page and "gemma4" in page
    assert "data-live-url" not in page  # a range in the past has no live feed


def test_page_and_live_feed_show_each_requests_end_user(team: Team) -> None:
    """The customer's own id for their end user (`user` / `metadata.user_id`), per request; escaped like any text."""
    from usage.live import event_payload

    key = ApiKey.objects.get(pk=team.acme_key_id)
    rows = [event(team.acme, key, n, when=DAY1 + timedelta(minutes=n)) for n in (1, 2, 3)]
    rows[0].end_user, rows[1].end_user = "user-42", "<b>bold</b>"
    UsageEvent.objects.bulk_create(rows)
    page = team.client(team.member).get("/portal/usage?from=2026-03-01&to=2026-03-04").content.decode()
    assert "<th>End user</th>" in page
    assert '<code class="mono small">user-42</code>' in page
    assert '<code class="mono small">&lt;b&gt;bold&lt;/b&gt;</code>' in page and "<b>bold</b>" not in page
    row_3 = page.split('data-request-id="req_acme_000003"')[1].split("</tr>")[0]
    assert row_3.count("<td") == 8 and '<span class="muted">—</span></td>' in row_3  # none sent: a dash
    record = _record(team.acme.pk, team.acme_key_id, "req_acme_live")
    record.end_user = "user-42"
    assert event_payload(record)["end_user"] == "user-42"
    assert event_payload(UsageEvent.objects.get(request_id="req_acme_000003"))["end_user"] == ""


def test_page_of_the_current_range_has_the_live_feed(team: Team) -> None:
    page = team.client(team.owner).get("/portal/usage").content.decode()
    assert f'data-live-url="/portal/ws/usage?org={team.acme.pk}"' in page
    assert "3-hour window" in page and "/ 100<" in page  # the free plan's allowance, in the limiter's own window


def test_usage_and_billing_pages_count_the_same_allowance(team: Team, monkeypatch: pytest.MonkeyPatch) -> None:
    """One source: both pages read portal.allowances (the limiter's fixed windows), so a request made before the
    window's start counts on neither, where the usage page's old rolling window counted it (105/100 against 100/100)."""
    import re

    from django.utils import timezone

    import gateway.limits
    from portal.allowances import allowances_for

    # Counted from the usage rows (the limiter's Redis counters are what requests through a gateway fill; here the
    # rows are made directly), so the window's edge decides what counts.
    monkeypatch.setattr(gateway.limits.limiter, "redis_url", None)

    key = ApiKey.objects.get(pk=team.acme_key_id)
    (window,) = [a for a in allowances_for(team.acme.pk, team.acme.plan, now=timezone.now()) if a.kind == "window_requests"]
    before = [event(team.acme, key, n, when=window.starts_at - timedelta(minutes=n)) for n in (1, 2)]
    inside = [event(team.acme, key, n, when=window.starts_at + timedelta(seconds=n)) for n in (3, 4, 5)]
    UsageEvent.objects.bulk_create(before + inside)
    usage_page = team.client(team.owner).get("/portal/usage").content.decode()
    billing_page = team.client(team.owner).get("/portal/billing").content.decode()
    on_usage = re.search(r"3-hour window</span><span><strong>(\d+)</strong> / 100<", usage_page)
    on_billing = re.search(r'data-allowance="window_requests"[^>]*>.*?allowance-used">(\d+)<', billing_page, re.S)
    assert on_usage and on_billing, "an allowance is missing from a page"
    assert window.counted_by == "usage"
    assert on_usage.group(1) == on_billing.group(1) == "3"  # the three inside the window, not the two before it


def test_page_with_a_bad_range_falls_back_and_says_so(team: Team) -> None:
    page = team.client(team.owner).get("/portal/usage?from=yesterday").content.decode()
    assert "That range does not work: dates are written YYYY-MM-DD" in page


def test_page_redirects_anonymous_visitors() -> None:
    response = Client().get("/portal/usage")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/?next=/portal/usage"


def test_page_of_a_busy_organization_costs_a_bounded_number_of_queries(
    team: Team,
    django_assert_max_num_queries,  # noqa: ANN001
) -> None:
    keys = [ApiKey.objects.get(pk=team.acme_key_id)] + [
        apikey_create(organization=team.acme, name=f"key {i}", created_by=team.owner).api_key for i in range(4)
    ]
    now = timezone.now()
    UsageEvent.objects.bulk_create(
        [
            event(
                team.acme,
                keys[i % 5],
                i,
                when=now - timedelta(minutes=i * 3),
                alias=("oss-20b", "gemma4")[i % 2],
                prompt=i % 50,
                completion=i % 7,
            )
            for i in range(5000)
        ],
        batch_size=1000,
    )
    client = team.client(team.owner)
    with django_assert_max_num_queries(12):
        response = client.get("/portal/usage?from=" + (now - timedelta(days=13)).date().isoformat())
    assert response.status_code == 200
    page = response.content.decode()
    in_range = UsageEvent.objects.filter(organization=team.acme, created_at__date__gte=(now - timedelta(days=13)).date()).count()
    assert f'id="kpi-requests">{in_range:,}<' in page
    assert page.count("<tr data-request-id=") == 25
    with django_assert_max_num_queries(8):
        assert client.get("/portal/usage-summary?group_by=key", HTTP_ACCEPT="application/json").status_code == 200


# --- The live feed --------------------------------------------------------------------------------------------


def _feed_app():  # noqa: ANN202
    return AuthMiddlewareStack(URLRouter([path("portal/ws/usage", UsageFeedConsumer.as_asgi())]))


async def _connect(client: Client, query: str = "") -> tuple[WebsocketCommunicator, bool]:
    cookie = "; ".join(f"{name}={morsel.value}" for name, morsel in client.cookies.items())
    communicator = WebsocketCommunicator(_feed_app(), f"/portal/ws/usage{query}", headers=[(b"cookie", cookie.encode())])
    connected, _ = await communicator.connect(timeout=5)
    return communicator, connected


def _record(org_id: int, key_id: int | None, request_id: str) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        organization_id=org_id,
        api_key_id=key_id,
        alias="oss-20b",
        route="chat.completions",
        status="ok",
        http_status=200,
        created_at=timezone.now(),
        prompt_tokens=3,
        completion_tokens=4,
        total_tokens=7,
        duration_ms=12,
        streamed=True,
    )


@pytest.mark.django_db(transaction=True)
def test_live_feed_sends_the_organizations_new_requests_only(portal_settings) -> None:  # noqa: ANN001, F811
    ensure_site_and_plans()
    team = make_team()
    member = team.client(team.member)

    async def scenario() -> list[dict]:
        feed, connected = await _connect(member)
        assert connected
        ready = await feed.receive_json_from(timeout=5)
        # Opened without a cursor (?after=): nothing to catch up on, and the cursor to reconnect with.
        assert ready == {
            "type": "ready",
            "organization_id": team.acme.pk,
            "cursor": ready["cursor"],
            "events": [],
            "truncated": False,
        }
        # As the gateway's usage writer calls it: on its event loop.
        await apublish_usage_events(
            [
                _record(team.globex.pk, team.globex_key_id, "req_globex_live"),
                _record(team.acme.pk, team.acme_key_id, "req_acme_live"),
            ]
        )
        got = [await feed.receive_json_from(timeout=5)]
        assert await feed.receive_nothing(timeout=0.3)
        await feed.disconnect()
        return got

    received = async_to_sync(scenario)()
    assert [m["request_id"] for m in received] == ["req_acme_live"]
    acme_key = ApiKey.objects.get(pk=team.acme_key_id)
    assert received[0]["key"] == {"name": "acme backend", "masked": acme_key.masked}
    assert received[0]["total_tokens"] == 7 and received[0]["streamed"] is True and received[0]["model"] == "oss-20b"


@pytest.mark.django_db(transaction=True)
def test_live_feed_refuses_anonymous_and_other_organizations(portal_settings) -> None:  # noqa: ANN001, F811
    ensure_site_and_plans()
    team = make_team()
    member = team.client(team.member)

    async def scenario() -> tuple[bool, bool, bool]:
        _, anonymous = await _connect(Client())
        _, foreign = await _connect(member, f"?org={team.globex.pk}")
        own, mine = await _connect(member, f"?org={team.acme.pk}")
        await own.disconnect()
        return anonymous, foreign, mine

    assert async_to_sync(scenario)() == (False, False, True)


def test_channel_layer_follows_redis_url() -> None:
    expected = "channels_redis.core.RedisChannelLayer" if django_settings.REDIS_URL else "channels.layers.InMemoryChannelLayer"
    assert django_settings.CHANNEL_LAYERS["default"]["BACKEND"] == expected
