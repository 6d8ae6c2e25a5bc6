"""Graceful shutdown writes every buffered usage row; usage writes are idempotent on the request id."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Organization
from apikeys.models import ApiKey
from billing.services import plans_seed_defaults
from routerpools.config import parse_router_env
from routerpools.services import router_pools_sync
from simulator import SimulatorServer
from tests.support.live import ALIAS, IssuedKey, LiveGateway, issue_key, live_gateway_env, router_env, wait_for
from usage.models import RequestLog, UsageEvent
from usage.services import RequestLogRecord, UsageRecord, usage_record_batch

N = 6


@pytest.fixture
def routed(transactional_db, sim: SimulatorServer) -> IssuedKey:  # noqa: ANN001
    plans_seed_defaults()
    router_pools_sync(config=parse_router_env(router_env(sim.base_url)))
    return issue_key(slug="shutdown")


@pytest.fixture
def gateways(sim: SimulatorServer) -> Iterator[list[LiveGateway]]:
    """Gateways of this test's own; any still running at the end are stopped."""
    started: list[LiveGateway] = []
    yield started
    for gateway in started:
        gateway.stop()


def start_gateway(gateways: list[LiveGateway], sim: SimulatorServer, **env: str) -> LiveGateway:
    gateway = LiveGateway(env=live_gateway_env(sim.base_url, **env))
    gateways.append(gateway)
    return gateway.start()


