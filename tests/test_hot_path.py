"""The request path runs no database statement in steady state; usage reaches the database in one batch.

In-process, through the door production uses: gateway.asgi.GatewayApplication (the /v1 fast path in front of
Django's ASGI handler), called by httpx's ASGI transport on one event loop (async_to_sync), with the router
simulator as upstream and gateway.dbstats counting statements.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from asgiref.sync import async_to_sync

from billing.services import plans_seed_defaults
from gateway import dbstats
from gateway.recorder import recorder
from gateway.state import state
from gateway.upstream import upstreams
from routerpools.config import parse_router_env
from routerpools.services import router_pools_sync
from simulator import SimulatorServer, simulated_tokens
from tests.support.asgi import gateway_client
from tests.support.live import ALIAS, issue_key, router_env
from usage.alerts import spend_alert_worker
from usage.models import RequestLog, UsageEvent

REQUESTS = 20
CHATML_HI = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture
def in_process_gateway(settings, sim: SimulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:  # noqa: ANN001
    """Pools in the database, background poller and usage writer idle, gateway singletons unbound."""
    dbstats.install()
    settings.PORTAL_CACHE_POLL_S = 3600.0
    settings.PORTAL_USAGE_FLUSH_S = 3600.0
    # Statements are counted process-wide: the spend-alert round a usage batch wakes (usage/alerts.py, its own thread,
    # tested in tests/test_spend_alerts.py) could land inside any measured window (CI: a flush counted 6, then 5).
    monkeypatch.setattr(spend_alert_worker, "notify", lambda organization_ids: None)
    state.stop()
    recorder.stop()
    assert recorder.depth == 0, "rows left in the in-process recorder by an earlier test"
    plans_seed_defaults()
    router_pools_sync(config=parse_router_env(router_env(sim.base_url)))
    yield
    state.stop()
    recorder.stop()


@dataclass
class Run:
    warmup_statements: int = -1
    warmup_flush_statements: int = -1
    steady_statements: int = -1
    flush_statements: int = -1
    flush_ok: bool = False
    depth_before_flush: int = -1
    request_ids: list[str] = field(default_factory=list)
    streamed_ids: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)


async def _chat(client: httpx.AsyncClient, raw_key: str, *, stream: bool) -> tuple[int, str, bytes]:
    body = {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9, "stream": stream}
    response = await client.post(
        "/v1/chat/completions",
        content=json.dumps(body),
        headers={"authorization": f"Bearer {raw_key}", "content-type": "application/json"},
    )
    return response.status_code, response.headers["x-request-id"], response.content


def _drive(raw_key: str) -> Run:
    run = Run()

    async def main() -> None:
        client = gateway_client()
        try:
            before = dbstats.queries_executed()
            status, _, _ = await _chat(client, raw_key, stream=False)
            assert status == 200
            run.warmup_statements = dbstats.queries_executed() - before

            before = dbstats.queries_executed()
            assert await recorder.flush()
            run.warmup_flush_statements = dbstats.queries_executed() - before
            before = dbstats.queries_executed()
            for i in range(REQUESTS):
                stream = i % 2 == 1
                status, request_id, content = await _chat(client, raw_key, stream=stream)
                assert status == 200, content
                run.request_ids.append(request_id)
                run.bodies.append(content)
                if stream:
                    run.streamed_ids.append(request_id)
            run.steady_statements = dbstats.queries_executed() - before

            run.depth_before_flush = recorder.depth
            before = dbstats.queries_executed()
            run.flush_ok = await recorder.flush()
            run.flush_statements = dbstats.queries_executed() - before
        finally:
            await client.aclose()
            state.stop()
            recorder.stop()
            await upstreams.aclose()
            await asyncio.sleep(0)  # let the cancelled background tasks finish on this loop

    async_to_sync(main)()
    # The loop's worker threads are gone; collect their database connections so they close now.
    gc.collect()
    return run


@pytest.mark.django_db(transaction=True)
def test_steady_state_requests_run_no_statement_and_usage_is_written_in_one_batch(in_process_gateway) -> None:  # noqa: ANN001
    key = issue_key(slug="hotpath")

    run = _drive(key.raw)

    # The counter is live on the threads that serve requests: the cold start and the writes are seen.
    assert run.warmup_statements > 0
    assert run.warmup_flush_statements > 0
    # Steady state: 20 requests, stream and non-stream, not one statement.
    assert run.steady_statements == 0
    # Everything buffered: 20 usage events and 20 request logs, then written by a batch whose cost does
    # not depend on how many requests it holds (the same statements as the one-request warm-up batch).
    assert run.depth_before_flush == 2 * REQUESTS
    assert run.flush_ok is True
    assert run.flush_statements == run.warmup_flush_statements
    # A small constant: the inserts of events, logs and ledger debits, the debit's price lookups, the key's
    # last_used_at. Not pinned to one number, as billing adds to the batch; it must not grow with the batch.
    assert 0 < run.flush_statements <= 8
    assert recorder.depth == 0

    assert len(set(run.request_ids)) == REQUESTS
    rows = {row.request_id: row for row in UsageEvent.objects.filter(request_id__in=run.request_ids)}
    assert len(rows) == REQUESTS
    assert UsageEvent.objects.count() == REQUESTS + 1  # and the warm-up
    assert RequestLog.objects.filter(request_id__in=run.request_ids).count() == REQUESTS
    assert RequestLog.objects.count() == REQUESTS + 1
    expected_tokens = len(simulated_tokens(CHATML_HI, 9)[0])
    for request_id, row in rows.items():
        assert row.status == "ok"
        assert row.organization_id == key.organization_id
        assert row.api_key_id == key.key_id
        assert row.alias == ALIAS
        assert row.streamed is (request_id in run.streamed_ids)
        assert row.completion_tokens == expected_tokens
        assert row.session_id in (101, 102)
    assert sum(1 for row in rows.values() if row.streamed) == REQUESTS // 2
    # Non-stream answers carry the router's text; streams end with [DONE].
    text = "".join(simulated_tokens(CHATML_HI, 9)[0])
    for i, body in enumerate(run.bodies):
        if i % 2 == 0:
            assert json.loads(body)["choices"][0]["message"]["content"] == text
        else:
            assert body.rstrip().endswith(b"data: [DONE]")


@pytest.mark.django_db(transaction=True)
def test_a_key_not_cached_while_the_database_is_away_is_a_503_in_the_callers_shape(
    in_process_gateway,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first request of a key this process has not cached needs its row; with the database away that is a 503
    `auth_unavailable` with a retry-after, in the route's own error shape, never a 500 (a CI flake once showed one)."""
    from django.db import OperationalError

    import gateway.state

    key = issue_key(slug="hotpath-db-away")

    def away(**kwargs: object) -> None:
        raise OperationalError("connection refused")

    answers: list[tuple[int, dict, str | None]] = []
    request_ids: list[str] = []

    async def main() -> None:
        client = gateway_client()
        try:
            await state.ensure_started()  # the routing table and plans load before the database goes
            monkeypatch.setattr(gateway.state, "apikey_record", away)
            for path, auth, body in (
                ("/v1/chat/completions", {"authorization": f"Bearer {key.raw}"}, {"model": ALIAS, "messages": []}),
                ("/v1/messages", {"x-api-key": key.raw}, {"model": ALIAS, "max_tokens": 5, "messages": []}),
            ):
                response = await client.post(path, content=json.dumps(body), headers={**auth, "content-type": "application/json"})
                answers.append((response.status_code, response.json(), response.headers.get("retry-after")))
                request_ids.append(response.headers["x-request-id"])
            assert await recorder.flush()  # the two refusals' request log rows: nothing left for the next test
        finally:
            await client.aclose()
            state.stop()
            recorder.stop()
            await upstreams.aclose()
            await asyncio.sleep(0)

    async_to_sync(main)()
    gc.collect()
    message = "API key verification is temporarily unavailable; try again shortly"
    assert answers == [
        (503, {"error": {"message": message, "type": "api_error", "param": None, "code": "auth_unavailable"}}, "5"),
        (
            503,
            {"type": "error", "error": {"type": "api_error", "message": message}, "request_id": request_ids[1]},
            "5",
        ),
    ]
