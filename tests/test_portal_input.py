"""Hostile input to the portal: JSON nested or sized to hurt, dates at the ends of the calendar, parameters out of range.

Every one of them gets a clear 4xx: the management API in DRF's error shape, a page with the form's error shown.
"""

from __future__ import annotations

import json
from datetime import UTC, date, timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apikeys.models import ApiKey
from portal_project.security import JSON_MAX_DEPTH
from tests.portal_support import Team, ensure_site_and_plans, make_team, portal_settings  # noqa: F401
from usage.selectors import EARLIEST_DAY, LATEST_DAY, MAX_RANGE_DAYS, BadRange, DateRange, date_range_parse

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _portal(portal_settings) -> None:  # noqa: ANN001, F811
    ensure_site_and_plans()


@pytest.fixture
def team() -> Team:
    return make_team()


def post_json(client: Client, url: str, raw: str | bytes) -> tuple[int, object]:
    response = client.post(url, data=raw, content_type="application/json", HTTP_ACCEPT="application/json")
    assert response["Content-Type"].startswith("application/json"), response.content[:300]
    return response.status_code, response.json()


# --- JSON bodies ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opener,closer", [("[", "]"), ('{"a":', "}")], ids=["arrays", "objects"])
def test_a_thousand_levels_of_nesting_are_a_400_not_a_500(team: Team, opener: str, closer: str) -> None:
    body = opener * 1000 + "1" + closer * 1000  # ~2-6 KB: past the interpreter's recursion limit
    status, answer = post_json(team.client(team.admin), "/portal/api-keys", body)
    assert status == 400
    assert answer == {"detail": f"JSON parse error - nested deeper than {JSON_MAX_DEPTH} levels"}
    assert ApiKey.objects.filter(organization=team.acme).count() == 1  # nothing was created


def test_nesting_up_to_the_limit_is_parsed_one_more_level_is_refused(team: Team) -> None:
    client = team.client(team.admin)

    def body(depth: int) -> str:
        # The object itself is one level; `extra` carries the rest.
        return '{"name": "deep", "extra": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"

    status, answer = post_json(client, "/portal/api-keys", body(JSON_MAX_DEPTH))
    assert status == 201, answer
    status, answer = post_json(client, "/portal/api-keys", body(JSON_MAX_DEPTH + 1))
    assert status == 400 and "nested deeper" in answer["detail"], answer


def test_brackets_inside_strings_are_not_nesting(team: Team) -> None:
    name = "[" * 90 + "{" * 9
    status, answer = post_json(team.client(team.admin), "/portal/api-keys", json.dumps({"name": name}))
    assert status == 201, answer
    assert answer["name"] == name


def test_a_json_body_over_the_upload_limit_is_a_413_before_it_is_parsed(team: Team, settings) -> None:  # noqa: ANN001
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    body = json.dumps({"name": "padded", "padding": "x" * 8000})
    status, answer = post_json(team.client(team.admin), "/portal/api-keys", body)
    assert status == 413
    assert answer == {"detail": "The body is larger than 4096 bytes."}
    assert not ApiKey.objects.filter(name="padded").exists()


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe\x00{", b'{"name": "x"', b"NaN", b'{"name": NaN}', b'{"name": "a\\ud800"}', b"\x00", b'"\\u0000"'],
    ids=["not-utf8", "truncated", "nan", "nan-field", "lone-surrogate", "nul", "nul-escape"],
)
def test_malformed_json_is_a_400_in_drfs_shape(team: Team, raw: bytes) -> None:
    status, answer = post_json(team.client(team.admin), "/portal/api-keys", raw)
    assert status == 400, answer
    assert isinstance(answer, dict) and answer, answer


def test_a_nul_character_in_a_name_is_refused_by_the_field(team: Team) -> None:
    status, answer = post_json(team.client(team.admin), "/portal/api-keys", json.dumps({"name": "a\u0000b"}))
    assert status == 400 and "name" in answer, answer


# --- Dates and ranges ----------------------------------------------------------------------------------------------


EXTREME_RANGES = [
    "to=0001-01-01",
    "from=0001-01-01&to=0001-01-01",
    "from=0001-01-01",
    "from=9999-12-31",
    "to=9999-12-31",
    "from=9999-12-31&to=9999-12-31",
    "from=1999-12-31&to=2000-01-05",
    "from=1970-01-01&to=1970-01-02",
    "from=3000-01-01&to=3000-01-02",
    "from=2026-01-01&to=2099-12-31",
    "from=%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%96-01-01",  # full-width digits
    "from=2026-W01-1",  # an ISO week date: not the format the form sends
    "from=20260101",
    "from=2026-02-30",
    "from=" + "9" * 5000,
    "to=-2026-01-01",
]


