"""Production settings: HTTPS-only cookies, HSTS and the SSL redirect on behind HTTPS, `check --deploy` clean, and the
security headers (a Content-Security-Policy the portal's own pages keep) on every portal page.

The settings are read in a subprocess with the README's production environment, exactly as daphne would read them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.live import ROOT
from tests.support.portal import Team, ensure_site_and_plans, make_team, portal_settings  # noqa: F401
from tests.test_config import base_env

# The README's production environment ("Production deployment"), with the metrics token production requires.
PRODUCTION = {
    "SECRET_KEY": "k3Jd9-pQ2vX7_mZr4Lw8sYt1Hc6Nb0Fg5Ue2Ai9Ko3Rj7Dx4Vq8Wn6Ep1Ms5Tz0Cy",
    "PORTAL_API_KEY_PEPPER": "production-pepper-2f8a1c",
    "ALLOWED_HOSTS": "api.cortensor.app",
    "PORTAL_PUBLIC_BASE_URL": "https://api.cortensor.app",
    "PORTAL_METRICS_TOKEN": "metrics-token-for-the-scraper",
    "PORTAL_TRUSTED_PROXY_COUNT": "1",
}
SECURITY_SETTINGS = (
    "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD", "SECURE_PROXY_SSL_HEADER", "SECURE_REDIRECT_EXEMPT",
)  # fmt: skip


def settings_in(env: dict[str, str]) -> dict[str, object]:
    """The security settings as a process started with `env` has them."""
    code = (
        "import json, django; django.setup(); from django.conf import settings; "
        f"print(json.dumps({{name: getattr(settings, name) for name in {SECURITY_SETTINGS!r}}}))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_check_deploy_reports_nothing_with_the_readmes_production_environment() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "DEBUG"],
        cwd=ROOT, env=base_env(**PRODUCTION), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "System check identified no issues (1 silenced).", result.stdout + result.stderr


def test_check_deploy_warns_of_a_redirect_loop_when_no_proxy_is_trusted() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "DEBUG"],
        cwd=ROOT, env=base_env(**{**PRODUCTION, "PORTAL_TRUSTED_PROXY_COUNT": "0"}), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0 and "portal.W001" in result.stdout + result.stderr, result.stdout + result.stderr


def test_behind_https_the_secure_settings_are_on_by_default() -> None:
    values = settings_in(base_env(**PRODUCTION))
    assert values == {
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 31_536_000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": False,
        "SECURE_PROXY_SSL_HEADER": None,  # the scheme comes from portal_project/proxies.py, as far as it trusts
        "SECURE_REDIRECT_EXEMPT": [r"^health$", r"^ready$", r"^metrics$"],
    }


def test_over_plain_http_or_with_debug_they_are_off() -> None:
    for env in (base_env(**{**PRODUCTION, "PORTAL_PUBLIC_BASE_URL": "http://10.0.0.5:8000"}), base_env(**PRODUCTION, DEBUG="1")):
        values = settings_in(env)
        assert values["SESSION_COOKIE_SECURE"] is False and values["CSRF_COOKIE_SECURE"] is False
        assert values["SECURE_SSL_REDIRECT"] is False and values["SECURE_HSTS_SECONDS"] == 0
        assert values["SECURE_PROXY_SSL_HEADER"] is None


def test_each_one_is_settable_from_the_environment() -> None:
    values = settings_in(
        base_env(
            **PRODUCTION,
            SECURE_SSL_REDIRECT="0",
            SECURE_HSTS_SECONDS="600",
            SECURE_HSTS_INCLUDE_SUBDOMAINS="0",
            SECURE_HSTS_PRELOAD="1",
            SESSION_COOKIE_SECURE="0",
            CSRF_COOKIE_SECURE="0",
        )
    )
    assert values["SECURE_SSL_REDIRECT"] is False and values["SECURE_HSTS_SECONDS"] == 600
    assert values["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is False and values["SECURE_HSTS_PRELOAD"] is True
    assert values["SESSION_COOKIE_SECURE"] is False and values["CSRF_COOKIE_SECURE"] is False
    on_http = settings_in(base_env(**{**PRODUCTION, "PORTAL_PUBLIC_BASE_URL": "http://h"}, SESSION_COOKIE_SECURE="1"))
    assert on_http["SESSION_COOKIE_SECURE"] is True


@pytest.mark.parametrize("value", ["-1", "a year", "1.5"])
def test_a_bad_hsts_value_stops_start_up_naming_it(value: str) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=base_env(**PRODUCTION, SECURE_HSTS_SECONDS=value),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("configuration error: SECURE_HSTS_SECONDS: "), result.stderr


# --- the headers of every portal page --------------------------------------------------------------------------


@pytest.fixture
def team(db, portal_settings) -> Team:  # noqa: ANN001, F811
    ensure_site_and_plans()
    return make_team()


SIGNED_IN_PAGES = ["/portal/api-keys", "/portal/usage", "/portal/billing", "/portal/docs", "/portal/playground",
                   "/portal/organization", "/portal/profile", "/portal/profile/delete", "/portal/api-keys/{key}/revoke",
                   "/accounts/password/change/", "/accounts/email/", "/accounts/sessions/"]  # fmt: skip
ANONYMOUS_PAGES = ["/accounts/login/", "/accounts/signup/", "/accounts/password/reset/", "/accounts/confirm-email/",
                   "/portal/invitations/nope"]  # fmt: skip


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0]] = words[1:]
    return directives


def check_security_headers(response, url: str) -> None:  # noqa: ANN001
    assert response.status_code < 500, url
    csp = csp_directives(response["Content-Security-Policy"])
    assert csp["default-src"] == ["'self'"], csp
    assert csp["script-src"] == ["'self'"], csp  # no 'unsafe-inline', no 'unsafe-eval'
    assert csp["style-src"] == ["'self'"], csp
    assert csp["frame-ancestors"] == ["'none'"] and csp["object-src"] == ["'none'"] and csp["base-uri"] == ["'none'"], csp
    assert csp["form-action"] == ["'self'"], csp
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"


# What the policy would block: script in the page itself, inline event handlers, style attributes, <style> elements.
# (allauth's <script type="application/json"> blocks are data, never run, so the policy lets them be.)
INLINE = re.compile(
    r"<script(?![^>]*\b(?:src=|type=\"application/json\"))[^>]*>|\son[a-z]+\s*=|\sstyle\s*=|<style[\s>]|javascript:", re.I
)


def test_every_portal_page_sends_the_security_headers_and_nothing_inline(team: Team) -> None:
    client = team.client(team.owner)
    for url in SIGNED_IN_PAGES:
        url = url.replace("{key}", str(team.acme_key_id))
        response = client.get(url)
        check_security_headers(response, url)
        assert response.status_code == 200, url
        found = INLINE.findall(response.content.decode())
        assert not found, (url, found)
    anonymous = team.client(None)
    for url in ANONYMOUS_PAGES:
        response = anonymous.get(url)
        check_security_headers(response, url)
        found = INLINE.findall(response.content.decode())
        assert not found, (url, found)


def test_the_json_api_and_redirects_carry_the_headers_too(team: Team) -> None:
    client = team.client(team.owner)
    check_security_headers(client.get("/portal/api-keys", HTTP_ACCEPT="application/json"), "api")
    check_security_headers(client.get("/portal/"), "redirect")


def test_no_template_has_inline_script_handlers_or_style() -> None:
    # Templates this project ships: what the policy would break is never written in the first place.
    offenders = {}
    for path in sorted((ROOT / "templates").rglob("*.html")):
        found = INLINE.findall(path.read_text())
        if found:
            offenders[str(path.relative_to(ROOT))] = found
    assert not offenders, offenders


def test_static_js_sets_no_style_attribute_or_inline_html_handlers() -> None:
    # element.style.x = … (CSSOM) is allowed by style-src 'self'; a style="" or on…="" written as markup is not.
    script = Path(ROOT / "static" / "portal" / "portal.js").read_text()
    assert not re.search(r"setAttribute\(\s*[\"'](style|on[a-z]+)[\"']", script)
    assert not re.search(r"innerHTML\s*=\s*[^;]*(style=|on[a-z]+=)", script)
    assert "eval(" not in script and "new Function" not in script


# --- start-up checks of the database settings ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["PORTAL_SUPABASE_URL", "PORTAL_SUPABASE_DATABASE_URL", "PORTAL_SUPABASE_DB_URI", "PORTAL_SUPABASE_KEY"]
)
def test_an_old_or_misspelt_supabase_name_stops_start_up_with_one_line(name: str) -> None:
    for env in (base_env(**PRODUCTION, **{name: "postgres://x@db.example.supabase.co/postgres"}),
                base_env(**PRODUCTION, DATABASE_URL=None, **{name: "postgres://x@db.example.supabase.co/postgres"}),
                base_env(DEBUG="1", **{name: ""})):  # fmt: skip
        result = subprocess.run(
            [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr == (
            f"configuration error: {name}: not a setting: the Supabase connection string goes in PORTAL_SUPABASE_DB_URL"
            " (or DATABASE_URL)\n"
        ), result.stderr


def test_a_production_start_without_a_database_url_stops_instead_of_running_on_sqlite() -> None:
    for env in (base_env(**PRODUCTION, DATABASE_URL=None), base_env(**PRODUCTION, DATABASE_URL="  ", PORTAL_SUPABASE_DB_URL="")):
        result = subprocess.run(
            [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2
        assert result.stderr == (
            "configuration error: DATABASE_URL: must be set when DEBUG is off (or PORTAL_SUPABASE_DB_URL): production"
            " never runs on the SQLite file\n"
        ), result.stderr


def test_the_embedded_database_still_serves_debug_make_run_and_the_supabase_url_production(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    debug = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=base_env(DATABASE_URL=None, DEBUG="1"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert debug.returncode == 0, debug.stderr
    # `make run` (portal_project/devserver.py) sets DEBUG=1 unless told otherwise, and uses the embedded database.
    from portal_project.devserver import dev_env

    monkeypatch.delenv("DEBUG", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    env = dev_env()
    assert env["DEBUG"] == "1" and "DATABASE_URL" not in env
    supabase = base_env(
        **PRODUCTION, DATABASE_URL=None, PORTAL_SUPABASE_DB_URL="postgresql://postgres:pw@db.abcdefgh.supabase.co:5432/postgres"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=supabase, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
