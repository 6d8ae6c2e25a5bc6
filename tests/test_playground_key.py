"""The playground's key is a kind of its own: made as one, converted from the old marking, never a customer's key."""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps
from django.utils import timezone

from apikeys.models import ApiKey, ApiKeyEvent
from apikeys.services import apikey_create, apikey_get_or_create_playground
from tests.support.portal import Team, ensure_site_and_plans, make_team, portal_settings  # noqa: F401

pytestmark = pytest.mark.django_db

MIGRATION = importlib.import_module("apikeys.migrations.0004_playground_kind_and_key_events")


@pytest.fixture
def team(portal_settings) -> Team:  # noqa: ANN001, F811
    ensure_site_and_plans()
    return make_team()


def test_the_playground_key_is_made_of_kind_playground_and_reused(team: Team) -> None:
    key = apikey_get_or_create_playground(organization=team.acme)
    assert key.kind == ApiKey.Kind.PLAYGROUND and key.name == "playground" and key.created_by is None
    assert apikey_get_or_create_playground(organization=team.acme).pk == key.pk
    # A customer's key that happens to be named "playground" is neither taken for it nor hidden.
    mine = apikey_create(organization=team.globex, name="playground", created_by=team.outsider).api_key
    theirs = apikey_get_or_create_playground(organization=team.globex)
    assert theirs.pk != mine.pk and ApiKey.objects.get(pk=mine.pk).kind == ApiKey.Kind.STANDARD


def test_the_migration_converts_the_keys_the_service_used_to_mark_and_nothing_else(team: Team) -> None:
    def old_style(name: str, label: str, *, created_by=None, revoked: bool = False) -> ApiKey:  # noqa: ANN001
        key = apikey_create(organization=team.acme, name=name, created_by=created_by, actor_label=label).api_key
        if revoked:
            ApiKey.objects.filter(pk=key.pk).update(revoked_at=key.created_at)
        return key

    label = MIGRATION.PLAYGROUND_ACTOR_LABEL
    live = old_style("playground", label)
    revoked = old_style("playground", label, revoked=True)
    customers = [
        old_style("playground", "portal", created_by=team.owner),  # a customer's key named playground
        old_style("playground", "manage.py issue_key"),  # no creator, but not made by the playground
        old_style("backend", label),
    ]
    MIGRATION.playground_keys_get_their_kind(apps, None)
    kinds = dict(ApiKey.objects.values_list("pk", "kind"))
    assert kinds[live.pk] == kinds[revoked.pk] == "playground"
    assert [kinds[k.pk] for k in customers] == ["standard"] * 3
    assert kinds[team.acme_key_id] == "standard"
    # And the converted key is the one the playground goes on using.
    assert apikey_get_or_create_playground(organization=team.acme).pk == live.pk
    MIGRATION.playground_keys_back_to_standard(apps, None)
    assert ApiKey.objects.filter(kind="playground").count() == 0


def test_no_customer_door_lists_shows_or_revokes_it(team: Team) -> None:
    key = apikey_get_or_create_playground(organization=team.acme)
    owner = team.client(team.owner)
    listed = owner.get("/portal/api-keys", HTTP_ACCEPT="application/json")
    assert [k["id"] for k in listed.json()] == [team.acme_key_id] and listed["X-Total-Count"] == "1"
    page = owner.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()
    assert key.masked not in page and f'data-key-id="{key.pk}"' not in page
    assert owner.get(f"/portal/api-keys/{key.pk}", HTTP_ACCEPT="application/json").status_code == 404
    assert owner.delete(f"/portal/api-keys/{key.pk}", HTTP_ACCEPT="application/json").status_code == 404
    assert owner.get(f"/portal/api-keys/{key.pk}/revoke").status_code == 404
    assert owner.post(f"/portal/api-keys/{key.pk}/revoke").status_code == 404
    assert not ApiKeyEvent.objects.filter(api_key=key, action="revoke").exists()
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None


def test_usage_by_key_labels_the_playground_row(team: Team) -> None:
    from usage.models import UsageEvent
    from usage.selectors import DateRange, usage_summary

    key = apikey_get_or_create_playground(organization=team.acme)
    for i, api_key_id in enumerate([key.pk, key.pk, team.acme_key_id]):
        UsageEvent.objects.create(
            request_id=f"req_pg{i}",
            organization=team.acme,
            api_key_id=api_key_id,
            alias="oss-20b",
            route="chat",
            status="ok",
            http_status=200,
            prompt_tokens=1,
            completion_tokens=2,
            total_tokens=3,
        )
    today = timezone.now().date()
    rows = usage_summary(organization_id=team.acme.pk, span=DateRange(today, today), group_by="key").rows
    backend = ApiKey.objects.get(pk=team.acme_key_id)
    assert [(r.label, r.key_id, r.key_masked, r.totals.requests) for r in rows] == [
        ("Playground", key.pk, "", 2),
        ("acme backend", backend.pk, backend.masked, 1),
    ]
