"""The portal attacked through a live daphne with PostgreSQL and Redis: hostile bodies, parameters and headers, the
DEBUG 500 page hunted for secrets, and the production settings seen from the client's side.

Each attack is one a stranger can send with curl; each answer must be a clear 4xx in the door's shape, never a 500,
and never a secret.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator

import httpx
import pytest

from simulator import SimulatorServer
from tests.conftest import LiveGateway, _database_url_for_live_server, live_gateway_env
from tests.portal_support import Team, ensure_site_and_plans, make_team
from tests.test_portal_fuzz import live_client

TRACEBACK = re.compile(r"Traceback \(most recent call last\)|Server Error \(500\)")


@pytest.fixture
def team(gateway: LiveGateway) -> Team:
    ensure_site_and_plans()
    return make_team()


@pytest.fixture
def owner(gateway: LiveGateway, team: Team) -> Iterator[httpx.Client]:
    client = live_client(gateway, team.owner)
    yield client
    client.close()


def api_post(client: httpx.Client, path: str, body: bytes, content_type: str = "application/json") -> httpx.Response:
    headers = {"Content-Type": content_type, "Accept": "application/json", "X-CSRFToken": client.cookies["csrftoken"]}
    return client.post(path, content=body, headers=headers)


def refused(response: httpx.Response, status: int = 400) -> None:
    assert response.status_code == status, f"{response.status_code} {response.text[:500]}"
    assert not TRACEBACK.search(response.text), response.text[:500]


# --- bodies ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["[" * 1000 + "]" * 1000, '{"a":' * 1000 + "1" + "}" * 1000, "[" * 100_000],
                         ids=["arrays-1000", "objects-1000", "open-100k"])  # fmt: skip
def test_deeply_nested_json_is_a_400_in_drfs_shape(owner: httpx.Client, body: str) -> None:
    answer = api_post(owner, "/portal/api-keys", body.encode())
    refused(answer)
    assert answer.json() == {"detail": "JSON parse error - nested deeper than 64 levels"}


def test_a_json_body_over_the_limit_is_a_413(owner: httpx.Client) -> None:
    body = json.dumps({"name": "big", "padding": "x" * 1_100_000}).encode()  # over PORTAL_MAX_BODY_BYTES (1 MiB)
    answer = api_post(owner, "/portal/api-keys", body)
    refused(answer, 413)


@pytest.mark.parametrize("charset", ["bz2_codec", "rot13"])
def test_a_charset_that_is_not_a_text_encoding_is_a_400_on_every_kind_of_body(owner: httpx.Client, charset: str) -> None:
    token = owner.cookies["csrftoken"]
    refused(api_post(owner, "/portal/api-keys", b'{"name": "x"}', f"application/json; charset={charset}"))
    refused(owner.get("/portal/usage?from=2026-03-01", headers={"Content-Type": f"text/plain; charset={charset}"}))
    multipart = (
        b"--b\r\nContent-Disposition: form-data; name=\"csrfmiddlewaretoken\"\r\n\r\n" + token.encode() + b"\r\n"
        b"--b\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nx\r\n--b--\r\n"
    )  # fmt: skip
    refused(
        owner.post(
            "/portal/profile", content=multipart, headers={"Content-Type": f"multipart/form-data; boundary=b; charset={charset}"}
        )
    )


@pytest.mark.parametrize("charset", ["latin-1", "utf-16", "utf8"])
def test_a_form_in_another_charset_than_utf_8_is_a_400(owner: httpx.Client, charset: str) -> None:
    # Django refuses such a form (BadRequest) from inside the CSRF middleware, then meets the same error again while
    # rendering its 400 page (the error view checks CSRF too): under daphne the answer was a bare 500.
    token = owner.cookies["csrftoken"]
    for path in ("/portal/profile", "/accounts/login/", "/portal/organization/switch"):
        answer = owner.post(
            path, content=f"csrfmiddlewaretoken={token}&name=x".encode(),
            headers={"Content-Type": f"application/x-www-form-urlencoded; charset={charset}", "X-CSRFToken": token},
        )  # fmt: skip
        refused(answer)
        assert "UTF-8" in answer.text


# --- parameters --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query", ["to=0001-01-01", "from=9999-12-31&to=9999-12-31", "from=0001-01-01&to=9999-12-31", "from=2026-W01-1"]
)
def test_extreme_dates_are_a_400_on_the_page_and_the_api(owner: httpx.Client, query: str) -> None:
    page = owner.get(f"/portal/usage?{query}")
    refused(page)
    assert "That range does not work" in page.text
    api = owner.get(f"/portal/usage-summary?{query}", headers={"Accept": "application/json"})
    refused(api)
    assert set(api.json()) == {"detail"}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/portal/invitations/%00", 400),
        ("/portal/usage?from=%00", 400),
        ("/portal/api-keys?org=%00", 400),
        ("/portal/billing?org=a%00b", 400),
        ("/portal/invitations/" + "x" * 4000, 404),
        ("/portal/api-keys/99999999999999999999999/revoke", 404),
        ("/portal/billing?org=99999999999999999999", 404),
        ("/portal/billing?page=99999999999999999999", 200),  # the paginator answers with the last page
        ("/portal/assets/..%2f..%2fportal_project%2fsettings.py", 400),  # SuspiciousFileOperation
    ],
)
def test_hostile_paths_and_parameters_get_a_clear_answer(owner: httpx.Client, path: str, status: int) -> None:
    answer = owner.get(path)
    refused(answer, status)
    assert "SECRET_KEY" not in answer.text


# --- the DEBUG 500 page ------------------------------------------------------------------------------------------------

SECRETS = {
    "router_url_password": "url-password-77ab12",
    "router_alias_key": "alias-key-5f1d8e2a",
    "router_session_key": "session-key-9c3b7a41",
    "redis_password": "redis-password-4e8f",
    "db_password": "db-password-1a2b3c",
    "pepper": "pepper-6d5c4b3a",
    "metrics_token": "metrics-token-0f9e8d",
    "smtp_password": "smtp-password-2c3d",
    "unkey_root_key": "unkey_root_3fa9d0c2",
    "secret_key": "secret-key-k3Jd9pQ2vX7mZr4Lw8sYt1Hc6Nb0Fg5Ue2Ai9Ko3",
}


@pytest.fixture
def start_gateway(gateway: LiveGateway, simulator: SimulatorServer) -> Iterator[Callable[..., LiveGateway]]:
    """Starts daphne processes of this test's own on the test database; stopped before it is emptied under them."""
    started: list[LiveGateway] = []

    def start(**env: str) -> LiveGateway:
        process = LiveGateway(env=live_gateway_env(simulator.base_url, PORTAL_SHUTDOWN_GRACE_S="1", **env))
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.stop()


