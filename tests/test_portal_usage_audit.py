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
    assert '<td class="num nowrap" data-label="Tokens · cost">10<span class="sub cost">$2.000001</span></td>' in first
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


# --- CSV export ------------------------------------------------------------------------------------------------------


def export(client: Client, query: str) -> tuple[int, str, object]:
    """Django's test client is WSGI, which would read the async body into memory (with a warning): under daphne, as
    deployed, it streams (test_export_of_many_rows_streams_chunk_by_chunk reads it the ASGI way)."""
    from asgiref.sync import async_to_sync

    response = client.get(f"/portal/usage/export?{query}")
    if not response.streaming:
        return response.status_code, response.content.decode(), response

    async def body() -> bytes:
        return b"".join([piece async for piece in response.streaming_content])  # type: ignore[union-attr]

    return response.status_code, async_to_sync(body)().decode(), response


def test_export_of_rows_is_the_filtered_rows_newest_first(team: Team, audit_rows: dict[str, ApiKey]) -> None:
    import csv

    status, text, response = export(team.client(team.member), f"{RANGE}&kind=rows&model=gemma4")
    assert status == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"  # type: ignore[index]
    assert response["Content-Disposition"] == 'attachment; filename="usage-rows-acme-2026-03-01-2026-03-04.csv"'  # type: ignore[index]
    lines = list(csv.reader(text.splitlines()))
    assert lines[0][:4] == ["created_at", "request_id", "model", "route"]
    batch = audit_rows["batch"].pk
    assert [dict(zip(lines[0], line, strict=True)) for line in lines[1:]] == [
        {
            "created_at": "2026-03-02T12:03:00.000000+00:00",
            "request_id": "req_bb0004",
            "model": "gemma4",
            "route": "chat.completions",
            "streamed": "false",
            "key_id": str(batch),
            "key_name": "batch jobs",
            "end_user": "",
            "status": "error",
            "http_status": "502",
            "error_code": "upstream_error",
            "prompt_tokens": "10",
            "completion_tokens": "0",
            "total_tokens": "10",
            "cost_micros": "0",
            "cost_usd": "0.000000",
            "duration_ms": "0",
        },
        {
            "created_at": "2026-03-02T12:02:00.000000+00:00",
            "request_id": "req_ab0003",
            "model": "gemma4",
            "route": "chat.completions",
            "streamed": "false",
            "key_id": str(batch),
            "key_name": "batch jobs",
            "end_user": "",
            "status": "ok",
            "http_status": "200",
            "error_code": "",
            "prompt_tokens": "10",
            "completion_tokens": "0",
            "total_tokens": "10",
            "cost_micros": "2000001",
            "cost_usd": "2.000001",
            "duration_ms": "0",
        },
    ]


def test_export_of_daily_totals_has_every_day_of_the_range(team: Team, audit_rows: dict[str, ApiKey]) -> None:
    status, text, _ = export(team.client(team.member), f"{RANGE}&kind=daily")
    assert status == 200
    assert text.splitlines() == [
        "day,day_start,requests,errors,prompt_tokens,completion_tokens,total_tokens,cost_micros,cost_usd",
        "2026-03-01,2026-03-01T00:00:00+00:00,0,0,0,0,0,0,0.000000",
        "2026-03-02,2026-03-02T00:00:00+00:00,5,2,50,0,50,2001538,2.001538",
        "2026-03-03,2026-03-03T00:00:00+00:00,0,0,0,0,0,0,0.000000",
        "2026-03-04,2026-03-04T00:00:00+00:00,0,0,0,0,0,0,0.000000",
    ]


def test_export_escapes_cells_a_spreadsheet_would_run(team: Team) -> None:
    import csv

    key = apikey_create(organization=team.acme, name="=HYPERLINK(1)", created_by=team.owner).api_key
    users = ["=1+2", "+SUM(A1)", "-2+3", "@cmd", "\tx", "plain", "a=b"]
    rows = [row(team.acme, key, f"req_x{n}", when=T0 + timedelta(seconds=n)) for n in range(len(users))]
    for r, user in zip(rows, users, strict=True):
        r.end_user = user
    UsageEvent.objects.bulk_create(rows)
    _, text, _ = export(team.client(team.member), f"{RANGE}&kind=rows")
    lines = list(csv.DictReader(text.splitlines()))
    assert [line["end_user"] for line in lines][::-1] == ["'=1+2", "'+SUM(A1)", "'-2+3", "'@cmd", "'\tx", "plain", "a=b"]
    assert {line["key_name"] for line in lines} == {"'=HYPERLINK(1)"}


