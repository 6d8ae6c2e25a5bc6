"""Organization admin keys (cta_…): made by owners and admins (portal, API, manage.py), shown once, accepted by the
management API as their organization only, rate-limited when wrong, and never accepted by /v1."""

from __future__ import annotations

import io
import json
import re
from datetime import timedelta

import httpx
import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from accounts.models import Organization
from apikeys.keys import hash_key, split_admin_key, split_key
from apikeys.models import ApiKey, ApiKeyEvent
from apikeys.services import apikey_create, apikey_revoke
from tests.support.live import ALIAS, LiveGateway, wait_until_gateway_caught_up
from tests.support.portal import Team, ensure_site_and_plans, make_team, portal_settings  # noqa: F401
from tests.test_http_errors import CHAT, MESSAGES, UNAUTHORIZED, assert_refused_everywhere, good_body, post

ADMIN_KEY_RE = re.compile(r"^cta_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$")


@pytest.fixture
def team(db, portal_settings) -> Team:  # noqa: ANN001, F811
    ensure_site_and_plans()
    return make_team()


def admin_key(team: Team, org: Organization | None = None) -> str:
    return apikey_create(organization=org or team.acme, name="ops script", created_by=team.owner, kind="admin").raw


def api(raw: str) -> Client:
    """A script's client: the admin key in Authorization, no session, CSRF enforced as for any client."""
    return Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {raw}", HTTP_ACCEPT="application/json")


def send(client: Client, method: str, url: str, body: dict[str, object] | None = None) -> tuple[int, object]:
    kwargs = {"data": json.dumps(body), "content_type": "application/json"} if body is not None else {}
    response = getattr(client, method)(url, HTTP_ACCEPT="application/json", **kwargs)
    return response.status_code, response.json()


# --- The key and where it is made ----------------------------------------------------------------------------------


def test_an_admin_key_has_its_own_prefix_and_is_stored_as_a_keyed_hash(team: Team, settings) -> None:  # noqa: ANN001
    settings.PORTAL_KEY_ISSUER = "unkey"  # admin keys never go to Unkey: the management API checks them here
    created = apikey_create(organization=team.acme, name="ops", kind="admin")
    key = created.api_key
    assert ADMIN_KEY_RE.match(created.raw)
    assert split_admin_key(created.raw) == key.public_id and split_key(created.raw) is None
    assert key.prefix == f"cta_{key.public_id}" and key.masked.startswith("cta_")
    assert key.kind == "admin" and key.issuer == "local" and key.key_hash == hash_key(created.raw)
    assert all(created.raw not in str(getattr(key, f.attname)) for f in ApiKey._meta.fields)


def test_owners_and_admins_make_admin_keys_on_the_page_shown_once_members_cannot(team: Team) -> None:
    client = team.client(team.admin)
    response = client.post("/portal/api-keys", {"name": "terraform", "kind": "admin"})
    assert response.status_code == 302  # post/redirect/get: the key is shown once on the page it redirects to
    page = client.get(response["Location"], HTTP_ACCEPT="text/html").content.decode()
    raw = re.search(r'id="new-key-value"[^>]*>(cta_[^<]+)</code>', page).group(1)
    key = ApiKey.objects.get(name="terraform")
    assert key.kind == "admin" and key.key_hash == hash_key(raw)
    listed = client.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()
    assert raw not in listed and key.masked in listed and ">admin</span>" in listed
    assert team.client(team.member).post("/portal/api-keys", {"name": "x", "kind": "admin"}).status_code == 403
    # Signed in, the JSON API makes one too; it lists admin keys beside API keys for people.
    status, body = send(team.client(team.owner), "post", "/portal/api-keys", {"name": "ci admin", "kind": "admin"})
    assert status == 201 and ADMIN_KEY_RE.match(body["key"]) and body["kind"] == "admin"
    status, listed_json = send(team.client(team.member), "get", "/portal/api-keys")
    assert {(k["name"], k["kind"]) for k in listed_json} == {
        ("acme backend", "standard"),
        ("terraform", "admin"),
        ("ci admin", "admin"),
    }


