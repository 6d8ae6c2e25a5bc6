"""The portal as a new user finds it (issue 16): no dead ends between the site's root, sign-up, the first key and
the limits of the plan."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

import gateway.limits
from tests.support.portal import Team, ensure_site_and_plans, make_team, portal_settings  # noqa: F401
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _portal(portal_settings, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811, ANN001
    ensure_site_and_plans()
    # Allowances counted from usage rows (no limiter counters in Redis to set up).
    monkeypatch.setattr(gateway.limits.limiter, "redis_url", None)


@pytest.fixture
def team() -> Team:
    return make_team()


def test_the_sites_root_sends_visitors_to_sign_in_and_members_to_the_portal(team: Team) -> None:
    anonymous = Client().get("/", follow=True)
    assert [hop for hop, _ in anonymous.redirect_chain] == ["/portal/", "/accounts/login/?next=/portal/"]
    assert anonymous.status_code == 200
    signed_in = team.client(team.member).get("/")
    assert signed_in.status_code == 302 and signed_in["Location"] == "/portal/"


def _use_up_the_window(team: Team, count: int) -> None:
    # The free plan's 3-hour window of 100 requests; its rows all inside the current window.
    now = timezone.now()
    start = now - timedelta(seconds=now.timestamp() % 10800)
    UsageEvent.objects.bulk_create(
        UsageEvent(
            request_id=f"req_limit_{i}",
            organization=team.acme,
            alias="oss-20b",
            route="chat.completions",
            status="ok",
            http_status=200,
            created_at=start + timedelta(microseconds=i),
        )
        for i in range(count)
    )


def _banners(html: str) -> list[str]:
    found = re.findall(r'<div class="alert [^"]*allowance-alert"[^>]*>(.*?)</div>', html, re.S)
    return [" ".join(re.sub(r"<[^>]+>", "", f).split()) for f in found]


def test_a_used_up_allowance_is_announced_on_the_usage_and_key_pages_too(team: Team) -> None:
    client = team.client(team.member)
    for url in ("/portal/usage", "/portal/api-keys"):
        assert _banners(client.get(url, HTTP_ACCEPT="text/html").content.decode()) == []
    _use_up_the_window(team, 100)
    for url in ("/portal/usage", "/portal/api-keys"):
        (banner,) = _banners(client.get(url, HTTP_ACCEPT="text/html").content.decode())
        assert banner.startswith(
            "Your 3-hour request allowance is used up (100 of 100 requests): every new request is refused with insufficient_quota"
        ), banner
        assert banner.endswith("Plan and limits"), banner
    # Another organization's pages say nothing.
    assert _banners(team.client(team.outsider).get("/portal/usage").content.decode()) == []


def test_a_nearly_used_allowance_is_a_warning_not_an_error(team: Team) -> None:
    _use_up_the_window(team, 85)
    html = team.client(team.member).get("/portal/usage").content.decode()
    (banner,) = _banners(html)
    assert banner.startswith("You have used 85% of your 3-hour request allowance (85 of 100 requests)"), banner
    assert 'class="alert alert-warning allowance-alert"' in html
