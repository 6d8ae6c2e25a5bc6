"""The API keys page and the key management API: create once-shown keys, list masked, revoke; never across organizations."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from django.test import Client
from django.utils import timezone

from apikeys.keys import hash_key, split_key
from apikeys.models import ApiKey, ApiKeyEvent
from tests.support.live import ALIAS, LiveGateway
from tests.support.portal import Team, ensure_site_and_plans, make_team, portal_settings  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _portal(portal_settings) -> None:  # noqa: ANN001, F811
    ensure_site_and_plans()


@pytest.fixture
def team() -> Team:
    return make_team()


def json_get(client: Client, url: str) -> tuple[int, object]:
    response = client.get(url, HTTP_ACCEPT="application/json")
    return response.status_code, response.json()


def json_post(client: Client, url: str, body: dict[str, object]) -> tuple[int, object]:
    response = client.post(url, data=json.dumps(body), content_type="application/json", HTTP_ACCEPT="application/json")
    return response.status_code, response.json()


# --- The page ------------------------------------------------------------------------------------


def test_page_lists_the_organizations_keys_masked_and_nothing_of_another_organization(team: Team) -> None:
    response = team.client(team.member).get("/portal/api-keys", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    acme_key = ApiKey.objects.get(pk=team.acme_key_id)
    assert "acme backend" in page and acme_key.masked in page
    assert "globex backend" not in page
    assert "Create key" not in page  # a member sees, does not create
    assert "owners and admins create and revoke them" in page


def raw_key_on(page: str) -> str:
    start = page.index('id="new-key-value"')
    return page[page.index(">", start) + 1 : page.index("</code>", start)]


def test_creating_a_key_redirects_then_shows_the_raw_key_once_and_stores_only_its_hash(team: Team) -> None:
    client = team.client(team.admin)
    response = client.post("/portal/api-keys", {"name": "ci runner", "expires_in_days": "30"})
    # Post/redirect/get: the POST answers a redirect, so reloading the page that shows the key repeats a GET.
    assert response.status_code == 302 and response["Location"] == "/portal/api-keys#new-key"
    shown = client.get("/portal/api-keys", HTTP_ACCEPT="text/html")
    assert shown.status_code == 200
    assert shown["Cache-Control"].startswith("max-age=0") and "no-store" in shown["Cache-Control"]
    page = shown.content.decode()
    key = ApiKey.objects.get(organization=team.acme, name="ci runner")
    raw = raw_key_on(page)
    assert "Your new key “ci runner”" in page
    assert split_key(raw) == key.public_id
    assert key.key_hash == hash_key(raw)
    assert key.expires_at is not None and key.created_by == team.admin
    # Nothing in the row is the key itself.
    stored = [str(getattr(key, f.attname)) for f in ApiKey._meta.fields]
    assert raw not in stored and not any(raw in value for value in stored)
    assert ApiKeyEvent.objects.filter(api_key=key, action="create", actor=team.admin).count() == 1
    # A reload never shows it again, and creates nothing.
    again = client.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()
    assert raw not in again and 'id="new-key-value"' not in again
    assert key.masked in again
    assert ApiKey.objects.filter(organization=team.acme, name="ci runner").count() == 1
    assert "portal_created_key" not in client.session


def test_the_new_key_is_shown_only_in_the_organization_it_was_made_for(team: Team) -> None:
    from tests.support.portal import add_member

    add_member(team.globex, team.admin, "member")
    client = team.client(team.admin)
    assert client.post("/portal/api-keys", {"name": "acme only"}).status_code == 302
    client.post("/portal/organization/switch", {"organization": team.globex.pk, "next": "/portal/usage"})
    page = client.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()
    assert 'id="new-key-value"' not in page and "acme only" not in page


def test_a_new_key_not_fetched_within_five_minutes_is_never_shown(team: Team, monkeypatch) -> None:  # noqa: ANN001
    from datetime import timedelta

    client = team.client(team.admin)
    assert client.post("/portal/api-keys", {"name": "forgotten"}).status_code == 302
    later = timezone.now() + timedelta(seconds=301)
    monkeypatch.setattr(timezone, "now", lambda: later)
    page = client.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()
    assert 'id="new-key-value"' not in page and "portal_created_key" not in client.session


def test_a_second_active_key_with_the_same_name_is_refused_with_a_form_error(team: Team) -> None:
    client = team.client(team.owner)
    refused = client.post("/portal/api-keys", {"name": "  ACME backend "})  # the fixture's key is "acme backend"
    assert refused.status_code == 400
    assert "already has an active key named “ACME backend”" in refused.content.decode()
    status, body = json_post(client, "/portal/api-keys", {"name": "acme backend"})
    assert status == 400 and "already has an active key named" in body["name"][0]  # type: ignore[index]
    assert ApiKey.objects.filter(organization=team.acme, name__iexact="acme backend").count() == 1
    # Another organization's names do not matter, and a revoked key's name is free again.
    assert client.post("/portal/api-keys", {"name": "globex backend"}).status_code == 302
    ApiKey.objects.filter(pk=team.acme_key_id).update(revoked_at=timezone.now())
    assert client.post("/portal/api-keys", {"name": "acme backend"}).status_code == 302


def test_a_member_cannot_create_a_key_from_the_page(team: Team) -> None:
    response = team.client(team.member).post("/portal/api-keys", {"name": "sneaky"})
    assert response.status_code == 403
    assert not ApiKey.objects.filter(name="sneaky").exists()


def test_a_key_without_a_name_is_refused_with_the_form_error(team: Team) -> None:
    response = team.client(team.owner).post("/portal/api-keys", {"name": "  "})
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()


def test_revoke_asks_for_confirmation_then_revokes(team: Team) -> None:
    client = team.client(team.owner)
    confirm = client.get(f"/portal/api-keys/{team.acme_key_id}/revoke")
    assert confirm.status_code == 200
    assert "Revoke “acme backend”?" in confirm.content.decode()
    assert ApiKey.objects.get(pk=team.acme_key_id).revoked_at is None  # a GET changes nothing
    done = client.post(f"/portal/api-keys/{team.acme_key_id}/revoke", follow=True)
    assert done.status_code == 200
    assert "is revoked" in done.content.decode()
    key = ApiKey.objects.get(pk=team.acme_key_id)
    assert key.revoked_at is not None
    assert ApiKeyEvent.objects.filter(api_key=key, action="revoke", actor=team.owner).count() == 1


def test_revoke_page_of_another_organizations_key_is_not_found(team: Team) -> None:
    client = team.client(team.owner)
    assert client.get(f"/portal/api-keys/{team.globex_key_id}/revoke").status_code == 404
    assert client.post(f"/portal/api-keys/{team.globex_key_id}/revoke").status_code == 404
    assert client.post("/portal/api-keys/987654/revoke").status_code == 404
    assert ApiKey.objects.get(pk=team.globex_key_id).revoked_at is None


def test_a_member_cannot_revoke_from_the_page(team: Team) -> None:
    response = team.client(team.member).post(f"/portal/api-keys/{team.acme_key_id}/revoke")
    assert response.status_code == 403
    assert ApiKey.objects.get(pk=team.acme_key_id).revoked_at is None


def test_anonymous_visitors_are_sent_to_sign_in(team: Team) -> None:
    client = Client()
    for url in ("/portal/api-keys", f"/portal/api-keys/{team.acme_key_id}/revoke"):
        response = client.get(url, HTTP_ACCEPT="text/html")
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")
    assert client.post(f"/portal/api-keys/{team.acme_key_id}/revoke").status_code == 302
    assert ApiKey.objects.get(pk=team.acme_key_id).revoked_at is None


def test_key_creation_is_rate_limited_per_user(team: Team, settings) -> None:  # noqa: ANN001
    settings.PORTAL_RATELIMIT_KEY_CREATE = "2/h"
    client = team.client(team.owner)
    assert client.post("/portal/api-keys", {"name": "one"}).status_code == 302
    assert json_post(client, "/portal/api-keys", {"name": "two"})[0] == 201  # both doors share one budget
    page = client.post("/portal/api-keys", {"name": "three"})
    assert page.status_code == 429
    assert int(page["Retry-After"]) > 0
    status, body = json_post(client, "/portal/api-keys", {"name": "four"})
    assert status == 429 and "Too many keys" in body["detail"]
    assert not ApiKey.objects.filter(name__in=["three", "four"]).exists()
    # Another user has a budget of their own.
    assert team.client(team.admin).post("/portal/api-keys", {"name": "five"}).status_code == 302


# --- The JSON API ----------------------------------------------------------------------------------


def test_api_lists_keys_masked_without_secrets(team: Team) -> None:
    status, body = json_get(team.client(team.member), "/portal/api-keys")
    assert status == 200
    key = ApiKey.objects.get(pk=team.acme_key_id)
    assert body == [
        {
            "id": key.pk,
            "name": "acme backend",
            "prefix": key.prefix,
            "masked": key.masked,
            "status": "active",
            "created_at": key.created_at.isoformat().replace("+00:00", "Z"),
            "last_used_at": None,
            "expires_at": None,
            "revoked_at": None,
            "kind": "standard",
            "allowed_models": [],
            "requests_per_minute": None,
            "spend_cap_daily_micros": None,
            "spend_cap_monthly_micros": None,
            "rotated_from": None,
        }
    ]


def test_api_create_returns_the_raw_key_once(team: Team) -> None:
    client = team.client(team.owner)
    status, body = json_post(client, "/portal/api-keys", {"name": "deploy bot", "expires_in_days": 7})
    assert status == 201
    key = ApiKey.objects.get(pk=body["id"])
    assert key.organization == team.acme and key.name == "deploy bot"
    assert key.key_hash == hash_key(body["key"]) and body["masked"] == key.masked
    assert body["expires_at"] is not None
    status, listed = json_get(client, "/portal/api-keys")
    assert all("key" not in row for row in listed)
    assert body["key"] not in json.dumps(listed)


def test_api_create_validates_its_input(team: Team) -> None:
    client = team.client(team.owner)
    status, body = json_post(client, "/portal/api-keys", {"name": ""})
    assert status == 400 and "name" in body
    status, body = json_post(client, "/portal/api-keys", {"name": "x", "expires_at": "2001-01-01T00:00:00Z"})
    assert status == 400 and body == {"expires_at": ["the expiry must be in the future"]}
    status, body = json_post(
        client, "/portal/api-keys", {"name": "x", "expires_in_days": 3, "expires_at": "2101-01-01T00:00:00Z"}
    )
    assert status == 400
    assert ApiKey.objects.filter(organization=team.acme).count() == 1


def test_api_revoke_and_retrieve(team: Team) -> None:
    client = team.client(team.admin)
    status, body = json_get(client, f"/portal/api-keys/{team.acme_key_id}")
    assert status == 200 and body["status"] == "active"
    response = client.delete(f"/portal/api-keys/{team.acme_key_id}", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert response.json()["status"] == "revoked" and response.json()["revoked_at"] is not None
    # Revoking again is harmless and writes no second audit row.
    assert client.delete(f"/portal/api-keys/{team.acme_key_id}").status_code == 200
    assert ApiKeyEvent.objects.filter(api_key_id=team.acme_key_id, action="revoke").count() == 1


def test_api_roles_members_read_only(team: Team) -> None:
    client = team.client(team.member)
    status, body = json_post(client, "/portal/api-keys", {"name": "nope"})
    assert status == 403 and "owners and admins" in body["detail"]
    response = client.delete(f"/portal/api-keys/{team.acme_key_id}")
    assert response.status_code == 403
    assert ApiKey.objects.get(pk=team.acme_key_id).revoked_at is None


def test_api_never_reaches_another_organizations_keys(team: Team) -> None:
    client = team.client(team.owner)
    assert client.get(f"/portal/api-keys/{team.globex_key_id}", HTTP_ACCEPT="application/json").status_code == 404
    assert client.delete(f"/portal/api-keys/{team.globex_key_id}").status_code == 404
    assert client.delete("/portal/api-keys/99999999").status_code == 404
    # Naming the other organization explicitly is "not found" too, never "forbidden".
    status, body = json_get(client, "/portal/api-keys?org=globex")
    assert status == 404 and body == {"detail": "No such organization."}
    status, _ = json_post(client, f"/portal/api-keys?org={team.globex.pk}", {"name": "implant"})
    assert status == 404
    assert client.delete(f"/portal/api-keys/{team.globex_key_id}?org=globex").status_code == 404
    assert ApiKey.objects.get(pk=team.globex_key_id).revoked_at is None
    assert ApiKey.objects.filter(organization=team.globex).count() == 1


def test_api_org_parameter_picks_one_of_the_users_organizations(team: Team) -> None:
    from accounts.models import Membership

    Membership.objects.create(user=team.outsider, organization=team.acme, role=Membership.Role.MEMBER)
    client = team.client(team.outsider)
    _, own = json_get(client, "/portal/api-keys")
    _, acme = json_get(client, "/portal/api-keys?org=acme")
    assert [k["name"] for k in own] == ["globex backend"]
    assert [k["name"] for k in acme] == ["acme backend"]
    status, _ = json_post(client, "/portal/api-keys?org=acme", {"name": "x"})
    assert status == 403  # a member there


def test_api_refuses_anonymous_callers_with_403_json(team: Team) -> None:
    client = Client()
    for method, url in (
        ("get", "/portal/api-keys"),
        ("post", "/portal/api-keys"),
        ("get", f"/portal/api-keys/{team.acme_key_id}"),
        ("delete", f"/portal/api-keys/{team.acme_key_id}"),
    ):
        response = getattr(client, method)(url, HTTP_ACCEPT="application/json", content_type="application/json")
        assert response.status_code == 403, url
        assert response.json() == {"detail": "Authentication credentials were not provided."}
    assert ApiKey.objects.get(pk=team.acme_key_id).revoked_at is None


def test_api_writes_need_the_csrf_token(team: Team) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(team.owner)
    status, body = json_post(client, "/portal/api-keys", {"name": "forged"})
    assert status == 403 and "CSRF" in body["detail"]
    assert client.delete(f"/portal/api-keys/{team.acme_key_id}").status_code == 403
    page = client.post("/portal/api-keys", {"name": "forged"})
    assert page.status_code == 403
    assert not ApiKey.objects.filter(name="forged").exists()
    # With the token from the page it works.
    client.get("/portal/api-keys", HTTP_ACCEPT="text/html")
    token = client.cookies["csrftoken"].value
    response = client.post(
        "/portal/api-keys", data=json.dumps({"name": "fine"}), content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert response.status_code == 201


def test_openapi_schema_describes_the_management_api(team: Team) -> None:
    response = team.client(team.member).get("/portal/api/schema", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["info"]["title"] == "Cortensor portal management API"
    paths = schema["paths"]
    assert set(paths["/portal/api-keys"]) == {"get", "post"}
    assert set(paths["/portal/api-keys/{key_id}"]) == {"get", "patch", "delete"}
    assert set(paths["/portal/api-keys/{key_id}/rotate"]) == {"post"}
    assert set(paths["/portal/usage-summary"]) == {"get"}
    assert "key" in schema["components"]["schemas"]["ApiKeyCreated"]["properties"]


# --- Against a live gateway -----------------------------------------------------------------------------


def test_a_key_revoked_through_the_api_is_refused_by_the_gateway(gateway: LiveGateway) -> None:
    ensure_site_and_plans()
    team = make_team()
    client = team.client(team.owner)
    status, created = json_post(client, "/portal/api-keys", {"name": "live"})
    assert status == 201
    body = {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    headers = {"Authorization": f"Bearer {created['key']}"}
    with httpx.Client(base_url=gateway.url, timeout=20) as http:
        assert http.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
        assert client.delete(f"/portal/api-keys/{created['id']}").status_code == 200
        deadline = time.monotonic() + 5
        while True:
            refused = http.post("/v1/chat/completions", json=body, headers=headers)
            if refused.status_code == 401 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"


def test_an_unreachable_key_issuer_is_a_503_not_a_traceback(team: Team, monkeypatch) -> None:  # noqa: ANN001
    from apikeys.issuers import KeyIssuerUnavailable
    from portal.views import apikeys as views

    def unavailable(**kwargs: object) -> None:
        raise KeyIssuerUnavailable("unkey did not answer")

    monkeypatch.setattr(views, "apikey_create", unavailable)
    client = team.client(team.owner)
    page = client.post("/portal/api-keys", {"name": "later"})
    assert page.status_code == 503 and "Keys cannot be created right now" in page.content.decode()
    status, body = json_post(client, "/portal/api-keys", {"name": "later"})
    assert status == 503 and body == {"detail": "Keys cannot be created right now; try again in a minute."}
