"""Usage a customer can audit: failed requests with their status and code, filters, request-id search, keyset pages,
cost per request and per group, bad input refused with a 400 (never a 500)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from apikeys.models import ApiKey
from apikeys.services import apikey_create
from tests.support.portal import Team, ensure_site_and_plans, make_team, portal_settings  # noqa: F401
from usage.models import UsageEvent
from usage.selectors import PageCursor

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
RANGE = "from=2026-03-01&to=2026-03-04"


def row(
    org,
    key,
    rid: str,
    *,
    when: datetime,
    alias: str = "oss-20b",
    status: str = "ok",
    http: int = 200,
    code: str = "",
    cost: int = 0,
    tokens: int = 10,
) -> UsageEvent:  # noqa: ANN001, E501
    return UsageEvent(
        request_id=rid,
        organization=org,
        api_key=key,
        alias=alias,
        route="chat.completions",
        status=status,
        http_status=http,
        error_code=code,
        prompt_tokens=tokens,
        total_tokens=tokens,
        cost_micros=cost,
        created_at=when,
    )


@pytest.fixture
def team(db, portal_settings) -> Team:  # noqa: ANN001, F811
    ensure_site_and_plans()
    return make_team()


@pytest.fixture
def audit_rows(team: Team) -> dict[str, ApiKey]:
    """Acme: two keys, two models, ok, failed (429, 502) and cancelled requests with costs; globex noise."""
    backend = ApiKey.objects.get(pk=team.acme_key_id)
    batch = apikey_create(organization=team.acme, name="batch jobs", created_by=team.owner).api_key
    a = team.acme
    UsageEvent.objects.bulk_create(
        [
            row(a, backend, "req_aa0001", when=T0, cost=1_500),
            row(a, backend, "req_aa0002", when=T0 + timedelta(minutes=1), status="error", http=429, code="rate_limit_exceeded"),
            row(a, batch, "req_ab0003", when=T0 + timedelta(minutes=2), alias="gemma4", cost=2_000_001),
            row(
                a,
                batch,
                "req_bb0004",
                when=T0 + timedelta(minutes=3),
                alias="gemma4",
                status="error",
                http=502,
                code="upstream_error",
            ),
            row(a, backend, "req_bb0005", when=T0 + timedelta(minutes=4), status="cancelled", http=499, cost=37),
            row(team.globex, ApiKey.objects.get(pk=team.globex_key_id), "req_aa9999", when=T0, cost=5),
        ]
    )
    return {"backend": backend, "batch": batch}


def page_of(client: Client, query: str) -> tuple[int, str]:
    response = client.get(f"/portal/usage?{query}")
    return response.status_code, response.content.decode()


def listed(page: str) -> list[str]:
    return re.findall(r'<tr data-request-id="([^"]+)"', page)


def test_failed_requests_show_their_status_and_error_code(team: Team, audit_rows: dict[str, ApiKey]) -> None:
    status, page = page_of(team.client(team.member), RANGE)
    assert status == 200
    assert '<span class="badge badge-red" title="rate_limit_exceeded">429 · rate_limit_exceeded</span>' in page
    assert '<span class="badge badge-red" title="upstream_error">502 · upstream_error</span>' in page
    assert 'id="kpi-errors">2<' in page


def test_filters_narrow_the_list_totals_and_splits(team: Team, audit_rows: dict[str, ApiKey]) -> None:
    client = team.client(team.member)
    _, page = page_of(client, f"{RANGE}&model=gemma4")
    assert listed(page) == ["req_bb0004", "req_ab0003"]
    assert 'id="kpi-requests">2<' in page and 'id="kpi-cost" data-micros="2000001">$2.000001<' in page
    _, page = page_of(client, f"{RANGE}&key={audit_rows['backend'].pk}")
    assert listed(page) == ["req_bb0005", "req_aa0002", "req_aa0001"]
    _, page = page_of(client, f"{RANGE}&status=error")
    assert listed(page) == ["req_bb0004", "req_aa0002"]
    _, page = page_of(client, f"{RANGE}&status=error&model=oss-20b")
    assert listed(page) == ["req_aa0002"]
    _, page = page_of(client, f"{RANGE}&status=cancelled")
    assert listed(page) == ["req_bb0005"]
    # The filter's choices stay every model and key of the range while one is chosen; the choice is kept.
    assert '<option value="gemma4">gemma4</option>' in page and "batch jobs</option>" in page
    _, page = page_of(client, f"{RANGE}&status=ok&model=gemma4")
    assert '<option value="gemma4" selected>' in page and '<option value="ok" selected>' in page


def test_request_id_search_is_exact_or_a_prefix_within_the_organization(team: Team, audit_rows: dict[str, ApiKey]) -> None:
    client = team.client(team.member)
    assert listed(page_of(client, f"{RANGE}&q=req_aa0002")[1]) == ["req_aa0002"]
    assert listed(page_of(client, f"{RANGE}&q=req_aa")[1]) == ["req_aa0002", "req_aa0001"]  # not globex's req_aa9999
    assert listed(page_of(client, f"{RANGE}&q=req_a")[1]) == ["req_ab0003", "req_aa0002", "req_aa0001"]
    status, page = page_of(client, f"{RANGE}&q=req_zz")
    assert status == 200 and listed(page) == [] and "No requests in this range yet." in page
    # LIKE's own wildcards are only text: `%` is refused by shape, `_` matches itself only.
    assert listed(page_of(client, f"{RANGE}&q=req_a_0001")[1]) == []
    _, page = page_of(client, f"{RANGE}&q=req_aa0002")
    assert "data-live-url" not in page  # one request found is not a live list


def test_cost_per_request_and_per_group_are_the_rows_costs(team: Team, audit_rows: dict[str, ApiKey]) -> None:
    _, page = page_of(team.client(team.member), RANGE)
    assert 'id="kpi-cost" data-micros="2001538">$2.001538<' in page  # 1,500 + 2,000,001 + 37; globex's 5 not counted
    first = page.split('data-request-id="req_ab0003"')[1].split("</tr>")[0]
    assert '<td class="num nowrap">$2.000001</td>' in first
    by_model = page.split('id="by-model"')[1].split("</table>")[0]
    assert '<tr data-group="gemma4">' in by_model and 'data-cost="2000001">$2.000001<' in by_model
    assert 'data-cost="1537">$0.001537<' in by_model
    by_key = page.split('id="by-key"')[1].split("</table>")[0]
    assert f'<tr data-group="{audit_rows["backend"].pk}">' in by_key and 'data-cost="1537">$0.001537<' in by_key


def test_pages_go_past_the_latest_25_without_skipping_or_repeating(team: Team) -> None:
    key = ApiKey.objects.get(pk=team.acme_key_id)
    # 61 rows, in pairs sharing one instant: the cursor's id breaks the ties.
    rows = [row(team.acme, key, f"req_p{n:04d}", when=T0 + timedelta(seconds=n // 2)) for n in range(61)]
    UsageEvent.objects.bulk_create(rows)
    newest_first = list(
        UsageEvent.objects.filter(organization=team.acme).order_by("-created_at", "-id").values_list("request_id", flat=True)
    )
    client = team.client(team.member)
    seen: list[str] = []
    query = RANGE
    pages = 0
    while True:
        status, page = page_of(client, query)
        assert status == 200
        ids = listed(page)
        seen += ids
        pages += 1
        found = re.search(r'href="\?([^"]+)" id="page-older"', page)
        if not found:
            break
        assert len(ids) == 25
        query = found.group(1).replace("&amp;", "&")
        assert "from=2026-03-01" in query and "to=2026-03-04" in query
    assert pages == 3 and seen == newest_first  # 25 + 25 + 11, in order, each once
    assert 'id="page-newest"' in page and "Older requests" in page


def test_pages_keep_the_filters(team: Team) -> None:
    key = ApiKey.objects.get(pk=team.acme_key_id)
    UsageEvent.objects.bulk_create(
        [
            row(
                team.acme,
                key,
                f"req_f{n:04d}",
                when=T0 + timedelta(seconds=n),
                status="error" if n % 2 else "ok",
                http=500 if n % 2 else 200,
            )
            for n in range(60)
        ]  # noqa: E501
    )
    client = team.client(team.member)
    _, page = page_of(client, f"{RANGE}&status=error")
    older = re.search(r'href="\?([^"]+)" id="page-older"', page).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    assert "status=error" in older
    _, second = page_of(client, older)
    assert [int(rid[5:]) % 2 for rid in listed(second)] == [1] * 5  # 30 failed: 25, then 5


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("model=" + "x" * 101, "model"),
        ("model=%3Cscript%3E", "model"),
        ("key=abc", "key"),
        ("key=" + "9" * 19, "key"),
        ("status=failed", "status"),
        ("q=req%25", "q"),
        ("q=" + "a" * 65, "q"),
        ("before=yesterday", "before"),
        ("before=1.2.3", "before"),
        ("before=" + "9" * 17 + ".1", "before"),
    ],
)
def test_bad_filters_are_a_400_that_says_which(team: Team, query: str, field: str) -> None:
    status, page = page_of(team.client(team.member), query)
    assert status == 400
    assert "That page does not exist" in page if field == "before" else f"That filter does not work ({field})" in page
    response = team.client(team.member).get(f"/portal/usage-summary?{query}", HTTP_ACCEPT="application/json")
    if field == "before":
        assert response.status_code == 200  # the summary has no pages; the parameter means nothing there
    else:
        assert response.status_code == 400 and field in response.json()


def test_a_nul_in_a_filter_is_refused_before_the_view(team: Team) -> None:
    assert page_of(team.client(team.member), "q=%00")[0] == 400  # portal_project.security refuses it for every page


def test_summary_api_takes_the_same_filters(team: Team, audit_rows: dict[str, ApiKey]) -> None:
    client = team.client(team.owner)
    body = client.get(f"/portal/usage-summary?{RANGE}&group_by=model&status=error", HTTP_ACCEPT="application/json").json()
    assert [(r["model"], r["requests"], r["errors"]) for r in body["rows"]] == [("gemma4", 1, 1), ("oss-20b", 1, 1)]
    body = client.get(f"/portal/usage-summary?{RANGE}&group_by=key&q=req_ab", HTTP_ACCEPT="application/json").json()
    assert body["totals"]["cost_micros"] == 2_000_001 and body["rows"][0]["key_id"] == audit_rows["batch"].pk


def test_page_cursor_round_trips() -> None:
    cursor = PageCursor(created_at=datetime(2026, 3, 2, 12, 0, 0, 123456, tzinfo=UTC), id=42)
    assert str(cursor) == "1772452800123456.42"
    assert PageCursor.parse(str(cursor)) == cursor


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({"model": "gemma4"}, "usage_org_alias_created"),
        ({"status": "error"}, "usage_org_notok_created"),
    ],
)
def test_each_filter_has_an_index_postgres_can_use(team: Team, filters: dict[str, str], index: str) -> None:
    from django.db import connection

    from usage.selectors import DateRange, UsageFilters, _events

    if connection.vendor != "postgresql":
        pytest.skip("the plan of PostgreSQL")
    events = _events(team.acme.pk, DateRange(T0.date(), T0.date()), UsageFilters(**filters)).order_by("-created_at", "-id")
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # a tiny table is read whole otherwise: ask what it could use
        plan = events.explain()
    assert index in plan