def test_manage_py_issue_key_kind_admin_prints_the_admin_key(team: Team) -> None:
    out, err = io.StringIO(), io.StringIO()
    call_command("issue_key", "--org", "acme", "--name", "cron", "--kind", "admin", stdout=out, stderr=err)
    raw = out.getvalue().strip()
    key = ApiKey.objects.get(name="cron")
    assert ADMIN_KEY_RE.match(raw) and key.kind == "admin" and key.key_hash == hash_key(raw)
    assert ApiKeyEvent.objects.get(api_key=key).actor_label == "manage.py issue_key"
    status, _ = send(api(raw), "get", "/portal/api-keys")
    assert status == 200


# --- Every management call with a real admin key ------------------------------------------------------------------------


def test_list_shows_the_organizations_api_keys_only(team: Team) -> None:
    raw = admin_key(team)
    apikey_create(organization=team.acme, name="other admin", kind="admin")
    response = api(raw).get("/portal/api-keys")
    assert response.status_code == 200 and response["X-Total-Count"] == "1"
    assert [(k["id"], k["kind"]) for k in response.json()] == [(team.acme_key_id, "standard")]
    key = ApiKey.objects.get(kind="admin", name="ops script")
    assert key.last_used_at is not None


def test_create_returns_the_raw_key_once_and_records_the_admin_key_as_actor(team: Team) -> None:
    raw = admin_key(team)
    status, body = send(api(raw), "post", "/portal/api-keys", {"name": "from a script", "requests_per_minute": 5})
    assert status == 201
    key = ApiKey.objects.get(pk=body["id"])
    assert key.organization == team.acme and key.kind == "standard" and key.requests_per_minute == 5
    assert key.key_hash == hash_key(body["key"]) and split_key(body["key"]) == key.public_id
    assert key.created_by is None
    admin = ApiKey.objects.get(name="ops script")
    event = ApiKeyEvent.objects.get(api_key=key, action="create")
    assert event.actor is None and event.actor_label == f"portal api (admin key {admin.prefix})"
    status, listed = send(api(raw), "get", "/portal/api-keys")
    assert body["key"] not in json.dumps(listed)


def test_an_admin_key_cannot_make_or_touch_admin_keys(team: Team) -> None:
    raw = admin_key(team)
    other = apikey_create(organization=team.acme, name="other admin", kind="admin").api_key
    own = ApiKey.objects.get(name="ops script")
    status, body = send(api(raw), "post", "/portal/api-keys", {"name": "escalate", "kind": "admin"})
    assert status == 403 and "cannot create or manage admin keys" in body["detail"]
    assert not ApiKey.objects.filter(name="escalate").exists()
    for key in (other, own):
        assert send(api(raw), "get", f"/portal/api-keys/{key.pk}")[0] == 404
        assert send(api(raw), "delete", f"/portal/api-keys/{key.pk}")[0] == 404
        assert send(api(raw), "patch", f"/portal/api-keys/{key.pk}", {"name": "x"})[0] == 404
        assert send(api(raw), "post", f"/portal/api-keys/{key.pk}/rotate", {"grace_seconds": 0})[0] == 404
    assert ApiKey.objects.filter(kind="admin", revoked_at__isnull=True).count() == 2


def test_retrieve_update_revoke_and_rotate_an_api_key(team: Team) -> None:
    client = api(admin_key(team))
    status, body = send(client, "get", f"/portal/api-keys/{team.acme_key_id}")
    assert status == 200 and body["id"] == team.acme_key_id and body["status"] == "active"
    status, body = send(client, "patch", f"/portal/api-keys/{team.acme_key_id}", {"requests_per_minute": 7, "name": "renamed"})
    assert status == 200 and body["requests_per_minute"] == 7 and body["name"] == "renamed"
    status, body = send(client, "post", f"/portal/api-keys/{team.acme_key_id}/rotate", {"grace_seconds": 60})
    assert status == 201 and body["rotated_from"] == team.acme_key_id and body["requests_per_minute"] == 7
    assert body["old_key"]["id"] == team.acme_key_id and body["old_key"]["expires_at"] is not None
    new_id = body["id"]
    status, body = send(client, "delete", f"/portal/api-keys/{new_id}")
    assert status == 200 and body["status"] == "revoked"
    actions = sorted(ApiKeyEvent.objects.filter(api_key_id__in=[team.acme_key_id, new_id]).values_list("action", flat=True))
    assert actions == ["create", "create", "revoke", "rotate", "update"]


