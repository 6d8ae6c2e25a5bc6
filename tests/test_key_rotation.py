"""Rotation: a new key with the old one's settings, shown once, while the old key works until the grace period ends."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apikeys.keys import hash_key
from apikeys.models import ApiKey, ApiKeyEvent
from apikeys.services import KeySettingsInvalid, apikey_create, apikey_get_or_create_playground, apikey_revoke, apikey_rotate
from tests.support.live import LiveGateway, wait_until_gateway_caught_up
from tests.support.portal import Team, ensure_site_and_plans, make_team, portal_settings  # noqa: F401
from tests.test_http_errors import CHAT, UNAUTHORIZED, good_body, post


@pytest.fixture
def team(db, portal_settings) -> Team:  # noqa: ANN001, F811
    ensure_site_and_plans()
    return make_team()


def send(client: Client, url: str, body: dict[str, object]) -> tuple[int, dict]:
    response = client.post(url, data=json.dumps(body), content_type="application/json", HTTP_ACCEPT="application/json")
    return response.status_code, response.json()


def test_a_rotation_copies_the_settings_and_brings_the_old_keys_expiry_forward(team: Team) -> None:
    expiry = timezone.now() + timedelta(days=30)
    old = apikey_create(
        organization=team.acme, name="svc", requests_per_minute=4, spend_cap_daily_micros=7, expires_at=expiry
    ).api_key
    before = timezone.now()
    created = apikey_rotate(api_key=old, grace_seconds=3600, actor=team.owner, actor_label="tests")
    new = created.api_key
    assert new.key_hash == hash_key(created.raw) and new.public_id != old.public_id
    assert (new.name, new.kind, new.requests_per_minute, new.spend_cap_daily_micros, new.expires_at, new.rotated_from_id) == (
        "svc",
        "standard",
        4,
        7,
        expiry,
        old.pk,
    )
    old.refresh_from_db()
    assert before + timedelta(seconds=3600) <= old.expires_at <= timezone.now() + timedelta(seconds=3600)
    assert old.status == "active" and old.revoked_at is None
    rotate = ApiKeyEvent.objects.get(api_key=old, action="rotate")
    assert rotate.actor == team.owner and f"replaced by key {new.pk} ({new.prefix})" in rotate.detail
    assert ApiKeyEvent.objects.get(api_key=new, action="create").actor == team.owner
    # A grace longer than the key had left does not extend it.
    soon = timezone.now() + timedelta(minutes=5)
    short = apikey_create(organization=team.acme, name="short", expires_at=soon).api_key
    apikey_rotate(api_key=short, grace_seconds=86400)
    short.refresh_from_db()
    assert short.expires_at == soon


def test_a_rotation_keeps_settings_the_organization_has_since_outgrown(team: Team) -> None:
    from accounts.models import Organization

    old = apikey_create(organization=team.acme, name="svc", spend_cap_daily_micros=9_000_000).api_key
    Organization.objects.filter(pk=team.acme.pk).update(spend_cap_daily_micros=1_000_000)
    new = apikey_rotate(api_key=old, grace_seconds=0).api_key
    assert new.spend_cap_daily_micros == 9_000_000 and new.rotated_from_id == old.pk


def test_what_cannot_be_rotated(team: Team) -> None:
    key = ApiKey.objects.get(pk=team.acme_key_id)
    for grace in (-1, 7 * 86400 + 1):
        with pytest.raises(KeySettingsInvalid) as refused:
            apikey_rotate(api_key=key, grace_seconds=grace)
        assert refused.value.errors == {"grace_seconds": "must be from 0 to 604800 seconds (7 days)"}
    apikey_rotate(api_key=key, grace_seconds=60)
    with pytest.raises(KeySettingsInvalid) as refused:
        apikey_rotate(api_key=key, grace_seconds=60)
    assert refused.value.errors == {"key": "this key was rotated already; rotate its replacement"}
    gone = apikey_create(organization=team.acme, name="gone").api_key
    apikey_revoke(api_key=gone)
    with pytest.raises(KeySettingsInvalid) as refused:
        apikey_rotate(api_key=gone, grace_seconds=0)
    assert refused.value.errors == {"key": "only an active key can be rotated; this one is revoked"}
    assert ApiKey.objects.filter(rotated_from=gone).count() == 0


def test_api_rotate_returns_the_new_key_once_and_the_old_keys_end(team: Team) -> None:
    client = team.client(team.admin)
    url = f"/portal/api-keys/{team.acme_key_id}/rotate"
    assert send(client, url, {}) == (400, {"grace_seconds": ["This field is required."]})
    assert send(client, url, {"grace_seconds": 604801}) == (
        400,
        {"grace_seconds": ["Ensure this value is less than or equal to 604800."]},
    )
    assert send(client, url, {"grace_seconds": "soon"}) == (400, {"grace_seconds": ["A valid integer is required."]})
    response = client.post(url, data=json.dumps({"grace_seconds": 0}), content_type="application/json")
    assert response.status_code == 201 and response["Cache-Control"] == "no-store"
    body = response.json()
    new = ApiKey.objects.get(pk=body["id"])
    assert new.key_hash == hash_key(body["key"]) and body["rotated_from"] == team.acme_key_id
    assert body["old_key"]["id"] == team.acme_key_id and body["old_key"]["status"] == "expired"
    listed = client.get("/portal/api-keys", HTTP_ACCEPT="application/json").json()
    assert body["key"] not in json.dumps(listed)
    assert send(client, url, {"grace_seconds": 0})[0] == 400  # expired now: nothing to rotate
    assert send(team.client(team.member), f"/portal/api-keys/{new.pk}/rotate", {"grace_seconds": 0})[0] == 403
    assert send(client, f"/portal/api-keys/{team.globex_key_id}/rotate", {"grace_seconds": 0})[0] == 404
    playground = apikey_get_or_create_playground(organization=team.acme)
    assert send(client, f"/portal/api-keys/{playground.pk}/rotate", {"grace_seconds": 0})[0] == 404
    assert ApiKey.objects.filter(rotated_from__in=[team.globex_key_id, playground.pk, new.pk]).count() == 0


def test_the_rotate_page_confirms_then_shows_the_new_key_once(team: Team) -> None:
    client = team.client(team.owner)
    url = f"/portal/api-keys/{team.acme_key_id}/rotate"
    confirm = client.get(url)
    assert confirm.status_code == 200 and "Rotate “acme backend”?" in confirm.content.decode()
    assert not ApiKey.objects.filter(rotated_from_id=team.acme_key_id).exists()  # a GET changes nothing
    done = client.post(url, {"grace_seconds": "86400"})
    # Post/redirect/get, as for a created key: the raw key reaches the keys page once, through the session's slot.
    assert done.status_code == 302 and done["Location"].startswith("/portal/api-keys")
    page = client.get(done["Location"], HTTP_ACCEPT="text/html").content.decode()
    raw = re.search(r'id="new-key-value"[^>]*>(ctr_[^<]+)</code>', page).group(1)
    new = ApiKey.objects.get(rotated_from_id=team.acme_key_id)
    assert new.key_hash == hash_key(raw)
    old = ApiKey.objects.get(pk=team.acme_key_id)
    assert f"The old key {old.masked} works until {old.expires_at:%Y-%m-%d %H:%M} UTC" in page
    assert raw not in client.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()
    assert client.post(url, {"grace_seconds": "12"}).status_code == 400  # not one of the choices
    assert team.client(team.member).post(url, {"grace_seconds": "0"}).status_code == 403


def test_v1_takes_the_old_key_during_the_grace_and_refuses_it_after(gateway: LiveGateway) -> None:
    ensure_site_and_plans()
    team = make_team()
    old = apikey_create(organization=team.acme, name="svc")
    wait_until_gateway_caught_up(gateway)
    assert post(gateway, CHAT, old.raw, body=good_body(CHAT)).status_code == 200
    grace = 6
    status, body = send(team.client(team.owner), f"/portal/api-keys/{old.api_key.pk}/rotate", {"grace_seconds": grace})
    assert status == 201
    ends = ApiKey.objects.get(pk=old.api_key.pk).expires_at
    wait_until_gateway_caught_up(gateway)
    assert post(gateway, CHAT, body["key"], body=good_body(CHAT)).status_code == 200
    assert post(gateway, CHAT, old.raw, body=good_body(CHAT)).status_code == 200  # within the grace
    assert timezone.now() < ends
    time.sleep(max(0.0, (ends - timezone.now()).total_seconds()) + 0.05)
    refused = post(gateway, CHAT, old.raw, body=good_body(CHAT))
    UNAUTHORIZED.check(CHAT, refused)
    assert post(gateway, CHAT, body["key"], body=good_body(CHAT)).status_code == 200