def test_the_debug_500_page_of_a_live_daphne_shows_no_secret(
    start_gateway: Callable[..., LiveGateway], simulator: SimulatorServer
) -> None:
    host = simulator.base_url.removeprefix("http://")
    database = _database_url_for_live_server().replace("postgres://postgres@", f"postgres://postgres:{SECRETS['db_password']}@")
    debug = start_gateway(
        DEBUG="1",
        DJANGO_SETTINGS_MODULE="tests.support.debug_crash_settings",
        DATABASE_URL=database,  # the server trusts local connections: the password is only there to be leaked
        REDIS_URL=f"redis://:{SECRETS['redis_password']}@127.0.0.1:1/0",  # nothing listens: the page must not need it
        SECRET_KEY=SECRETS["secret_key"],
        PORTAL_API_KEY_PEPPER=SECRETS["pepper"],
        PORTAL_METRICS_TOKEN=SECRETS["metrics_token"],
        EMAIL_HOST="smtp.invalid",
        EMAIL_HOST_PASSWORD=SECRETS["smtp_password"],
        PORTAL_UNKEY_ROOT_KEY=SECRETS["unkey_root_key"],
        PORTAL_ROUTER_POOLS_JSON=json.dumps({"oss-20b": f"http://gateway:{SECRETS['router_url_password']}@{host}"}),
        PORTAL_ROUTER_MODEL_AUTH_KEYS_JSON=json.dumps({"oss-20b": SECRETS["router_alias_key"]}),
        PORTAL_ROUTER_SESSION_AUTH_KEYS_JSON=json.dumps({"102": SECRETS["router_session_key"]}),
    )
    for accept in ("text/html", "text/plain"):
        page = httpx.get(
            f"{debug.url}/crash", headers={"Accept": accept, "Authorization": f"Bearer {SECRETS['router_alias_key']}"}, timeout=30
        )
        assert page.status_code == 500
        leaked = {name for name, secret in SECRETS.items() if secret in page.text}
        assert not leaked, f"{sorted(leaked)} on the {accept} page"
        # The page is still the debug page, useful: the error, the settings by name, the router's host.
        assert "RuntimeError" in page.text and "refused the request" in page.text
        assert "PORTAL_ROUTER_ENV" in page.text and "DATABASES" in page.text
        assert f"http://***@{host}#102" in page.text


# --- production settings, from the client's side ------------------------------------------------------------------------


def test_behind_https_the_portal_redirects_plain_http_and_sends_hsts_and_secure_cookies(
    start_gateway: Callable[..., LiveGateway],
) -> None:
    token = "scrape-me-with-a-long-token"
    # One proxy of ours in front (the README's production): its X-Forwarded-Proto says the client spoke HTTPS.
    production = start_gateway(
        PORTAL_PUBLIC_BASE_URL="https://portal.example.test", PORTAL_METRICS_TOKEN=token, PORTAL_TRUSTED_PROXY_COUNT="1"
    )
    with httpx.Client(base_url=production.url, timeout=30) as client:
        plain = client.get("/accounts/login/")
        assert plain.status_code == 301 and plain.headers["location"] == f"https://127.0.0.1:{production.port}/accounts/login/"
        # The load balancer's probes stay on plain HTTP.
        assert client.get("/health").status_code in (200, 503)
        assert client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        # What the load balancer forwards from an HTTPS client.
        page = client.get("/accounts/login/", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"})
        assert page.status_code == 200
        assert page.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
        cookie = next(
            value for name, value in page.headers.multi_items() if name == "set-cookie" and value.startswith("csrftoken=")
        )
        assert "; Secure" in cookie, cookie