def send_requests(gateway: LiveGateway, key: IssuedKey, count: int) -> list[str]:
    """count chat requests, alternately plain and streamed; returns their request ids."""
    ids: list[str] = []
    headers = {"authorization": f"Bearer {key.raw}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=20) as client:
        for i in range(count):
            body = {"model": ALIAS, "messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": 5}
            if i % 2:
                with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
                    assert response.status_code == 200
                    text = response.read().decode()
                    assert text.rstrip().endswith("data: [DONE]")
            else:
                response = client.post("/v1/chat/completions", json=body)
                assert response.status_code == 200, response.text
            ids.append(response.headers["x-request-id"])
    assert len(set(ids)) == count
    return ids


def queue_depth(gateway: LiveGateway) -> int:
    return httpx.get(f"{gateway.url}/health", headers=gateway.operator_headers, timeout=5).json()["usage_queue_depth"]


def test_sigterm_writes_every_buffered_row(routed: IssuedKey, sim: SimulatorServer, gateways: list[LiveGateway]) -> None:
    gateway = start_gateway(gateways, sim, PORTAL_USAGE_FLUSH_MS="60000")
    ids = send_requests(gateway, routed, N)
    # Buffered, not written: N usage events and N request logs wait in the process.
    wait_for(lambda: queue_depth(gateway) == 2 * N)
    assert UsageEvent.objects.count() == 0
    assert RequestLog.objects.count() == 0

    assert gateway.stop() == 0
    assert sorted(UsageEvent.objects.values_list("request_id", flat=True)) == sorted(ids)
    assert sorted(RequestLog.objects.values_list("request_id", flat=True)) == sorted(ids)
    assert set(UsageEvent.objects.values_list("status", "organization_id")) == {("ok", routed.organization_id)}
    assert UsageEvent.objects.filter(streamed=True).count() == N // 2
    assert "unwritten" not in gateway.log()


def test_restarted_gateways_double_nothing(routed: IssuedKey, sim: SimulatorServer, gateways: list[LiveGateway]) -> None:
    first = start_gateway(gateways, sim, PORTAL_USAGE_FLUSH_MS="50")
    first_ids = send_requests(first, routed, N)
    wait_for(lambda: UsageEvent.objects.count() == N and RequestLog.objects.count() == N)
    assert first.stop() == 0  # drains nothing more: everything was written already

    second = start_gateway(gateways, sim, PORTAL_USAGE_FLUSH_MS="60000")
    second_ids = send_requests(second, routed, N)
    assert second.stop() == 0

    all_ids = sorted(first_ids + second_ids)
    assert len(set(all_ids)) == 2 * N
    assert sorted(UsageEvent.objects.values_list("request_id", flat=True)) == all_ids
    assert sorted(RequestLog.objects.values_list("request_id", flat=True)) == all_ids


# --- usage_record_batch -----------------------------------------------------------------------------


def usage(request_id: str, key: IssuedKey | None, **fields: object) -> UsageRecord:
    values: dict = {
        "request_id": request_id,
        "organization_id": key.organization_id if key else None,
        "api_key_id": key.key_id if key else None,
        "alias": ALIAS,
        "route": "openai.chat",
        "status": "ok",
        "http_status": 200,
        "created_at": timezone.now(),
        "completion_tokens": 7,
        "total_tokens": 10,
        "prompt_tokens": 3,
    }
    values.update(fields)
    return UsageRecord(**values)


def log(request_id: str, key: IssuedKey | None, **fields: object) -> RequestLogRecord:
    values: dict = {
        "request_id": request_id,
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "created_at": timezone.now(),
        "organization_id": key.organization_id if key else None,
        "key_id": key.key_id if key else None,
    }
    values.update(fields)
    return RequestLogRecord(**values)


@pytest.mark.django_db
def test_request_id_is_unique() -> None:
    assert UsageEvent._meta.get_field("request_id").unique is True
    assert RequestLog._meta.get_field("request_id").unique is True
    UsageEvent.objects.create(request_id="req_same", alias=ALIAS, route="openai.chat", status="ok", http_status=200)
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageEvent.objects.create(request_id="req_same", alias=ALIAS, route="openai.chat", status="error", http_status=502)
    RequestLog.objects.create(request_id="req_same", method="POST", path="/v1/x", status=200)
    with pytest.raises(IntegrityError), transaction.atomic():
        RequestLog.objects.create(request_id="req_same", method="POST", path="/v1/x", status=200)


@pytest.mark.django_db
def test_the_same_batch_twice_leaves_one_row_each() -> None:
    plans_seed_defaults()
    key = issue_key(slug="acme")
    batch_usage = [usage(f"req_{i}", key) for i in range(3)]
    batch_logs = [log(f"req_{i}", key) for i in range(3)]
    usage_record_batch(usage=batch_usage, logs=batch_logs)
    usage_record_batch(usage=batch_usage, logs=batch_logs)
    assert sorted(UsageEvent.objects.values_list("request_id", flat=True)) == ["req_0", "req_1", "req_2"]
    assert sorted(RequestLog.objects.values_list("request_id", flat=True)) == ["req_0", "req_1", "req_2"]
    # An overlapping batch adds only what is new, and the first write of a row stands.
    last_log = log("req_3", key)
    usage_record_batch(usage=[usage("req_2", key, completion_tokens=99), usage("req_3", key)], logs=[last_log])
    assert UsageEvent.objects.count() == 4
    assert RequestLog.objects.count() == 4
    assert UsageEvent.objects.get(request_id="req_2").completion_tokens == 7
    assert ApiKey.objects.get(pk=key.key_id).last_used_at == last_log.created_at


@pytest.mark.django_db(transaction=True)
def test_a_row_of_a_deleted_organization_does_not_block_the_batch() -> None:
    plans_seed_defaults()
    kept = issue_key(slug="kept")
    gone = issue_key(slug="gone")
    now = timezone.now()
    batch_usage = [usage("req_k1", kept), usage("req_g1", gone), usage("req_k2", kept), usage("req_anon", None, status="error")]
    batch_logs = [
        log("req_k1", kept, created_at=now),
        log("req_g1", gone),
        log("req_k2", kept, created_at=now + timedelta(seconds=1)),
    ]
    Organization.objects.filter(pk=gone.organization_id).delete()  # its keys go with it

    usage_record_batch(usage=batch_usage, logs=batch_logs)

    rows = {r.request_id: (r.organization_id, r.api_key_id) for r in UsageEvent.objects.all()}
    assert rows == {
        "req_k1": (kept.organization_id, kept.key_id),
        "req_k2": (kept.organization_id, kept.key_id),
        "req_g1": (None, None),  # detached: the row stays, the organization is gone
        "req_anon": (None, None),
    }
    logs = dict(RequestLog.objects.values_list("request_id", "organization_id"))
    assert logs == {"req_k1": kept.organization_id, "req_k2": kept.organization_id, "req_g1": None}
    # The surviving key's use is still recorded.
    assert ApiKey.objects.get(pk=kept.key_id).last_used_at == now + timedelta(seconds=1)
    # And written again, nothing doubles.
    usage_record_batch(usage=batch_usage, logs=batch_logs)
    assert UsageEvent.objects.count() == 4
    assert RequestLog.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_a_row_of_a_deleted_key_keeps_its_organization() -> None:
    plans_seed_defaults()
    key = issue_key(slug="acme")
    other = issue_key(slug="acme", name="other")
    ApiKey.objects.filter(pk=key.key_id).delete()

    usage_record_batch(usage=[usage("req_1", key), usage("req_2", other)], logs=[log("req_1", key), log("req_2", other)])

    rows = {r.request_id: (r.organization_id, r.api_key_id) for r in UsageEvent.objects.all()}
    assert rows == {"req_1": (key.organization_id, None), "req_2": (key.organization_id, other.key_id)}
    assert dict(RequestLog.objects.values_list("request_id", "organization_id")) == {
        "req_1": key.organization_id,
        "req_2": key.organization_id,
    }