def test_usage_summary_reads_the_admin_keys_organization(team: Team) -> None:
    status, body = send(api(admin_key(team)), "get", "/portal/usage-summary?group_by=key")
    assert status == 200 and body["organization"] == "acme" and body["group_by"] == "key"
    assert body["totals"] == {
        "requests": 0,
        "errors": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "cost_micros": 0,
    }


def test_usage_export_streams_the_admin_keys_organization_only(team: Team) -> None:
    from datetime import UTC, datetime

    from usage.models import UsageEvent

    now = datetime.now(UTC)
    for org, request_id in ((team.acme, "req_export_acme"), (team.globex, "req_export_globex")):
        UsageEvent.objects.create(
            request_id=request_id,
            organization=org,
            alias="oss-20b",
            route="chat.completions",
            status="ok",
            http_status=200,
            prompt_tokens=3,
            completion_tokens=4,
            total_tokens=7,
            cost_micros=11,
            created_at=now,
        )
    from tests.test_portal_usage_audit import export

    status, text, response = export(api(admin_key(team)), "kind=rows")
    assert status == 200 and response["Content-Type"].startswith("text/csv")  # type: ignore[index]
    assert "req_export_acme" in text and "req_export_globex" not in text


def test_an_admin_key_acts_as_its_organization_only(team: Team) -> None:
    client = api(admin_key(team))
    assert send(client, "get", f"/portal/api-keys/{team.globex_key_id}")[0] == 404
    assert send(client, "delete", f"/portal/api-keys/{team.globex_key_id}")[0] == 404
    for url in ("/portal/api-keys?org=globex", f"/portal/api-keys?org={team.globex.pk}", "/portal/usage-summary?org=globex"):
        status, body = send(client, "get", url)
        assert (status, body) == (404, {"detail": "No such organization."}), url
    assert send(client, "get", "/portal/api-keys?org=acme")[0] == 200
    assert ApiKey.objects.get(pk=team.globex_key_id).revoked_at is None


# --- Refusals ----------------------------------------------------------------------------------------------------------


def test_wrong_revoked_expired_or_suspended_admin_keys_are_401(team: Team) -> None:
    good = admin_key(team)
    wrong = good[:-4] + ("aaaa" if not good.endswith("aaaa") else "bbbb")
    revoked_raw = admin_key(team)
    apikey_revoke(api_key=ApiKey.objects.get(key_hash=hash_key(revoked_raw)))
    expired_raw = admin_key(team)
    ApiKey.objects.filter(key_hash=hash_key(expired_raw)).update(expires_at=timezone.now() - timedelta(seconds=1))
    suspended_raw = admin_key(team, team.globex)
    Organization.objects.filter(pk=team.globex.pk).update(status="suspended")
    api_key_raw = apikey_create(organization=team.acme, name="plain").raw
    for raw in (wrong, revoked_raw, expired_raw, suspended_raw, "cta_0123456789ab_" + "x" * 43, "cta_short"):
        response = api(raw).get("/portal/api-keys")
        assert response.status_code == 401, raw
        assert response.json() == {"detail": "Invalid admin key."}
        assert response["WWW-Authenticate"].startswith("Bearer")
    # An API key is not an admin key: the management API does not take it (it is left to the session, and there is none).
    response = api(api_key_raw).get("/portal/api-keys")
    assert response.status_code == 403
    assert send(api(good), "get", "/portal/api-keys")[0] == 200


def test_failed_admin_key_attempts_are_rate_limited_per_client(team: Team, settings) -> None:  # noqa: ANN001
    settings.PORTAL_RATELIMIT_ADMIN_KEY_FAILURES = "3/m"
    good = admin_key(team)
    bad = "cta_0123456789ab_" + "x" * 43
    assert [api(bad).get("/portal/api-keys").status_code for _ in range(3)] == [401, 401, 401]
    refused = api(bad).get("/portal/api-keys")
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert "Too many failed admin key attempts" in refused.json()["detail"]
    # Once over, even the right key waits: guessing is not told apart from using.
    assert api(good).get("/portal/api-keys").status_code == 429
    # Another client address has its own budget, and successes cost nothing.
    other = Client(HTTP_AUTHORIZATION=f"Bearer {good}", HTTP_ACCEPT="application/json", REMOTE_ADDR="10.9.8.7")
    assert [other.get("/portal/api-keys").status_code for _ in range(5)] == [200] * 5


