"""Bad input at volume on the portal: hypothesis-generated query strings, forms and JSON on every portal page, the
management API and allauth's pages, signed in and anonymous, with and without a valid CSRF token.

Whatever arrives, the answer is never a 5xx and never a traceback; the management API answers its refusals in DRF's
error shape. Breadth runs in-process through Django's test client (with CSRF checks on, as a browser meets them);
a smaller set goes through a live daphne. Examples are bounded per test so the module runs in well under a minute;
in CI (`CI=true`) they are derandomized, so a run is repeatable. FUZZ_EXAMPLES raises the count to hunt longer.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.models import Invitation, Membership
from tests.support.live import LiveGateway
from tests.support.portal import Team, ensure_site_and_plans, make_team, portal_settings  # noqa: F401

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))  # per test; the live set runs a third of it

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
LIVE_FUZZ = settings(FUZZ, max_examples=max(10, EXAMPLES // 3))

# --- strategies ------------------------------------------------------------------------------------------------------

# Text as hostile as a query string or form can carry: controls (NUL, CR, LF), bidi marks, non-BMP, huge numbers.
nasty = st.sampled_from(
    ["", "\x00", "\r\n", "\u202e", "\U0001f600", "-1", "0", "1e9", "9" * 40, "%00", "../" * 5, "//evil.example", "\\\\evil",
     "javascript:alert(1)", "<script>alert(1)</script>", "' OR 1=1 --", "{{ 7*7 }}", "null", "true", "[]", "{}", "NaN"]
)  # fmt: skip
text = st.text(max_size=40) | nasty | st.text(st.characters(max_codepoint=0x7F), max_size=300)
dates = st.sampled_from(["0001-01-01", "9999-12-31", "2026-02-30", "2026-13-01", "2026-03-01", "2025-03-01", "1999-12-31",
                         "2026-W01-1", "20260301", "+2026-03-01", "2026-3-1", " 2026-03-01"])  # fmt: skip
numbers = st.integers(min_value=-(2**70), max_value=2**70).map(str)
value = text | dates | numbers
PARAMETERS = ["from", "to", "group_by", "org", "page", "model", "next", "format", "lang", "key", "expires_in_days", "name",
              "status", "q", "before", "tz", "kind"]  # fmt: skip
query = st.dictionaries(st.sampled_from(PARAMETERS) | st.text(max_size=8), value | st.lists(value, max_size=3), max_size=4)

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | text
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=12
)
key_create_fields = {
    "name": text | json_values,
    "expires_at": dates
    | text
    | json_values
    | st.sampled_from(["2099-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"]),
    "expires_in_days": numbers | json_values,
}
json_bodies = (
    st.fixed_dictionaries({}, optional=key_create_fields).map(json.dumps)
    | json_values.map(json.dumps)
    | st.integers(1, 3000).map(lambda depth: "[" * depth + "]" * depth)
    | st.binary(max_size=200).map(lambda raw: raw.decode("latin-1"))
)

# --- the routes ----------------------------------------------------------------------------------------------------

PAGES = [
    "/portal/", "/portal/api-keys", "/portal/usage", "/portal/billing", "/portal/docs", "/portal/playground",
    "/portal/organization", "/portal/profile", "/portal/profile/delete", "/portal/api-keys/{key}/revoke",
    "/portal/invitations/{token}", "/portal/api-keys/{key}", "/portal/usage-summary", "/portal/api/schema",
    "/portal/usage/export", "/accounts/login/", "/accounts/signup/", "/accounts/password/reset/", "/accounts/password/change/",
    "/accounts/password/set/", "/accounts/email/", "/accounts/confirm-email/", "/accounts/confirm-email/{token}/",
    "/accounts/password/reset/key/1-{token}/", "/accounts/sessions/", "/accounts/reauthenticate/", "/accounts/inactive/",
    "/accounts/login/code/confirm/", "/portal/assets/{asset}",
]  # fmt: skip
FORMS: dict[str, dict[str, Any]] = {
    "/portal/api-keys": {"name": text, "expires_in_days": st.sampled_from(["", "7", "30", "365", "0", "-1", "99999"]) | value},
    "/portal/api-keys/{key}/revoke": {"confirm": value},
    "/portal/organization": {"email": text | st.emails(), "role": st.sampled_from(["member", "admin", "owner", ""]) | text},
    "/portal/organization/switch": {"organization": numbers | text, "next": text | st.sampled_from(["/portal/usage", "https://evil.example/"])},
    "/portal/organization/invitations/{invitation}/cancel": {"x": value},
    "/portal/profile": {"name": text, "time_zone": text | st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kolkata", "../etc"])},
    "/portal/profile/delete": {"password": text},
    "/portal/profile/sessions/sign-out-others": {"x": value},
    "/accounts/login/": {"login": text | st.emails(), "password": text, "remember": value, "next": text},
    "/accounts/signup/": {"email": text | st.emails(), "password1": text, "password2": text},
    "/accounts/password/reset/": {"email": text | st.emails()},
    "/accounts/password/change/": {"oldpassword": text, "password1": text, "password2": text},
    "/accounts/email/": {"email": text | st.emails(), "action_add": value, "action_remove": value, "action_primary": value},
    "/accounts/reauthenticate/": {"password": text},
    "/accounts/logout/": {"next": text},
}  # fmt: skip
JSON_API = ["/portal/api-keys", "/portal/api-keys/{key}", "/portal/usage-summary", "/portal/api/schema", "/portal/usage/export"]

path_segment = (
    st.sampled_from(["1", "0", "-1", "99999999999999999999999", "abc", "%00", "..%2f..%2fsettings.py", "portal.css", "x" * 500])
    | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#%"), min_size=1, max_size=20)
)  # fmt: skip


def fill(path: str, team: Team, segment: str | None) -> str:
    """A route with its placeholders: usually a real id of the team (so the view gets past its lookup), else garbage."""
    invitation = Invitation.objects.filter(organization=team.acme).first()
    real = {
        "{key}": str(team.acme_key_id),
        "{token}": invitation.token if invitation else "nope",
        "{invitation}": str(invitation.pk) if invitation else "1",
        "{asset}": "portal.css",
    }
    for placeholder, good in real.items():
        if placeholder in path:
            path = path.replace(placeholder, quote(segment, safe="%") if segment is not None else good)
    return path


def with_query(path: str, params: dict[str, Any]) -> str:
    return f"{path}?{urlencode(params, doseq=True)}" if params else path


# --- what every answer must be ------------------------------------------------------------------------------------

TRACEBACK = re.compile(rb"Traceback \(most recent call last\)|<title>Server Error|Internal Server Error")


def check(response: Any, *, label: str, api_json: bool) -> None:
    status = response.status_code
    body = response.content if hasattr(response, "content") else b""
    assert status < 500, f"{label}: {status} {body[:800]!r}"
    assert not TRACEBACK.search(body), f"{label}: {body[:800]!r}"
    if api_json and status >= 400:
        # The management API refuses in DRF's shape: a JSON object (`detail`, or field names with their messages).
        assert response["Content-Type"].startswith("application/json"), f"{label}: {response['Content-Type']}"
        parsed = json.loads(body)
        assert isinstance(parsed, dict) and parsed, f"{label}: {parsed!r}"


# --- in-process, for breadth ---------------------------------------------------------------------------------------


@pytest.fixture
def team(db, portal_settings) -> Team:  # noqa: ANN001, F811
    ensure_site_and_plans()
    team = make_team()
    from accounts.services import invitation_create

    invitation_create(organization=team.acme, email="invitee@example.test", role=Membership.Role.MEMBER, invited_by=team.owner)
    return team


def browser_client(team: Team, who: str) -> Client:
    """A client that enforces CSRF as a browser meets it, signed in as `who` (or anonymous), holding a CSRF cookie."""
    client = Client(enforce_csrf_checks=True, raise_request_exception=False)
    user = {"owner": team.owner, "admin": team.admin, "member": team.member, "anonymous": None}[who]
    if user is not None:
        client.force_login(user)
    first = client.get("/portal/profile" if user else "/accounts/login/")  # a page with a form sets the CSRF cookie
    assert first.status_code == 200 and "csrftoken" in client.cookies, first.status_code
    return client


class Clients:
    """One browser-like client per role for a whole test; a fresh one where a request may end its session."""

    ENDS_A_SESSION = ("/accounts/logout/", "/portal/profile/delete", "/accounts/password/change/", "/accounts/email/")

    def __init__(self, team: Team) -> None:
        self.team = team
        self.kept: dict[str, Client] = {}

    def get(self, who: str, path: str = "") -> Client:
        if path.startswith(self.ENDS_A_SESSION):
            return browser_client(self.team, who)
        if who not in self.kept:
            self.kept[who] = browser_client(self.team, who)
        return self.kept[who]


def csrf_token(client: Client, how: str) -> str | None:
    cookie = client.cookies.get("csrftoken")
    return {"valid": cookie.value if cookie else "", "missing": None, "wrong": "x" * 32, "empty": ""}[how]


WHO = st.sampled_from(["owner", "owner", "admin", "member", "anonymous"])
CSRF = st.sampled_from(["valid", "valid", "valid", "missing", "wrong"])
ACCEPT = st.sampled_from(["text/html", "application/json", "*/*", "application/json;q=0.1, text/html", "text/plain", ""])
METHOD = st.sampled_from(["GET"] * 6 + ["POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"])


def test_no_query_string_makes_a_portal_page_fail(team: Team) -> None:
    seen: dict[int, int] = {}
    clients = Clients(team)

    @FUZZ
    @given(who=WHO, path=st.sampled_from(PAGES), segment=st.none() | path_segment, params=query, accept=ACCEPT, method=METHOD)
    def run(who: str, path: str, segment: str | None, params: dict[str, Any], accept: str, method: str) -> None:
        client = clients.get(who, path)
        url = with_query(fill(path, team, segment), params)
        response = client.generic(method, url, HTTP_ACCEPT=accept, HTTP_X_CSRFTOKEN=csrf_token(client, "valid") or "")
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        # A HEAD answer has no body to be JSON (HTTP drops it): its status is what is checked.
        api = path in JSON_API and accept == "application/json" and who != "anonymous" and method != "HEAD"
        check(response, label=f"{who} {method} {url} accept={accept}", api_json=api and response.status_code != 404)

    run()
    assert seen.get(200, 0) > 0 and sum(n for s, n in seen.items() if s >= 400) > 0, seen


def test_no_form_makes_a_portal_or_account_page_fail(team: Team) -> None:
    seen: dict[int, int] = {}
    clients = Clients(team)
    posts = st.sampled_from(sorted(FORMS)).flatmap(
        lambda path: st.tuples(
            st.just(path),
            st.fixed_dictionaries({}, optional=FORMS[path]),
            st.dictionaries(st.text(max_size=10), value, max_size=2),
        )
    )

    @FUZZ
    @given(who=WHO, form=posts, csrf=CSRF, segment=st.none() | path_segment, params=query, multipart=st.booleans())
    def run(who: str, form: tuple[str, dict[str, Any], dict[str, Any]], csrf: str, segment: str | None,
            params: dict[str, Any], multipart: bool) -> None:  # fmt: skip
        path, fields, extra = form
        client = clients.get(who, path)
        data = {**extra, **fields}
        token = csrf_token(client, csrf)
        if token is not None:
            data["csrfmiddlewaretoken"] = token
        url = with_query(fill(path, team, segment), params)
        if multipart:
            response = client.post(url, data, HTTP_ACCEPT="text/html")
        else:
            response = client.post(
                url, urlencode(data, doseq=True), content_type="application/x-www-form-urlencoded", HTTP_ACCEPT="text/html"
            )
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        check(response, label=f"{who} POST {url} {data!r}", api_json=False)

    run()
    assert sum(n for s, n in seen.items() if s < 400) > 0 and sum(n for s, n in seen.items() if s >= 400) > 0, seen


def test_no_json_body_makes_the_management_api_fail(team: Team) -> None:
    seen: dict[int, int] = {}
    clients = Clients(team)

    @FUZZ
    @given(
        who=WHO, path=st.sampled_from(JSON_API), segment=st.none() | path_segment, body=json_bodies, params=query, csrf=CSRF,
        method=st.sampled_from(["POST"] * 4 + ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"]),
        content_type=st.sampled_from(["application/json"] * 4 + ["application/json; charset=latin-1",
                                      "application/json; charset=nope", "text/plain", "application/x-www-form-urlencoded"]),
    )  # fmt: skip
    def run(who: str, path: str, segment: str | None, body: str, params: dict[str, Any], csrf: str, method: str,
            content_type: str) -> None:  # fmt: skip
        client = clients.get(who)
        url = with_query(fill(path, team, segment), params)
        token = csrf_token(client, csrf)
        headers = {"HTTP_ACCEPT": "application/json"} | ({"HTTP_X_CSRFTOKEN": token} if token is not None else {})
        response = client.generic(method, url, body.encode("utf-8", "surrogatepass"), content_type=content_type, **headers)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        check(response, label=f"{who} {method} {url} {content_type} {body[:200]!r}", api_json=response.status_code != 404)

    run()
    assert seen.get(201, 0) + seen.get(200, 0) > 0 and seen.get(400, 0) > 0, seen


# --- through a live daphne: the production door ---------------------------------------------------------------------


@pytest.fixture
def live_team(gateway: LiveGateway) -> Team:
    ensure_site_and_plans()
    return make_team()


def live_client(gateway: LiveGateway, user: object | None) -> httpx.Client:
    """Holding a session of `user` (made as force_login makes one, so that the sign-in rate limit is left to the
    fuzzed sign-ins), or anonymous; either with the CSRF cookie a first page sets."""
    cookies = {}
    if user is not None:
        session = Client()
        session.force_login(user)
        cookies["sessionid"] = session.cookies["sessionid"].value
    client = httpx.Client(base_url=gateway.url, timeout=30, follow_redirects=False, cookies=cookies)
    page = client.get("/portal/api-keys" if user else "/accounts/login/")
    assert page.status_code == 200 and "csrftoken" in client.cookies, page.text[:300]
    return client


@pytest.fixture
def live_clients(gateway: LiveGateway, live_team: Team) -> Iterator[dict[str, httpx.Client]]:
    clients = {"owner": live_client(gateway, live_team.owner), "anonymous": live_client(gateway, None)}
    yield clients
    for client in clients.values():
        client.close()


def test_through_daphne_no_query_form_or_json_body_makes_the_portal_fail(
    gateway: LiveGateway, live_team: Team, live_clients: dict[str, httpx.Client]
) -> None:
    seen: dict[int, int] = {}
    requests = st.one_of(
        st.tuples(st.just("GET"), st.sampled_from(PAGES), query, st.none(), st.just("")),
        st.sampled_from(sorted(FORMS)).flatmap(
            lambda p: st.tuples(st.just("POST"), st.just(p), query, st.fixed_dictionaries({}, optional=FORMS[p]), st.just("form"))
        ),
        st.tuples(st.sampled_from(["POST", "DELETE"]), st.sampled_from(JSON_API), query, json_bodies, st.just("json")),
    )  # fmt: skip

    # Charsets only daphne's requests can carry with a query string (Django's test client cannot build one that is not
    # a text encoding).
    charsets = st.sampled_from(["", "", "", "; charset=utf-8", "; charset=latin-1", "; charset=nope", "; charset=bz2_codec"])

    @LIVE_FUZZ
    @given(
        who=st.sampled_from(["owner", "owner", "anonymous"]), request=requests, segment=st.none() | path_segment, charset=charsets
    )
    def run(who: str, request: tuple[str, str, dict[str, Any], Any, str], segment: str | None, charset: str) -> None:
        method, path, params, body, kind = request
        client = live_clients[who]
        url = with_query(fill(path, live_team, segment), params)
        headers = {"X-CSRFToken": client.cookies.get("csrftoken", ""), "Referer": f"{gateway.url}/portal/"}
        if kind == "json":
            headers |= {"Accept": "application/json", "Content-Type": f"application/json{charset}"}
            response = client.request(method, url, content=body.encode("utf-8", "surrogatepass"), headers=headers)
        elif kind == "form":
            data = {**body, "csrfmiddlewaretoken": client.cookies.get("csrftoken", "")}
            if path == "/accounts/logout/":  # refused for want of a token: this client stays signed in for the next examples
                data.pop("csrfmiddlewaretoken")
                headers.pop("X-CSRFToken")
            response = client.post(url, content=urlencode(data, doseq=True).encode(),
                                   headers=headers | {"Content-Type": f"application/x-www-form-urlencoded{charset}"})  # fmt: skip
        else:
            response = client.get(url, headers=headers | ({"Content-Type": f"text/plain{charset}"} if charset else {}))
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (
            f"{who} {method} {url}: {response.status_code} {response.text[:500]}\n{gateway.log()[-3000:]}"
        )
        assert not TRACEBACK.search(response.content), response.text[:500]

    run()
    assert sum(n for s, n in seen.items() if s < 400) > 0, seen