@pytest.mark.parametrize("query", EXTREME_RANGES)
def test_the_usage_summary_refuses_dates_out_of_bounds_with_a_400(team: Team, query: str) -> None:
    response = team.client(team.owner).get(f"/portal/usage-summary?{query}", HTTP_ACCEPT="application/json")
    assert response.status_code == 400, response.content[:500]
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body


@pytest.mark.parametrize("query", EXTREME_RANGES)
def test_the_usage_page_shows_the_error_with_a_400(team: Team, query: str) -> None:
    response = team.client(team.owner).get(f"/portal/usage?{query}")
    assert response.status_code == 400
    page = response.content.decode()
    assert "That range does not work:" in page
    assert 'aria-invalid="true"' in page  # the range inputs are marked, not only the alert


def test_the_calendar_bounds_are_inclusive() -> None:
    assert date_range_parse(EARLIEST_DAY.isoformat(), EARLIEST_DAY.isoformat()).start == EARLIEST_DAY
    assert date_range_parse(LATEST_DAY.isoformat(), LATEST_DAY.isoformat()).end == LATEST_DAY
    with pytest.raises(BadRange):
        date_range_parse((EARLIEST_DAY - timedelta(days=1)).isoformat(), EARLIEST_DAY.isoformat())
    with pytest.raises(BadRange):
        date_range_parse(LATEST_DAY.isoformat(), (LATEST_DAY + timedelta(days=1)).isoformat())


def test_a_default_start_before_the_earliest_day_is_clamped_not_refused() -> None:
    assert date_range_parse(None, "2000-01-05") == DateRange(EARLIEST_DAY, date(2000, 1, 5))


def test_a_range_of_exactly_the_maximum_span_is_accepted_and_one_more_day_is_not(team: Team) -> None:
    end = date(2026, 3, 1)
    start = end - timedelta(days=MAX_RANGE_DAYS - 1)
    client = team.client(team.owner)
    ok = client.get(f"/portal/usage-summary?from={start}&to={end}", HTTP_ACCEPT="application/json")
    assert ok.status_code == 200 and len(ok.json()["rows"]) == MAX_RANGE_DAYS
    refused = client.get(f"/portal/usage-summary?from={start - timedelta(days=1)}&to={end}", HTTP_ACCEPT="application/json")
    assert refused.status_code == 400
    assert refused.json() == {"detail": f"a range spans at most {MAX_RANGE_DAYS} days"}


def test_a_good_range_on_the_page_is_still_a_200(team: Team) -> None:
    today = timezone.now().astimezone(UTC).date()
    response = team.client(team.owner).get(f"/portal/usage?from={today - timedelta(days=3)}&to={today}")
    assert response.status_code == 200
    assert "That range does not work" not in response.content.decode()


# --- Other parameters ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/portal/usage-summary?org=%00",
        "/portal/usage-summary?group_by=%00",
        "/portal/api-keys?org=" + "9" * 400,
        "/portal/billing?page=" + "9" * 400,
        "/portal/billing?page=-1",
        "/portal/billing?page=1e9",
        "/portal/billing?org=%00",
        "/portal/docs?model=%00",
        "/portal/api-keys/99999999999999999999999999",
        "/portal/api-keys/99999999999999999999999999/revoke",
        "/portal/invitations/%00",
        "/portal/invitations/" + "a" * 3000,
        "/portal/usage?from=%00",
        "/portal/usage?" + "&".join(f"p{i}=1" for i in range(1100)),  # over DATA_UPLOAD_MAX_NUMBER_FIELDS
        "/portal/usage-summary?" + "&".join(f"p{i}=1" for i in range(1100)),
    ],
)
def test_parameters_out_of_range_are_never_a_500(team: Team, url: str) -> None:
    client = team.client(team.owner)
    client.raise_request_exception = False
    for accept in ("text/html", "application/json"):
        response = client.get(url, HTTP_ACCEPT=accept)
        assert response.status_code < 500, (url, accept, response.content[:300])


def test_a_nul_in_the_query_or_path_is_a_400(team: Team) -> None:
    client = team.client(team.owner)
    assert client.get("/portal/invitations/%00abc").status_code == 400
    assert client.get("/portal/usage?from=%00").status_code == 400
    response = client.get("/portal/usage-summary?org=%00", HTTP_ACCEPT="application/json")
    assert response.status_code == 400


@pytest.mark.parametrize("charset", ["bz2_codec", "zlib_codec", "base64_codec", "rot13"])
def test_a_charset_that_is_not_a_text_encoding_is_a_400(team: Team, charset: str) -> None:
    # Django adopts any codec Python knows as the request's encoding, then fails decoding a form with it (a 500 under
    # daphne; tests/hostile/test_portal.py sends the query-string variant there, which the test client cannot build).
    client = team.client(team.owner)
    client.raise_request_exception = False
    form_type = f"application/x-www-form-urlencoded; charset={charset}"
    form = client.generic("POST", "/portal/profile", b"name=x", content_type=form_type)
    signin = Client(raise_request_exception=False).generic("POST", "/accounts/login/", b"login=a%40b.c&password=x", form_type)
    api = client.generic(
        "POST", "/portal/api-keys", b"{}", content_type=f"application/json; charset={charset}", HTTP_ACCEPT="application/json"
    )
    assert (form.status_code, signin.status_code, api.status_code) == (400, 400, 400)
    assert api.json() == {"detail": "The Content-Type names a charset that is not a text encoding."}


