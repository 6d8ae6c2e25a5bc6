"""Per-key settings: allowed models, a rate, spend caps and an expiry, each within the organization's; set in the portal
(dollars) and the API (micro-units), checked with clear errors, published to the gateways, and enforced by /v1."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import Organization
from apikeys.models import ApiKey, ApiKeyEvent
from apikeys.services import KeySettingsInvalid, apikey_create, apikey_revoke, apikey_update
from gateway.invalidation import read_position
from gateway.models import CacheChange
from routerpools.models import ModelAlias, RouterPool
from tests.support.live import ALIAS, LiveGateway, wait_for, wait_until_gateway_caught_up
from tests.support.portal import Team, ensure_site_and_plans, make_team, portal_settings  # noqa: F401
from tests.test_http_errors import CHAT, MESSAGES, NOT_ALLOWED, good_body, post


@pytest.fixture
def team(db, portal_settings) -> Team:  # noqa: ANN001, F811
    ensure_site_and_plans()
    pool = RouterPool.objects.create(name="settings-pool")
    for alias in ("alpha", "beta"):
        ModelAlias.objects.create(alias=alias, pool=pool)
    return make_team()


def send(client: Client, method: str, url: str, body: dict[str, object]) -> tuple[int, dict]:
    response = getattr(client, method)(
        url, data=json.dumps(body), content_type="application/json", HTTP_ACCEPT="application/json"
    )
    return response.status_code, response.json()


def plan_rpm(org: Organization) -> int:
    org.refresh_from_db()
    assert org.plan is not None
    return org.plan.requests_per_minute


# --- The rules -----------------------------------------------------------------------------------------------------


def test_each_control_is_checked_against_the_organizations(team: Team) -> None:
    Organization.objects.filter(pk=team.acme.pk).update(spend_cap_daily_micros=10_000_000, spend_cap_monthly_micros=50_000_000)
    team.acme.refresh_from_db()
    rpm = plan_rpm(team.acme)
    with pytest.raises(KeySettingsInvalid) as refused:
        apikey_create(
            organization=team.acme,
            name="too much",
            allowed_aliases=["alpha", "nope"],
            requests_per_minute=rpm + 1,
            spend_cap_daily_micros=10_000_001,
            spend_cap_monthly_micros=50_000_001,
        )
    assert refused.value.errors == {
        "allowed_models": "not a model this organization may use: nope",
        "requests_per_minute": f"must be at most the plan's {rpm} requests per minute",
        "spend_cap_daily_micros": "must be at most the organization's daily cap of $10.00",
        "spend_cap_monthly_micros": "must be at most the organization's monthly cap of $50.00",
    }
    with pytest.raises(KeySettingsInvalid) as refused:
        apikey_create(organization=team.acme, name="x", spend_cap_daily_micros=3_000_000, spend_cap_monthly_micros=2_000_000)
    assert refused.value.errors == {"spend_cap_daily_micros": "must be at most the key's monthly cap"}
    assert not ApiKey.objects.filter(name__in=["too much", "x"]).exists()
    key = apikey_create(
        organization=team.acme,
        name="fits",
        allowed_aliases=[" beta", "alpha", "alpha"],
        requests_per_minute=rpm,
        spend_cap_daily_micros=10_000_000,
        spend_cap_monthly_micros=50_000_000,
    ).api_key
    assert (key.allowed_aliases, key.requests_per_minute, key.spend_cap_daily_micros, key.spend_cap_monthly_micros) == (
        ["alpha", "beta"],
        rpm,
        10_000_000,
        50_000_000,
    )


def test_an_update_changes_what_it_is_given_records_an_event_and_publishes_the_key(transactional_db, portal_settings) -> None:  # noqa: ANN001, F811
    ensure_site_and_plans()
    pool = RouterPool.objects.create(name="settings-pool")
    ModelAlias.objects.create(alias="alpha", pool=pool)
    team = make_team()
    key = ApiKey.objects.get(pk=team.acme_key_id)
    before = read_position()
    updated = apikey_update(api_key=key, actor=team.owner, allowed_aliases=["alpha"], spend_cap_daily_micros=1_500_000)
    assert (updated.allowed_aliases, updated.spend_cap_daily_micros, updated.requests_per_minute) == (["alpha"], 1_500_000, None)
    changes = list(CacheChange.objects.filter(id__gt=before).values_list("scope", "ident"))
    assert changes == [(CacheChange.Scope.KEY, key.public_id)]
    event = ApiKeyEvent.objects.get(api_key=key, action="update")
    assert event.actor == team.owner and event.detail == "allowed_aliases, spend_cap_daily_micros"
    # The same values again change nothing and record nothing.
    before = read_position()
    apikey_update(api_key=key, allowed_aliases=["alpha"])
    assert read_position() == before and ApiKeyEvent.objects.filter(api_key=key, action="update").count() == 1
    with pytest.raises(KeySettingsInvalid) as refused:
        apikey_update(api_key=key, expires_at=timezone.now() - timedelta(seconds=1))
    assert refused.value.errors == {"expires_at": "the expiry must be in the future"}
    apikey_revoke(api_key=key)
    with pytest.raises(KeySettingsInvalid) as refused:
        apikey_update(api_key=key, name="late")
    assert refused.value.errors == {"key": "a revoked key cannot be changed"}


# --- The API -------------------------------------------------------------------------------------------------------


def test_api_create_and_patch_with_controls_and_clear_them_with_null(team: Team) -> None:
    client = team.client(team.owner)
    status, body = send(
        client,
        "post",
        "/portal/api-keys",
        {"name": "bot", "allowed_models": ["beta"], "requests_per_minute": 3, "spend_cap_monthly_micros": 1_234_567},
    )
    assert status == 201
    assert (body["allowed_models"], body["requests_per_minute"], body["spend_cap_monthly_micros"]) == (["beta"], 3, 1_234_567)
    url = f"/portal/api-keys/{body['id']}"
    expiry = (timezone.now() + timedelta(days=2)).replace(microsecond=0)
    status, body = send(
        client, "patch", url, {"requests_per_minute": None, "allowed_models": [], "expires_at": expiry.isoformat()}
    )
    assert status == 200
    assert (body["allowed_models"], body["requests_per_minute"], body["spend_cap_monthly_micros"]) == ([], None, 1_234_567)
    assert body["expires_at"] == expiry.isoformat().replace("+00:00", "Z")
    status, body = send(client, "patch", url, {"expires_at": None, "spend_cap_monthly_micros": None})
    assert status == 200 and body["expires_at"] is None and body["spend_cap_monthly_micros"] is None


def test_api_refuses_bad_settings_with_a_400_naming_each_field(team: Team) -> None:
    client = team.client(team.owner)
    rpm = plan_rpm(team.acme)
    url = f"/portal/api-keys/{team.acme_key_id}"
    cases = [
        ({"allowed_models": ["gpt-9"]}, {"allowed_models": ["not a model this organization may use: gpt-9"]}),
        ({"requests_per_minute": rpm + 1}, {"requests_per_minute": [f"must be at most the plan's {rpm} requests per minute"]}),
        ({"requests_per_minute": 0}, {"requests_per_minute": ["Ensure this value is greater than or equal to 1."]}),
        ({"spend_cap_daily_micros": "lots"}, {"spend_cap_daily_micros": ["A valid integer is required."]}),
        (
            {"spend_cap_daily_micros": 10**16},
            {"spend_cap_daily_micros": ["Ensure this value is less than or equal to 1000000000000000."]},
        ),
        ({"allowed_models": "alpha"}, {"allowed_models": ['Expected a list of items but got type "str".']}),
        ({"expires_at": "2001-01-01T00:00:00Z"}, {"expires_at": ["the expiry must be in the future"]}),
        ({"name": ""}, {"name": ["This field may not be blank."]}),
    ]
    for body, errors in cases:
        assert send(client, "patch", url, body) == (400, errors), body
        assert send(client, "post", "/portal/api-keys", {"name": "new", **body})[0] == 400, body
    assert ApiKey.objects.filter(organization=team.acme).count() == 1
    key = ApiKey.objects.get(pk=team.acme_key_id)
    assert (key.allowed_aliases, key.requests_per_minute, key.spend_cap_daily_micros) == ([], None, None)
    # Members read, never change.
    assert send(team.client(team.member), "patch", url, {"requests_per_minute": 1})[0] == 403
    # An admin key takes no controls.
    status, body = send(client, "post", "/portal/api-keys", {"name": "adm", "kind": "admin", "requests_per_minute": 2})
    assert (status, body) == (400, {"kind": ["an admin key calls no model: it takes no models, rate or spend caps"]})


# --- The pages -----------------------------------------------------------------------------------------------------


def test_the_create_form_takes_dollars_and_stores_exact_micro_units(team: Team) -> None:
    client = team.client(team.owner)
    response = client.post(
        "/portal/api-keys",
        {
            "name": "capped",
            "allowed_models": ["alpha"],
            "requests_per_minute": "2",
            "spend_cap_daily": "1.234567",
            "spend_cap_monthly": "10.1",
        },
    )
    assert response.status_code == 302  # post/redirect/get
    key = ApiKey.objects.get(name="capped")
    assert (key.allowed_aliases, key.requests_per_minute, key.spend_cap_daily_micros, key.spend_cap_monthly_micros) == (
        ["alpha"],
        2,
        1_234_567,
        10_100_000,
    )
    page = client.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()
    assert "alpha · 2/min · $1.234567/day · $10.10/month" in page
    refused = client.post("/portal/api-keys", {"name": "bad", "spend_cap_daily": "0.0000001"})
    assert refused.status_code == 400
    assert "Ensure that there are no more than 6 decimal places." in refused.content.decode()
    refused = client.post("/portal/api-keys", {"name": "bad", "requests_per_minute": "999999"})
    assert refused.status_code == 400
    assert f"must be at most the plan&#x27;s {plan_rpm(team.acme)} requests per minute" in refused.content.decode()
    assert not ApiKey.objects.filter(name="bad").exists()


def test_the_edit_page_shows_and_saves_the_settings(team: Team) -> None:
    client = team.client(team.admin)
    key = ApiKey.objects.get(pk=team.acme_key_id)
    apikey_update(api_key=key, spend_cap_daily_micros=2_500_000, allowed_aliases=["beta"])
    page = client.get(f"/portal/api-keys/{key.pk}/edit")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'value="2.5"' in html and 'value="beta" ' in html and "checked" in html
    saved = client.post(
        f"/portal/api-keys/{key.pk}/edit", {"name": "renamed", "allowed_models": ["alpha", "beta"], "spend_cap_monthly": "12"}
    )
    assert saved.status_code == 302
    key.refresh_from_db()
    assert (key.name, key.allowed_aliases, key.spend_cap_daily_micros, key.spend_cap_monthly_micros) == (
        "renamed",
        ["alpha", "beta"],
        None,
        12_000_000,
    )
    refused = client.post(
        f"/portal/api-keys/{key.pk}/edit", {"name": "renamed", "spend_cap_daily": "20", "spend_cap_monthly": "12"}
    )
    assert refused.status_code == 400 and "must be at most the key&#x27;s monthly cap" in refused.content.decode()
    assert team.client(team.member).get(f"/portal/api-keys/{key.pk}/edit").status_code == 403
    assert client.get(f"/portal/api-keys/{team.globex_key_id}/edit").status_code == 404


# --- /v1 -------------------------------------------------------------------------------------------------------------


def test_v1_enforces_a_keys_allowed_models_and_sees_a_change_at_once(gateway: LiveGateway, sim) -> None:  # noqa: ANN001
    ensure_site_and_plans()
    team = make_team()
    pool = ModelAlias.objects.get(alias=ALIAS).pool
    ModelAlias.objects.create(alias="other-model", pool=pool)
    Organization.objects.filter(pk=team.acme.pk).update(plan=team.acme.plan.__class__.objects.get(slug="pro"))
    created = apikey_create(organization=team.acme, name="narrow", allowed_aliases=["other-model"])
    wait_until_gateway_caught_up(gateway)
    for route in (CHAT, MESSAGES):
        NOT_ALLOWED.check(route, post(gateway, route, created.raw, body=good_body(route)), model=ALIAS)
    served = post(gateway, CHAT, created.raw, body=good_body(CHAT, model="other-model"))
    assert served.status_code == 200 and served.json()["model"] == "other-model"
    listed = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {created.raw}"}, timeout=10).json()
    assert [m["id"] for m in listed["data"]] == ["other-model"]
    # The owner widens the key through the API; the gateway applies it without a restart.
    status, _ = send(team.client(team.owner), "patch", f"/portal/api-keys/{created.api_key.pk}", {"allowed_models": []})
    assert status == 200
    wait_for(lambda: post(gateway, CHAT, created.raw, body=good_body(CHAT)).status_code == 200, timeout=5)
