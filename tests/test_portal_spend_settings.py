"""The billing page's spend caps and alert webhook: owners and admins set daily and monthly caps in dollars (exact
micro-units, bounded) and an https URL whose signing secret they see and rotate; members only read the caps; bad
input is a 400 naming the field; a save tells the gateways (an organization cache change)."""

from __future__ import annotations

import html as htmllib

import pytest

from accounts.models import Organization
from gateway.models import CacheChange
from tests.support.portal import Team, ensure_site_and_plans, make_team, portal_settings  # noqa: F401

SETTINGS_URL = "/portal/billing/spend-settings"
ROTATE_URL = "/portal/billing/webhook-secret/rotate"


@pytest.fixture
def team(db, portal_settings) -> Team:  # noqa: ANN001, F811
    ensure_site_and_plans()
    return make_team()


def acme() -> Organization:
    return Organization.objects.get(slug="acme")


def caps() -> tuple[int | None, int | None, str]:
    org = acme()
    return org.spend_cap_daily_micros, org.spend_cap_monthly_micros, org.alert_webhook_url


def post(team: Team, user, data: dict, url: str = SETTINGS_URL):  # noqa: ANN001, ANN201
    return team.client(user).post(url, data)


@pytest.mark.parametrize("role", ["owner", "admin"])
def test_owners_and_admins_set_caps_exactly_and_a_webhook_url_gets_a_secret(team: Team, role: str) -> None:
    user = getattr(team, role)
    changes_before = CacheChange.objects.filter(scope="org", ident=str(team.acme.pk)).count()
    response = post(
        team, user, {"daily_cap": "12.345678", "monthly_cap": "100", "alert_webhook_url": "https://hooks.example.com/cortensor"}
    )
    assert response.status_code == 302 and response["Location"] == "/portal/billing#alerts"
    assert caps() == (12_345_678, 100_000_000, "https://hooks.example.com/cortensor")
    secret = acme().alert_webhook_secret
    assert secret.startswith("whsec_") and len(secret) == 54
    # The save is an organization change: every gateway process reloads the organization's caps.
    assert CacheChange.objects.filter(scope="org", ident=str(team.acme.pk)).count() > changes_before
    page = team.client(user).get("/portal/billing")
    html = page.content.decode()
    assert secret in html and 'id="rotate-webhook-secret"' in html
    assert 'value="12.345678"' in html and 'value="100.00"' in html
    assert "no-store" in page["Cache-Control"]  # the page carries the secret
    # A second save keeps the secret; empty fields remove the caps and the URL.
    assert post(team, user, {"daily_cap": "", "monthly_cap": "", "alert_webhook_url": ""}).status_code == 302
    assert caps() == (None, None, "")
    assert acme().alert_webhook_secret == secret


def test_members_read_the_caps_but_cannot_change_them_nor_see_the_secret(team: Team) -> None:
    post(team, team.owner, {"daily_cap": "5", "monthly_cap": "50.5", "alert_webhook_url": "https://hooks.example.com/x"})
    secret = acme().alert_webhook_secret
    html = team.client(team.member).get("/portal/billing").content.decode()
    assert secret not in html and 'id="spend-settings"' not in html and "hooks.example.com" not in html
    assert "<dt>Daily spend cap</dt><dd>$5.00</dd>" in html and "<dt>Monthly spend cap</dt><dd>$50.50</dd>" in html
    assert post(team, team.member, {"daily_cap": "1", "monthly_cap": "", "alert_webhook_url": ""}).status_code == 403
    assert post(team, team.member, {}, url=ROTATE_URL).status_code == 403
    assert caps() == (5_000_000, 50_500_000, "https://hooks.example.com/x") and acme().alert_webhook_secret == secret


def test_rotating_the_secret_replaces_it(team: Team) -> None:
    post(team, team.owner, {"daily_cap": "", "monthly_cap": "", "alert_webhook_url": "https://hooks.example.com/x"})
    old = acme().alert_webhook_secret
    response = post(team, team.admin, {}, url=ROTATE_URL)
    assert response.status_code == 302
    new = acme().alert_webhook_secret
    assert new != old and new.startswith("whsec_")
    html = team.client(team.admin).get("/portal/billing").content.decode()
    assert new in html and old not in html
    assert team.client(team.owner).get(ROTATE_URL).status_code == 405
    assert team.client(team.owner).get(SETTINGS_URL).status_code == 405


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"daily_cap": "-1"}, "greater than or equal to 0"),
        ({"daily_cap": "abc"}, "Enter a number"),
        ({"daily_cap": "NaN"}, "Enter a number"),
        ({"monthly_cap": "Infinity"}, "Enter a number"),
        ({"monthly_cap": "1000000.000001"}, "less than or equal to 1000000"),
        ({"daily_cap": "0.0000001"}, "no more than 6 decimal places"),
        ({"daily_cap": "10", "monthly_cap": "9.999999"}, "A daily cap above the monthly cap would never be reached."),
        ({"alert_webhook_url": "http://hooks.example.com/x"}, "Webhooks are sent to https:// URLs only."),
        ({"alert_webhook_url": "https://127.0.0.1/x"}, "Webhooks are sent to addresses on the public internet only."),
        ({"alert_webhook_url": "https://10.1.2.3:8443/x"}, "Webhooks are sent to addresses on the public internet only."),
        ({"alert_webhook_url": "https://[::1]/x"}, "Webhooks are sent to addresses on the public internet only."),
        ({"alert_webhook_url": "https://localhost/x"}, "Webhooks are sent to addresses on the public internet only."),
        ({"alert_webhook_url": "https://user:pw@hooks.example.com/x"}, "cannot carry a user name or password"),
        ({"alert_webhook_url": "ftp://hooks.example.com/x"}, "Enter a valid URL."),
        ({"alert_webhook_url": "not a url"}, "Enter a valid URL."),
        ({"alert_webhook_url": "https://hooks.example.com/" + "x" * 500}, "at most 500 characters"),
    ],
)
def test_bad_input_is_a_400_naming_the_problem_and_changes_nothing(team: Team, data: dict, message: str) -> None:
    post(team, team.owner, {"daily_cap": "1", "monthly_cap": "2", "alert_webhook_url": ""})
    before = caps()
    response = post(team, team.owner, {"daily_cap": "", "monthly_cap": "", "alert_webhook_url": "", **data})
    assert response.status_code == 400
    assert message in htmllib.unescape(response.content.decode())
    assert caps() == before