@pytest.mark.parametrize(
    "target",
    ["0", "' OR 1=1 --", "portal:usage", "admin:index", "evil.example", "",
     "https://evil.example/", "//evil.example/", "/\\evil.example", "\\\\evil.example", "javascript:alert(1)",
     "/portal/usage\r\nSet-Cookie: x=1", "http://testserver\x00.evil/", " //evil.example"],
)  # fmt: skip
def test_the_organization_switch_never_redirects_away(team: Team, target: str) -> None:
    client = team.client(team.owner)
    response = client.post("/portal/organization/switch", {"organization": str(team.acme.pk), "next": target})
    assert response.status_code == 302
    location = response["Location"]
    assert location.startswith("/") and not location.startswith(("//", "/\\")), location
    assert "\n" not in location and "\r" not in location
    assert location == "/portal/", location  # none of these is a path of ours: home instead


def test_the_organization_switch_follows_a_path_of_ours(team: Team) -> None:
    client = team.client(team.owner)
    response = client.post(
        "/portal/organization/switch", {"organization": str(team.acme.pk), "next": "/portal/usage?from=2026-03-01"}
    )
    assert response.status_code == 302 and response["Location"] == "/portal/usage?from=2026-03-01"


@pytest.mark.parametrize("name", ["x" * 300, "a/" * 3000 + "b", "portal.css/" + "x" * 5000, "%00", "..%2f..%2fmanage.py"])
def test_an_asset_name_no_file_can_have_is_a_4xx(team: Team, name: str) -> None:
    client = Client(raise_request_exception=False)
    response = client.get(f"/portal/assets/{name}")
    assert 400 <= response.status_code < 500, response.status_code


def test_a_deeply_nested_router_variable_stops_start_up_with_one_line() -> None:
    # The operator's JSON, but the same decoder: a RecursionError would be a traceback instead of the one line.
    from tests.test_config import POOLS, base_env, manage_check

    result = manage_check(base_env(**{POOLS: "[" * 5000 + "]" * 5000}))
    assert result.returncode == 2
    assert result.stderr.startswith(f"configuration error: {POOLS}: not valid JSON"), result.stderr
    assert "Traceback" not in result.stderr


# --- The key list: bounded, and paged by the caller within the bound ---------------------------------------------


def test_the_key_list_pages_with_limit_and_offset_and_says_how_many_there_are(team: Team) -> None:
    from apikeys.services import apikey_create

    for n in range(3):
        apikey_create(organization=team.acme, name=f"extra {n}", created_by=team.owner)
    client = team.client(team.owner)
    first = client.get("/portal/api-keys?limit=2", HTTP_ACCEPT="application/json")
    assert first.status_code == 200 and first["X-Total-Count"] == "4"
    assert [k["name"] for k in first.json()] == ["extra 2", "extra 1"]  # newest first
    rest = client.get("/portal/api-keys?limit=2&offset=2", HTTP_ACCEPT="application/json")
    assert [k["name"] for k in rest.json()] == ["extra 0", "acme backend"]
    assert client.get("/portal/api-keys?offset=4", HTTP_ACCEPT="application/json").json() == []


def test_the_key_list_never_returns_more_than_its_bound(team: Team, monkeypatch) -> None:  # noqa: ANN001
    from apikeys.services import apikey_create
    from portal.views import apikeys as views

    monkeypatch.setattr(views, "KEY_LIST_MAX", 2)
    for n in range(3):
        apikey_create(organization=team.acme, name=f"extra {n}", created_by=team.owner)
    response = team.client(team.owner).get("/portal/api-keys", HTTP_ACCEPT="application/json")
    assert len(response.json()) == 2 and response["X-Total-Count"] == "4"


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=0", "limit"), ("limit=501", "limit"), ("limit=abc", "limit"), ("limit=" + "9" * 30, "limit"),
     ("offset=-1", "offset"), ("offset=1e3", "offset"), ("offset=" + "9" * 30, "offset")],
)  # fmt: skip
def test_bad_paging_parameters_are_a_400_naming_the_parameter(team: Team, query: str, field: str) -> None:
    response = team.client(team.owner).get(f"/portal/api-keys?{query}", HTTP_ACCEPT="application/json")
    assert response.status_code == 400
    assert set(response.json()) == {field}, response.json()