def test_export_times_are_iso_8601_with_the_zones_offset(team: Team, audit_rows: dict[str, ApiKey]) -> None:
    _, text, _ = export(team.client(team.member), "from=2026-03-02&to=2026-03-02&kind=rows&tz=America/New_York&q=req_aa0001")
    assert text.splitlines()[1].startswith("2026-03-02T07:00:00.000000-05:00,req_aa0001,")
    _, text, _ = export(team.client(team.member), "from=2026-03-02&to=2026-03-02&kind=daily&tz=Asia/Kolkata")
    assert text.splitlines()[1].startswith("2026-03-02,2026-03-02T00:00:00+05:30,5,")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("kind=everything", "kind"),
        ("tz=Mars/Olympus", "tz"),
        ("tz=../../etc/passwd", "tz"),
        ("from=2024-01-01&to=2026-01-01", "detail"),
        ("from=2026-02-30", "detail"),
        ("status=bad", "status"),
        ("q=" + "x" * 65, "q"),
    ],
)
def test_export_refuses_bad_input_with_a_400(team: Team, query: str, field: str) -> None:
    response = team.client(team.member).get(f"/portal/usage/export?{query}")
    assert response.status_code == 400 and field in response.json()
    assert team.client(team.member).get(f"/portal/usage/export?{query}", HTTP_ACCEPT="text/csv").status_code == 400


def test_export_refuses_anonymous_callers_and_other_organizations(team: Team, audit_rows: dict[str, ApiKey]) -> None:
    assert Client().get("/portal/usage/export").status_code == 403
    assert team.client(team.outsider).get("/portal/usage/export?org=acme").status_code == 404
    _, text, _ = export(team.client(team.outsider), f"{RANGE}&kind=rows")
    assert [line.split(",")[1] for line in text.splitlines()[1:]] == ["req_aa9999"]


