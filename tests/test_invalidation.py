"""Targeted cache invalidation (gateway/invalidation.py, gateway/state.py), on the real database and Redis.

A sign-up or a key creation touches only its own organization's scope: other organizations' cached keys stay, and
serving them runs no statement. A revoked key is refused by every process within a second over pub/sub, and within
the poll interval when pub/sub is away. Plan and routing changes reach every process.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from accounts.models import Organization
from accounts.services import user_get_or_create
from apikeys.models import ApiKey
from apikeys.services import apikey_create, apikey_get_or_create_playground, apikey_revoke
from billing.models import Plan
from billing.services import plans_seed_defaults
from gateway.invalidation import Scope, prune_changes, read_position, record_change
from gateway.models import CacheChange
from portal.services import personal_organization_create
from routerpools.models import ModelAlias, RouterPool
from tests.support.live import (
    ALIAS,
    IssuedKey,
    LiveGateway,
    issue_key,
    wait_until_gateway_caught_up,
)

OTHER_ALIAS = "inval-other"
needs_pubsub = pytest.mark.skipif(
    not os.environ.get("REDIS_URL"), reason="pub/sub needs REDIS_URL (without it the poll is the only path)"
)
POLL_FALLBACK_MS = 300
CHAT = {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def chat(gateway: LiveGateway, raw: str, *, model: str = ALIAS) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {raw}"},
        json={**CHAT, "model": model},
        timeout=10,
    )


def gauge(gateway: LiveGateway, name: str) -> int:
    text = httpx.get(f"{gateway.url}/metrics", headers=gateway.operator_headers, timeout=5).text
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    assert found, f"{name} missing from /metrics"
    return int(float(found.group(1)))


def v1_statements(gateway: LiveGateway) -> int:
    return gauge(gateway, "gateway_db_queries_v1")


def models(gateway: LiveGateway, raw: str) -> list[str]:
    response = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {raw}"}, timeout=10)
    assert response.status_code == 200, response.text
    return sorted(m["id"] for m in response.json()["data"])


def seconds_until(gateways: list[LiveGateway], check, *, since: float, limit: float = 10.0) -> float:  # noqa: ANN001
    """How long after `since` every gateway passes `check` (asked over and over); fails the test past `limit`."""
    pending = list(gateways)
    while True:
        pending = [gw for gw in pending if not check(gw)]
        elapsed = time.monotonic() - since
        if not pending:
            return elapsed
        if elapsed > limit:
            pytest.fail(f"{len(pending)} gateway(s) still not there {elapsed:.2f}s after the change:\n{pending[0].log()[-3000:]}")
        time.sleep(0.01)


def refused(raw: str):  # noqa: ANN201
    return lambda gw: chat(gw, raw).status_code == 401


# --- without live processes -------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_signup_and_its_keys_record_only_their_own_organization() -> None:
    plans_seed_defaults()
    before = read_position()
    user, _ = user_get_or_create(email=f"new-{uuid.uuid4().hex[:8]}@example.com")
    org = personal_organization_create(user=user)
    key = apikey_create(organization=org, name="first", actor_label="tests").api_key
    playground = apikey_get_or_create_playground(organization=org)

    changes = Counter(CacheChange.objects.filter(id__gt=before).values_list("scope", "ident"))
    assert set(changes) == {(Scope.ORG, str(org.pk)), (Scope.KEY, key.public_id), (Scope.KEY, playground.public_id)}
    # Nothing global: no other process reloads a table, no other organization's key is dropped.
    assert not CacheChange.objects.filter(id__gt=before, scope__in=[Scope.ROUTES, Scope.PLANS]).exists()


@pytest.mark.django_db(transaction=True)
def test_tables_record_their_scope() -> None:
    from billing.services import plans_seed_defaults

    plans_seed_defaults()  # the free plan exists, as in every database (its seed migration): a new alias prices it
    before = read_position()
    plan = Plan.objects.create(slug="inval", name="Inval")
    pool = RouterPool.objects.create(name="inval-pool")
    ModelAlias.objects.create(alias=OTHER_ALIAS, pool=pool)
    plan.allowed_aliases.set(ModelAlias.objects.filter(alias=OTHER_ALIAS))
    scopes = list(CacheChange.objects.filter(id__gt=before).order_by("id").values_list("scope", flat=True))
    # The plan; the pool; the alias, whose appearance prices it (billing.signals: the free plan's own 0/0 row and the
    # list price, two prices-are-plans changes) before its own routes change; the plan's alias list (m2m, twice).
    assert scopes == [Scope.PLANS, Scope.ROUTES, Scope.PLANS, Scope.PLANS, Scope.ROUTES, Scope.PLANS, Scope.PLANS]


@pytest.mark.django_db(transaction=True)
def test_pruning_keeps_the_newest_change() -> None:
    for n in range(5):
        record_change(Scope.KEY, f"k{n}")
    newest = read_position()
    CacheChange.objects.update(created=CacheChange.objects.get(pk=newest).created.replace(year=2000))
    assert prune_changes(60) == 4
    assert list(CacheChange.objects.values_list("id", flat=True)) == [newest]  # where caught-up processes stand


@pytest.mark.django_db(transaction=True)
def test_a_redis_failure_on_publish_is_logged_and_left_to_the_poll(settings, caplog) -> None:  # noqa: ANN001
    settings.REDIS_URL = "redis://:not-logged@127.0.0.1:18299/0"  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="gateway.invalidation"):
        started = time.monotonic()
        record_change(Scope.KEY, "gone")  # autocommit: published at once, and failing
        assert time.monotonic() - started < 2  # the writer waits a short timeout, not a sign-up's worth
    assert CacheChange.objects.filter(scope=Scope.KEY, ident="gone").exists()
    assert "not published (ConnectionError)" in caplog.text
    assert "not-logged" not in caplog.text


# --- live processes ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pubsub_pair(live_server_process: LiveGateway) -> Iterator[list[LiveGateway]]:
    """Two gateway processes whose poll is a minute apart: what they learn within a second came over pub/sub."""
    env = {**live_server_process.env, "PORTAL_CACHE_POLL_MS": "60000"}
    pair = [LiveGateway(env=dict(env)).start(), LiveGateway(env=dict(env)).start()]
    yield pair
    for gw in pair:
        gw.stop()


@pytest.fixture(scope="module")
def poll_pair(live_server_process: LiveGateway) -> Iterator[list[LiveGateway]]:
    """Two gateway processes listening on a channel nobody publishes to: the poll is all they have."""
    env = {
        **live_server_process.env,
        "PORTAL_CACHE_POLL_MS": str(POLL_FALLBACK_MS),
        "PORTAL_CACHE_CHANNEL": f"nobody-publishes-here-{uuid.uuid4().hex[:8]}",
    }
    pair = [LiveGateway(env=dict(env)).start(), LiveGateway(env=dict(env)).start()]
    yield pair
    for gw in pair:
        gw.stop()


def warm(pair: list[LiveGateway], key: IssuedKey) -> None:
    for gw in pair:
        wait_until_gateway_caught_up(gw)
        assert chat(gw, key.raw).status_code == 200


@pytest.mark.slow
@needs_pubsub
def test_a_burst_of_signups_runs_no_statement_on_another_organizations_request_path(
    gateway: LiveGateway, pubsub_pair: list[LiveGateway]
) -> None:
    key_a = issue_key(slug=f"a-{uuid.uuid4().hex[:8]}")
    warm(pubsub_pair, key_a)
    before = [v1_statements(gw) for gw in pubsub_pair]

    statuses: Counter[int] = Counter()
    done = threading.Event()

    def steady(gw: LiveGateway) -> None:
        while not done.is_set():
            statuses[chat(gw, key_a.raw).status_code] += 1

    load = [threading.Thread(target=steady, args=(gw,)) for gw in pubsub_pair]
    for thread in load:
        thread.start()
    try:
        new_keys = []
        for n in range(20):
            user, _ = user_get_or_create(email=f"burst-{n}-{uuid.uuid4().hex[:6]}@example.com")
            org = personal_organization_create(user=user)
            new_keys.append(apikey_create(organization=org, name="burst", actor_label="tests").raw)
            apikey_get_or_create_playground(organization=org)
        for gw in pubsub_pair:
            wait_until_gateway_caught_up(gw)  # every change of the burst applied by both
    finally:
        done.set()
        for thread in load:
            thread.join()

    assert statuses[200] > 0 and set(statuses) == {200}, statuses
    after = [v1_statements(gw) for gw in pubsub_pair]
    assert after == before, (
        f"org A's request path ran {[a - b for a, b in zip(after, before, strict=True)]} statements during the burst"
    )
    # The new organizations' keys work at once, on both processes (their lookups are theirs to pay).
    for gw in pubsub_pair:
        assert chat(gw, new_keys[-1]).status_code == 200


@pytest.mark.slow
@needs_pubsub
def test_a_revoked_key_is_refused_by_every_process_within_a_second(gateway: LiveGateway, pubsub_pair: list[LiveGateway]) -> None:
    key = issue_key(slug=f"rev-{uuid.uuid4().hex[:8]}")
    warm(pubsub_pair, key)
    assert [gauge(gw, "gateway_cache_pubsub_connected") for gw in pubsub_pair] == [1, 1]
    started = time.monotonic()
    apikey_revoke(api_key=ApiKey.objects.get(pk=key.key_id), actor_label="tests")
    assert seconds_until(pubsub_pair, refused(key.raw), since=started) < 1.0


@pytest.mark.slow
@needs_pubsub
def test_an_organization_suspended_is_seen_by_every_process_and_others_keep_their_keys(
    gateway: LiveGateway, pubsub_pair: list[LiveGateway]
) -> None:
    key, other = issue_key(slug=f"sus-{uuid.uuid4().hex[:8]}"), issue_key(slug=f"kept-{uuid.uuid4().hex[:8]}")
    warm(pubsub_pair, key)
    warm(pubsub_pair, other)
    before = [v1_statements(gw) for gw in pubsub_pair]
    org = Organization.objects.get(pk=key.organization_id)
    org.status = Organization.Status.SUSPENDED
    org.save()
    started = time.monotonic()
    assert seconds_until(pubsub_pair, lambda gw: chat(gw, key.raw).status_code == 403, since=started) < 1.0
    for gw in pubsub_pair:
        assert chat(gw, other.raw).status_code == 200
    # The suspended organization's key was read again (once per process); the other one never was.
    assert [v1_statements(gw) - b for gw, b in zip(pubsub_pair, before, strict=True)] == [1, 1]


@pytest.mark.slow
@needs_pubsub
def test_plan_and_routing_changes_reach_every_process(gateway: LiveGateway, pubsub_pair: list[LiveGateway]) -> None:
    key = issue_key(slug=f"tab-{uuid.uuid4().hex[:8]}")
    warm(pubsub_pair, key)
    plan = Plan.objects.get(slug="pro")
    assert all(models(gw, key.raw) == [ALIAS] for gw in pubsub_pair)

    # A new alias on the pool (the routing table) is listed by both processes.
    started = time.monotonic()
    alias = ModelAlias.objects.create(alias=OTHER_ALIAS, pool=RouterPool.objects.get(name=ALIAS))
    assert seconds_until(pubsub_pair, lambda gw: models(gw, key.raw) == sorted([ALIAS, OTHER_ALIAS]), since=started) < 1.0

    # The plan's allow-list narrowed to the new alias: the old one is refused by both.
    started = time.monotonic()
    plan.allowed_aliases.set([alias])
    assert seconds_until(pubsub_pair, lambda gw: models(gw, key.raw) == [OTHER_ALIAS], since=started) < 1.0
    for gw in pubsub_pair:
        assert chat(gw, key.raw).status_code == 403


@pytest.mark.slow
def test_without_pubsub_the_poll_refuses_a_revoked_key_within_its_interval(
    gateway: LiveGateway,
    poll_pair: list[LiveGateway],
    settings,  # noqa: ANN001
) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:18299/0" if settings.REDIS_URL else ""  # publishing fails too
    key = issue_key(slug=f"poll-{uuid.uuid4().hex[:8]}")
    warm(poll_pair, key)
    assert [gauge(gw, "gateway_cache_position") for gw in poll_pair] == [read_position()] * 2
    started = time.monotonic()
    apikey_revoke(api_key=ApiKey.objects.get(pk=key.key_id), actor_label="tests")
    elapsed = seconds_until(poll_pair, refused(key.raw), since=started)
    # One interval, plus a request's round trip on a loaded machine.
    assert elapsed < POLL_FALLBACK_MS / 1000 + 0.5, f"refused after {elapsed:.2f}s"

    # A plan change by the same path.
    plan = Plan.objects.get(slug="pro")
    other = issue_key(slug=f"poll2-{uuid.uuid4().hex[:8]}")
    warm(poll_pair, other)
    started = time.monotonic()
    plan.allowed_aliases.set([ModelAlias.objects.create(alias=OTHER_ALIAS, pool=RouterPool.objects.get(name=ALIAS))])
    assert (
        seconds_until(poll_pair, lambda gw: models(gw, other.raw) == [OTHER_ALIAS], since=started) < POLL_FALLBACK_MS / 1000 + 1.0
    )


@pytest.mark.slow
def test_a_log_emptied_under_the_gateways_reloads_everything(gateway: LiveGateway, poll_pair: list[LiveGateway]) -> None:
    key = issue_key(slug=f"empty-{uuid.uuid4().hex[:8]}")
    warm(poll_pair, key)
    # A restored database: the log emptied and the key revoked behind the services' back (no change recorded).
    ApiKey.objects.filter(pk=key.key_id).update(revoked_at=ApiKey.objects.get(pk=key.key_id).created_at)
    CacheChange.objects.all().delete()
    started = time.monotonic()
    assert seconds_until(poll_pair, refused(key.raw), since=started) < POLL_FALLBACK_MS / 1000 + 1.0
    for gw in poll_pair:
        wait_until_gateway_caught_up(gw)  # position 0: an empty log