def test_plain_http_and_local_receivers_are_allowed_where_insecure_webhooks_are_on(team: Team, settings) -> None:  # noqa: ANN001
    settings.PORTAL_ALERT_WEBHOOK_ALLOW_INSECURE = True
    assert post(team, team.owner, {"alert_webhook_url": "http://127.0.0.1:9999/hook"}).status_code == 302
    assert caps() == (None, None, "http://127.0.0.1:9999/hook")


def test_another_organization_is_not_found(team: Team) -> None:
    response = team.client(team.owner).post(f"{SETTINGS_URL}?org=globex", {"daily_cap": "1"})
    assert response.status_code == 404
    assert Organization.objects.get(slug="globex").spend_cap_daily_micros is None


def test_org_parameter_picks_the_organization_and_comes_back_to_it(team: Team) -> None:
    response = team.client(team.outsider).post(f"{SETTINGS_URL}?org=globex", {"daily_cap": "3", "monthly_cap": ""})
    assert response.status_code == 302 and response["Location"] == "/portal/billing?org=globex#alerts"
    assert Organization.objects.get(slug="globex").spend_cap_daily_micros == 3_000_000


def test_the_admin_never_shows_the_webhook_secret(team: Team) -> None:
    from django.test import Client

    from accounts.models import User

    post(team, team.owner, {"daily_cap": "", "monthly_cap": "", "alert_webhook_url": "https://hooks.example.com/x"})
    secret = acme().alert_webhook_secret
    staff = Client()
    staff.force_login(User.objects.create_superuser(email="staff@example.com", password="not-used-here"))
    page = staff.get(f"/admin/accounts/organization/{team.acme.pk}/change/")
    assert page.status_code == 200 and "hooks.example.com" in page.content.decode()
    assert secret not in page.content.decode()


def test_the_page_shows_each_caps_spend_and_says_when_one_is_reached(team: Team) -> None:
    """What the gateway counts against the caps (the usage rows' cost) beside each cap, for managers and members; a
    reached cap is a banner naming the refusal and, for managers, the way to raise it; an empty prepaid balance too."""
    from datetime import timedelta

    from django.utils import timezone

    from billing.models import Plan
    from usage.models import UsageEvent

    org = acme()
    now = timezone.now()
    for n, (cost, when) in enumerate([(1_015_000, now), (2_000_000, now), (7_000_000, now - timedelta(days=40))]):
        UsageEvent.objects.create(
            request_id=f"req_cap{n}", organization=org, alias="oss-20b", route="chat.completions", status="ok",
            http_status=200, cost_micros=cost, created_at=when,
        )  # fmt: skip
    org.spend_cap_daily_micros, org.spend_cap_monthly_micros = 3_500_000, 100_000_000
    org.save()
    html = team.client(team.owner).get("/portal/billing").content.decode()
    assert (
        'Spent today (UTC): <strong class="cap-spent">$3.015</strong> of the daily cap of <strong class="cap-limit">$3.50</strong> (86%).'
        in html
    )
    assert 'of the monthly cap of <strong class="cap-limit">$100.00</strong>' in html
    assert "data-cap-reached" not in html and 'id="balance-empty"' not in html

    org.spend_cap_daily_micros = 3_015_000
    org.save()
    for user, next_step in (
        (team.owner, '<a href="#alerts">Raise the cap</a>.'),
        (team.member, "Owners and admins can raise it."),
    ):
        html = team.client(user).get("/portal/billing").content.decode()
        banner = html.split('data-cap-reached="daily">', 1)[1].split("</div>", 1)[0]
        assert "The daily spend cap of $3.015 is reached</strong> ($3.015 spent today (UTC))" in banner
        assert "spend_cap_reached" in banner and next_step in banner
        assert "(100%): reached, new requests are refused until" in html

    Plan.objects.filter(slug="free").update(prepaid=True)
    html = team.client(team.owner).get("/portal/billing").content.decode()
    assert "<strong>Your prepaid balance is $0.00</strong>" in html
