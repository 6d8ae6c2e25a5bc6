"""Entitlements through live gateways: which models a plan and its overrides allow, on every surface."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from django.utils import timezone

from accounts.models import Organization
from apikeys.models import ApiKey
from billing.models import ModelAccessOverride, Plan
from routerpools.models import ModelAlias, RouterPool
from tests.support.enforcement import (
    BOTH_ALIASES,
    CHAT,
    ENVELOPE,
    ERRORS,
    HTTP,
    OTHER_ALIAS,
    SURFACES,
    error_details,
    error_kind,
    expect_error,
    headers_for,
    make_plan,
    minute_room,
    models,
    new_org_key,
    send,
)
from tests.support.live import (
    ALIAS,
    LiveGateway,
    wait_for,
    wait_until_gateway_caught_up,
)

# --- entitlements -------------------------------------------------------------------------------------


def test_plan_allow_list_and_organization_overrides_decide_every_surface_and_the_model_list(
    gateway: LiveGateway, other_alias: ModelAlias
) -> None:
    narrow = make_plan(aliases=[ALIAS])
    key = new_org_key(narrow, gateway)
    org = Organization.objects.get(pk=key.organization_id)

    def outcome() -> dict[tuple[str, str], int]:
        return {
            (path, alias): send(gateway, key, path, model=alias).status_code
            for path in SURFACES
            for alias in (ALIAS, OTHER_ALIAS)
        }

    # The plan lists oss-20b only: 3 admitted, 3 refused with model_not_allowed in each route's shape.
    for path in SURFACES:
        assert send(gateway, key, path).status_code == 200
        refused = send(gateway, key, path, model=OTHER_ALIAS)
        message = expect_error(refused, path, "model_not_allowed")
        assert OTHER_ALIAS in message
        if path == CHAT:
            assert refused.json()["error"]["param"] == "model"
    assert models(gateway, key) == [ALIAS]
    retrieve = HTTP.get(f"{gateway.url}/v1/models/{OTHER_ALIAS}", headers=headers_for(key, CHAT), timeout=10)
    assert retrieve.status_code == 404
    assert HTTP.get(f"{gateway.url}/v1/models/{ALIAS}", headers=headers_for(key, CHAT), timeout=10).json()["id"] == ALIAS

    # A grant for this organization adds the alias its plan lacks.
    grant = ModelAccessOverride.objects.create(organization=org, alias=other_alias, allowed=True)
    wait_until_gateway_caught_up(gateway)
    assert outcome() == {(p, a): 200 for p in SURFACES for a in (ALIAS, OTHER_ALIAS)}
    assert models(gateway, key) == BOTH_ALIASES

    # A withhold takes away an alias the plan has; the grant stays.
    ModelAccessOverride.objects.create(organization=org, alias=ModelAlias.objects.get(alias=ALIAS), allowed=False)
    wait_until_gateway_caught_up(gateway)
    result = outcome()
    assert result == {(p, a): (403 if a == ALIAS else 200) for p in SURFACES for a in (ALIAS, OTHER_ALIAS)}
    assert models(gateway, key) == [OTHER_ALIAS]

    # An override belongs to its organization only: another organization on the same plan keeps the plan's list.
    neighbour = new_org_key(narrow, gateway)
    assert models(gateway, neighbour) == [ALIAS]
    assert send(gateway, neighbour, CHAT, model=OTHER_ALIAS).status_code == 403

    # Turning the grant into a withhold (an admin edit, via save()) removes the last alias.
    grant.allowed = False
    grant.save()
    wait_until_gateway_caught_up(gateway)
    assert set(outcome().values()) == {403}
    assert models(gateway, key) == []


def test_a_plan_with_an_empty_list_allows_every_alias_minus_withheld_ones(gateway: LiveGateway, other_alias: ModelAlias) -> None:
    open_plan = make_plan()
    key = new_org_key(open_plan, gateway)
    assert models(gateway, key) == BOTH_ALIASES
    assert [send(gateway, key, p, model=a).status_code for p in SURFACES for a in (ALIAS, OTHER_ALIAS)] == [200] * 6

    ModelAccessOverride.objects.create(organization_id=key.organization_id, alias=other_alias, allowed=False)
    wait_until_gateway_caught_up(gateway)
    assert models(gateway, key) == [ALIAS]
    for path in SURFACES:
        assert send(gateway, key, path).status_code == 200
        expect_error(send(gateway, key, path, model=OTHER_ALIAS), path, "model_not_allowed")


def test_a_suspended_organization_gets_403_and_an_expired_key_401_on_every_surface(gateway: LiveGateway) -> None:
    key = new_org_key("pro", gateway)
    expired = new_org_key("pro", gateway)
    for path in SURFACES:
        assert send(gateway, key, path).status_code == 200
        assert send(gateway, expired, path).status_code == 200

    org = Organization.objects.get(pk=key.organization_id)
    org.status = Organization.Status.SUSPENDED
    org.save()
    row = ApiKey.objects.get(pk=expired.key_id)
    row.expires_at = timezone.now() - timedelta(seconds=1)
    row.save()
    wait_until_gateway_caught_up(gateway)

    for path in SURFACES:
        message = expect_error(send(gateway, key, path), path, "suspended")
        assert "suspended" in message
        message = expect_error(send(gateway, expired, path), path, "invalid_key")
        assert message == "invalid or revoked API key"
        assert expired.raw not in send(gateway, expired, path).text
    suspended_models = HTTP.get(f"{gateway.url}/v1/models", headers=headers_for(key, CHAT), timeout=10)
    assert error_kind(suspended_models, CHAT) == ERRORS["suspended"][CHAT]


def _flip_within_a_second(gateways: tuple[LiveGateway, ...], check: Any) -> float:
    """Seconds until `check(gw)` holds on every gateway; fails the test after one second."""
    started = time.monotonic()
    pending = list(gateways)

    def all_done() -> bool:
        pending[:] = [gw for gw in pending if not check(gw)]
        return not pending

    wait_for(all_done, timeout=1.0, interval=0.01)
    return time.monotonic() - started


def test_staff_changes_are_obeyed_within_a_second_in_every_process(
    both: tuple[LiveGateway, LiveGateway], other_alias: ModelAlias
) -> None:
    key = new_org_key("pro", *both)
    for gw in both:
        assert [send(gw, key, p).status_code for p in SURFACES] == [200, 200, 200]
        assert models(gw, key) == BOTH_ALIASES

    def refused_as(kind: str, model: str = ALIAS) -> Any:
        def check(gw: LiveGateway) -> bool:
            for path in SURFACES:
                response = send(gw, key, path, model=model)
                if response.status_code != ERRORS[kind][path][0]:
                    return False
                assert error_kind(response, path) == ERRORS[kind][path], response.text
            return True

        return check

    def served(model: str = ALIAS) -> Any:
        return lambda gw: all(send(gw, key, p, model=model).status_code == 200 for p in SURFACES)

    # Suspending the organization (the admin saves the row).
    org = Organization.objects.get(pk=key.organization_id)
    org.status = Organization.Status.SUSPENDED
    org.save()
    _flip_within_a_second(both, refused_as("suspended"))
    org.status = Organization.Status.ACTIVE
    org.save()
    _flip_within_a_second(both, served())

    # Disabling an alias: gone from routing (404) and from the model list; the other alias still serves.
    alias = ModelAlias.objects.get(alias=ALIAS)
    alias.enabled = False
    alias.save()
    _flip_within_a_second(both, refused_as("model_not_found"))
    for gw in both:
        assert models(gw, key) == [OTHER_ALIAS]
        assert send(gw, key, CHAT, model=OTHER_ALIAS).status_code == 200
    alias.enabled = True
    alias.save()
    _flip_within_a_second(both, served())

    # Draining the pool: no new requests on either alias it serves (503, Anthropic's 529 overloaded).
    pool = RouterPool.objects.get(name=ALIAS)
    pool.draining = True
    pool.save()
    _flip_within_a_second(both, refused_as("draining"))
    _flip_within_a_second(both, refused_as("draining", model=OTHER_ALIAS))
    pool.draining = False
    pool.save()
    _flip_within_a_second(both, served())

    # Narrowing the organization's plan (a many-to-many edit) and withholding by override.
    plan = Plan.objects.get(slug="pro")
    plan.allowed_aliases.add(alias)
    _flip_within_a_second(both, refused_as("model_not_allowed", model=OTHER_ALIAS))
    for gw in both:
        assert models(gw, key) == [ALIAS]
    plan.allowed_aliases.clear()
    _flip_within_a_second(both, served(OTHER_ALIAS))
    ModelAccessOverride.objects.create(organization=org, alias=alias, allowed=False)
    _flip_within_a_second(both, refused_as("model_not_allowed"))

    # Expiring the key.
    row = ApiKey.objects.get(pk=key.key_id)
    row.expires_at = timezone.now() - timedelta(seconds=1)
    row.save()
    _flip_within_a_second(both, refused_as("invalid_key", model=OTHER_ALIAS))


def test_staff_changing_a_plans_limits_or_an_organizations_plan_is_obeyed_within_a_second_in_every_process(
    both: tuple[LiveGateway, LiveGateway],
) -> None:
    minute_room()
    roomy = make_plan(rpm=100)
    key = new_org_key(roomy, *both)
    first, second = both
    assert [send(gw, key).status_code for gw in (first, second, first)] == [200, 200, 200]

    # Lowering the plan's rpm to what was already used: both processes refuse at once, naming the new limit.
    roomy.requests_per_minute = 3
    roomy.save()

    def refuses_at_three(gw: LiveGateway) -> bool:
        response = send(gw, key, ENVELOPE)
        return response.status_code == 429 and error_details(response)["limit_value"] == 3

    _flip_within_a_second(both, refuses_at_three)

    # Moving the organization to another plan (the admin saves the organization): its limits apply.
    weekly = make_plan(weekly=5)
    org = Organization.objects.get(pk=key.organization_id)
    org.plan = weekly
    org.save()

    def on_weekly_plan(gw: LiveGateway) -> bool:
        response = send(gw, key)
        return response.status_code == 200 and response.headers["x-ratelimit-limit-requests"] == "5"

    _flip_within_a_second(both, on_weekly_plan)