def test_export_of_many_rows_streams_chunk_by_chunk(team: Team, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first rows leave before the last are read: one keyset query per chunk of EXPORT_CHUNK rows, each piece of
    the body one chunk, so memory holds a chunk whatever the range holds; the rows are exactly the database's."""
    import csv

    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    import usage.selectors
    from usage.selectors import EXPORT_CHUNK

    key = ApiKey.objects.get(pk=team.acme_key_id)
    total = EXPORT_CHUNK * 3 + 17
    UsageEvent.objects.bulk_create(
        [row(team.acme, key, f"req_s{n:06d}", when=T0 + timedelta(milliseconds=n // 3), cost=n) for n in range(total)],
        batch_size=2000,
    )
    client = AsyncClient()
    client.force_login(team.member)
    pieces: list[str] = []
    reads_at: list[int] = []  # how many chunks had been read from the database when each piece arrived
    reads: list[int] = []
    read_page = usage.selectors.usage_requests_page

    def counted(**kwargs: object) -> object:
        page = read_page(**kwargs)  # type: ignore[arg-type]
        reads.append(len(page.rows))
        return page

    monkeypatch.setattr(usage.selectors, "usage_requests_page", counted)

    async def download() -> None:
        response = await client.get(f"/portal/usage/export?{RANGE}&kind=rows")
        assert response.status_code == 200 and response.streaming and response.is_async
        async for piece in response.streaming_content:
            pieces.append(piece.decode())
            reads_at.append(len(reads))

    async_to_sync(download)()
    # The header, then one piece per chunk, each read when it was needed: the first rows went out after one read.
    assert reads_at == [0, 1, 2, 3, 4]
    assert reads == [EXPORT_CHUNK, EXPORT_CHUNK, EXPORT_CHUNK, 17]
    assert [piece.count("\r\n") for piece in pieces] == [1, EXPORT_CHUNK, EXPORT_CHUNK, EXPORT_CHUNK, 17]
    lines = list(csv.DictReader("".join(pieces).splitlines()))
    expected = list(
        UsageEvent.objects.filter(organization=team.acme).order_by("-created_at", "-id").values_list("request_id", "cost_micros")
    )
    assert [(line["request_id"], int(line["cost_micros"])) for line in lines] == expected
    assert len(lines) == total


# --- Time zones ------------------------------------------------------------------------------------------------------


def test_profile_sets_a_time_zone_and_refuses_a_name_zoneinfo_does_not_know(team: Team) -> None:
    client = team.client(team.member)
    response = client.post("/portal/profile", {"name": "Mia", "time_zone": "Europe/Berlin"})
    assert response.status_code == 302
    team.member.refresh_from_db()
    assert team.member.time_zone == "Europe/Berlin" and team.member.name == "Mia"
    assert '<option value="Europe/Berlin" selected>' in client.get("/portal/profile").content.decode()
    for bad in ("Mars/Olympus", "../../etc/passwd", "europe/berlin", "x" * 65, "Europe/Berlin\x00"):
        refused = client.post("/portal/profile", {"name": "Mia", "time_zone": bad})
        assert refused.status_code == 400
        assert "Select a valid choice." in refused.content.decode()
    team.member.refresh_from_db()
    assert team.member.time_zone == "Europe/Berlin"
    assert client.post("/portal/profile", {"name": "Mia M."}).status_code == 302  # a form without the zone keeps it
    team.member.refresh_from_db()
    assert team.member.time_zone == "Europe/Berlin"


def test_time_zone_parse() -> None:
    from accounts.time_zones import BadTimeZone, time_zone_parse, user_time_zone

    assert str(time_zone_parse("Asia/Kolkata")) == "Asia/Kolkata" and str(time_zone_parse("UTC")) == "UTC"
    for bad in ("", "Asia", "/etc/passwd", "Asia/../UTC", "asia/kolkata", "UTC " * 20):
        with pytest.raises(BadTimeZone):
            time_zone_parse(bad)
    assert str(user_time_zone(None)) == "UTC"


def test_page_days_and_times_are_the_users_zone(team: Team) -> None:
    team.member.time_zone = "Asia/Tokyo"  # UTC+9, no DST
    team.member.save(update_fields=["time_zone"])
    key = ApiKey.objects.get(pk=team.acme_key_id)
    UsageEvent.objects.bulk_create(
        [
            row(team.acme, key, "req_tz_late", when=datetime(2026, 3, 2, 20, 0, tzinfo=UTC), cost=7),  # Mar 3 05:00 JST
            row(team.acme, key, "req_tz_early", when=datetime(2026, 3, 2, 14, 59, tzinfo=UTC)),  # Mar 2 23:59 JST
        ]
    )
    client = team.client(team.member)
    _, page = page_of(client, "from=2026-03-03&to=2026-03-03")
    assert listed(page) == ["req_tz_late"]
    assert "<th>Time (Asia/Tokyo)</th>" in page and "(days in Asia/Tokyo)" in page
    assert '<td class="nowrap">Mar 3 05:00:00</td>' in page
    assert '<g data-day="2026-03-03" data-value="1"' in page
    body = client.get("/portal/usage-summary?from=2026-03-02&to=2026-03-03", HTTP_ACCEPT="application/json").json()
    assert body["time_zone"] == "Asia/Tokyo"
    assert [(r["day"], r["requests"], r["cost_micros"]) for r in body["rows"]] == [("2026-03-02", 1, 0), ("2026-03-03", 1, 7)]
    # The same rows in UTC days, when asked.
    body = client.get("/portal/usage-summary?from=2026-03-02&to=2026-03-03&tz=UTC", HTTP_ACCEPT="application/json").json()
    assert [(r["day"], r["requests"]) for r in body["rows"]] == [("2026-03-02", 2), ("2026-03-03", 0)]


def test_day_buckets_follow_daylight_saving_time(team: Team) -> None:
    """New York's 2026-03-08 has 23 hours: its buckets start at 05:00 UTC the day before and 04:00 UTC after."""
    key = ApiKey.objects.get(pk=team.acme_key_id)
    UsageEvent.objects.bulk_create(
        [
            row(team.acme, key, "req_dst1", when=datetime(2026, 3, 8, 4, 59, tzinfo=UTC)),  # Mar 7 23:59 EST
            row(team.acme, key, "req_dst2", when=datetime(2026, 3, 8, 5, 0, tzinfo=UTC)),  # Mar 8 00:00 EST
            row(team.acme, key, "req_dst3", when=datetime(2026, 3, 9, 3, 59, tzinfo=UTC)),  # Mar 8 23:59 EDT
            row(team.acme, key, "req_dst4", when=datetime(2026, 3, 9, 4, 0, tzinfo=UTC)),  # Mar 9 00:00 EDT
        ]
    )
    client = team.client(team.member)
    query = "from=2026-03-07&to=2026-03-09&tz=America/New_York"
    body = client.get(f"/portal/usage-summary?{query}", HTTP_ACCEPT="application/json").json()
    assert [(r["day"], r["requests"]) for r in body["rows"]] == [("2026-03-07", 1), ("2026-03-08", 2), ("2026-03-09", 1)]
    _, text, _ = export(client, f"{query}&kind=daily")
    assert [line.split(",")[:3] for line in text.splitlines()[1:]] == [
        ["2026-03-07", "2026-03-07T00:00:00-05:00", "1"],
        ["2026-03-08", "2026-03-08T00:00:00-05:00", "2"],
        ["2026-03-09", "2026-03-09T00:00:00-04:00", "1"],
    ]
    _, text, _ = export(client, f"{query}&kind=rows&q=req_dst3")
    assert text.splitlines()[1].startswith("2026-03-08T23:59:00.000000-04:00,req_dst3,")


def test_refusals_before_a_model_are_counted_from_the_request_logs(team: Team, audit_rows: dict[str, ApiKey]) -> None:
    """Authenticated, refused before a model was chosen: no usage row (gateway/pipeline.py), a request-log row that
    the page counts by status beside the failed requests; requests with a usage row, reads of stored responses, other
    organizations and other days are not counted."""
    from usage.models import RequestLog

    def log(
        rid: str, status: int, *, org=team.acme, path: str = "/v1/chat/completions", method: str = "POST", when: datetime = T0
    ) -> RequestLog:  # noqa: ANN001, E501
        return RequestLog(request_id=rid, organization=org, method=method, path=path, status=status, created_at=when)

    RequestLog.objects.bulk_create(
        [
            log("req_bad_body", 400),
            log("req_bad_body2", 400, path="/v1/messages"),
            log("req_no_model", 404, path="/v1/responses"),
            log("req_aa0002", 429),  # the limiter's refusal: a usage row, already in the list
            log("req_read", 404, path="/v1/responses/resp_x", method="GET"),
            log("req_other", 400, org=team.globex),
            log("req_old", 400, when=T0 - timedelta(days=30)),
            log("req_fine", 200),
        ]
    )
    client = team.client(team.member)
    _, page = page_of(client, RANGE)
    assert '<span class="kpi-note" id="refused-before-a-model"' in page
    assert "+ 3 refused before a model: 2 × 400, 1 × 404</span>" in page
    _, page = page_of(client, f"{RANGE}&status=error")  # a filtered view: these have no model, key or status row
    assert 'id="refused-before-a-model"' not in page


def test_costs_by_day_model_and_key_agree_with_the_ledger(team: Team) -> None:
    """With each row's cost_micros the magnitude of its debit (what the gateway writes), the page's sums are the
    ledger's: per UTC day and per model, to the micro-unit, written through the usage writer's own batch."""
    from billing.models import LedgerEntry, ModelPrice
    from billing.services import request_cost_micros
    from usage.services import UsageRecord, usage_record_batch

    ModelPrice.objects.create(alias="oss-20b", input_micros_per_million=150_000, output_micros_per_million=600_001)
    ModelPrice.objects.create(alias="gemma4", input_micros_per_million=70_000, output_micros_per_million=280_000)
    prices = {"oss-20b": (150_000, 600_001), "gemma4": (70_000, 280_000)}
    records = []
    for n in range(40):
        alias = ("oss-20b", "gemma4")[n % 2]
        prompt, completion = 17 * n + 3, 5 * n + 1
        status = ("ok", "ok", "cancelled", "error")[n % 4]
        cost = request_cost_micros(
            prompt_tokens=prompt, completion_tokens=completion,
            input_micros_per_million=prices[alias][0], output_micros_per_million=prices[alias][1],
        )  # fmt: skip
        records.append(
            UsageRecord(
                request_id=f"req_ledger{n:03d}", organization_id=team.acme.pk, api_key_id=team.acme_key_id, alias=alias,
                route="chat.completions", status=status, http_status=200 if status == "ok" else 502,
                created_at=T0 + timedelta(hours=5 * n), prompt_tokens=prompt, completion_tokens=completion,
                total_tokens=prompt + completion, cost_micros=cost,
            )
        )  # fmt: skip
    usage_record_batch(usage=records, logs=[])
    body = (
        team.client(team.owner)
        .get("/portal/usage-summary?from=2026-03-02&to=2026-03-12&group_by=day&tz=UTC", HTTP_ACCEPT="application/json")
        .json()
    )
    debits = LedgerEntry.objects.filter(organization=team.acme, kind=LedgerEntry.Kind.DEBIT)
    by_day: dict[str, int] = {}
    for entry in debits:
        day = entry.created_at.astimezone(UTC).date().isoformat()
        by_day[day] = by_day.get(day, 0) - entry.amount_micros
    assert {r["day"]: r["cost_micros"] for r in body["rows"] if r["cost_micros"]} == by_day
    assert body["totals"]["cost_micros"] == -sum(e.amount_micros for e in debits) > 0
    by_model = (
        team.client(team.owner)
        .get("/portal/usage-summary?from=2026-03-02&to=2026-03-12&group_by=model", HTTP_ACCEPT="application/json")
        .json()
    )
    for r in by_model["rows"]:
        assert r["cost_micros"] == -sum(e.amount_micros for e in debits if e.alias == r["model"])