def test_admin_key_calls_need_no_csrf_token_but_sessions_still_do(team: Team) -> None:
    status, _ = send(api(admin_key(team)), "post", "/portal/api-keys", {"name": "no csrf needed"})
    assert status == 201
    session = Client(enforce_csrf_checks=True)
    session.force_login(team.owner)
    status, body = send(session, "post", "/portal/api-keys", {"name": "forged"})
    assert status == 403 and "CSRF" in body["detail"]


# --- /v1 never accepts one -----------------------------------------------------------------------------------------


def test_v1_refuses_admin_keys_as_invalid_in_each_surfaces_shape(gateway: LiveGateway, sim) -> None:  # noqa: ANN001
    ensure_site_and_plans()
    org = Organization.objects.filter(slug="acme").first() or make_team().acme
    created = apikey_create(organization=org, name="ops", kind="admin")
    raw = created.raw
    wait_until_gateway_caught_up(gateway)
    assert_refused_everywhere(gateway, raw, UNAUTHORIZED)
    # Dressed as an API key (ctr_ with the admin key's public id and secret), it is still no API key: the gateway's
    # record of that public id is an admin key's.
    disguised = "ctr_" + raw[4:]
    assert_refused_everywhere(gateway, disguised, UNAUTHORIZED)
    models = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {raw}"}, timeout=10)
    assert models.status_code == 401 and models.json()["error"]["code"] == "invalid_api_key"
    assert sim.stats()["requests_total"] == 0
    # The organization's API key works all along.
    api_key = apikey_create(organization=org, name="app")
    wait_until_gateway_caught_up(gateway)
    assert post(gateway, CHAT, api_key.raw, body=good_body(CHAT)).status_code == 200
    assert post(gateway, MESSAGES, raw, body=good_body(MESSAGES)).status_code == 401
    assert ALIAS


def test_people_rename_rotate_and_revoke_admin_keys_which_take_no_limits(team: Team) -> None:
    owner = team.client(team.owner)
    raw = admin_key(team)
    key = ApiKey.objects.get(key_hash=hash_key(raw))
    status, body = send(owner, "patch", f"/portal/api-keys/{key.pk}", {"requests_per_minute": 5})
    assert (status, body) == (400, {"kind": ["an admin key calls no model: it takes no models, rate or spend caps"]})
    status, body = send(owner, "patch", f"/portal/api-keys/{key.pk}", {"name": "renamed"})
    assert status == 200 and body["name"] == "renamed" and body["kind"] == "admin"
    page = owner.get(f"/portal/api-keys/{key.pk}/edit").content.decode()
    assert 'name="spend_cap_daily"' not in page  # the edit page offers an admin key its name and expiry only
    status, body = send(owner, "post", f"/portal/api-keys/{key.pk}/rotate", {"grace_seconds": 0})
    assert status == 201 and ADMIN_KEY_RE.match(body["key"]) and body["kind"] == "admin"
    assert api(raw).get("/portal/api-keys").status_code == 401  # no grace: the old admin key stopped
    assert api(body["key"]).get("/portal/api-keys").status_code == 200
    assert send(owner, "delete", f"/portal/api-keys/{body['id']}")[0] == 200
    assert api(body["key"]).get("/portal/api-keys").status_code == 401


def test_a_view_that_asks_for_a_session_member_answers_an_admin_key_not_found(team: Team) -> None:
    from django.test import RequestFactory

    from portal.authentication import AdminKeyUser
    from portal.context import NotAMember, portal_context

    request = RequestFactory().get("/portal/anything")
    request.user = AdminKeyUser(ApiKey.objects.get(key_hash=hash_key(admin_key(team))))  # type: ignore[assignment]
    with pytest.raises(NotAMember):
        portal_context(request)
