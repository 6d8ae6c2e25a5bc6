"""Attacks on limits and bills, thrown at a live daphne with PostgreSQL and Redis: a client who tries to pay less.

A prompt larger than the whole token budget, a stream cancelled just before its usage chunk, a stream that fails
after delivering tokens, token counting outside every limit, anonymous floods that write rows, and a database
outage that would hold rows in memory without bound.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from billing.models import LedgerEntry, ModelPrice, Plan
from gateway.translate.common import estimate_tokens
from routerpools.models import ModelAlias, RouterEndpoint, RouterPool, RouterSession
from simulator import SimulatorServer
from tests.support.live import ALIAS, IssuedKey, LiveGateway, issue_key, wait_for, wait_until_gateway_caught_up
from tests.support.relay import CuttableRelay
from tests.support.scripted_router import DONE, ScriptedRouter, Step, chunk
from usage.models import RequestLog, UsageEvent

pytest_plugins = ["tests.support.fixtures"]

CHAT, MESSAGES, ENVELOPE, COUNT = "/v1/chat/completions", "/v1/messages", "/v1/completions", "/v1/messages/count_tokens"
HTTP = httpx.Client(timeout=30)
CHATML_HI = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def make_plan(*, rpm: int = 1000, tpm: int | None = None, concurrent: int | None = None, window_requests: int | None = None,
              weekly: int | None = None, aliases: list[str] | None = None) -> Plan:  # fmt: skip
    slug = f"h{uuid.uuid4().hex[:12]}"
    plan = Plan.objects.create(
        slug=slug, name=f"hostile {slug}", requests_per_minute=rpm, tokens_per_minute=tpm, concurrent_requests=concurrent,
        window_requests=window_requests, window_seconds=3 * 3600, weekly_requests=weekly,
    )  # fmt: skip
    if aliases is not None:
        plan.allowed_aliases.set(ModelAlias.objects.filter(alias__in=aliases))
    return plan


def org_key(plan: Plan, gateway: LiveGateway) -> IssuedKey:
    key = issue_key(slug=f"h-{uuid.uuid4().hex[:10]}", plan=plan.slug)
    wait_until_gateway_caught_up(gateway)
    return key


def headers_for(key: IssuedKey, path: str) -> dict[str, str]:
    return {"x-api-key": key.raw} if path in (MESSAGES, COUNT) else {"authorization": f"Bearer {key.raw}"}


def body_for(path: str, *, text: str = "hi", max_tokens: int = 16, model: str = ALIAS, stream: bool = False) -> dict[str, Any]:
    if path == ENVELOPE:
        return {"model": model, "prompt": text, "max_tokens": max_tokens, "stream": stream}
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if path != COUNT:
        body.update(max_tokens=max_tokens, stream=stream)
    return body


def post(gateway: LiveGateway, key: IssuedKey, path: str, **kwargs: Any) -> httpx.Response:
    return HTTP.post(f"{gateway.url}{path}", json=body_for(path, **kwargs), headers=headers_for(key, path))


def refusal(response: httpx.Response, path: str) -> tuple[int, str, str]:
    """(status, the error's type or code in the route's own shape, its message)."""
    body = response.json()
    if path in (MESSAGES, COUNT):
        assert body["type"] == "error" and body["request_id"] == response.headers["request-id"], body
        return response.status_code, body["error"]["type"], body["error"]["message"]
    if path == ENVELOPE:
        assert body["status"] == "failed" and body["data"] is None, body
        return response.status_code, body["error"]["code"], body["error"]["message"]
    return response.status_code, body["error"]["type"], body["error"]["message"]


def wait_for_minute_room(need: float = 10.0) -> None:
    """Sleep into the next minute if fewer than `need` seconds are left: per-minute counts must not reset mid-test."""
    left = 60 - time.time() % 60
    if left < need:
        time.sleep(left + 0.05)


RATE_LIMITED = {CHAT: "rate_limit_error", MESSAGES: "rate_limit_error", ENVELOPE: "rate_limited", COUNT: "rate_limit_error"}


# --- tokens per minute ----------------------------------------------------------------------------------------------


def test_a_prompt_over_the_whole_token_budget_is_refused_not_run_once_a_minute(
    gateway: LiveGateway, sim: SimulatorServer
) -> None:
    tpm = 300
    key = org_key(make_plan(tpm=tpm), gateway)
    huge = "tokens " * 400  # an estimate far above 300, with max_tokens as small as it gets
    assert estimate_tokens(huge) > tpm
    for path in (CHAT, MESSAGES, ENVELOPE):
        response = post(gateway, key, path, text=huge, max_tokens=1)
        status, kind, message = refusal(response, path)
        assert (status, kind) == (429, RATE_LIMITED[path]), response.text
        assert f"tokens per minute limit of {tpm}" in message and "shorten the prompt" in message, message
        assert int(response.headers["retry-after"]) >= 1
    assert sim.stats()["requests_total"] == 0  # refused before any router saw it

    # Only max_tokens is capped at the budget: a short prompt asking for a long answer still runs.
    ok = post(gateway, key, CHAT, text="hi", max_tokens=4000)
    assert ok.status_code == 200, ok.text
    assert int(ok.headers["x-ratelimit-remaining-tokens"]) == 0  # the whole minute reserved for it, no more


# --- counting tokens --------------------------------------------------------------------------------------------------


@pytest.fixture
def other_alias(gateway: LiveGateway) -> ModelAlias:
    return ModelAlias.objects.create(alias="premium-only", pool=RouterPool.objects.get(name=ALIAS))


def test_count_tokens_refuses_a_model_the_plan_does_not_include_as_messages_does(
    gateway: LiveGateway, other_alias: ModelAlias
) -> None:
    key = org_key(make_plan(aliases=[other_alias.alias]), gateway)
    for path in (COUNT, MESSAGES):
        response = post(gateway, key, path)
        status, kind, message = refusal(response, path)
        assert (status, kind) == (403, "permission_error"), response.text
        assert message == f"your plan does not include the model '{ALIAS}'"
    allowed = post(gateway, key, COUNT, model=other_alias.alias)
    assert allowed.status_code == 200 and allowed.json()["input_tokens"] >= 1


def test_count_tokens_is_rate_limited_like_a_request_but_spends_no_allowance(gateway: LiveGateway, sim: SimulatorServer) -> None:
    wait_for_minute_room()
    key = org_key(make_plan(rpm=3, weekly=1), gateway)
    counted = [post(gateway, key, COUNT) for _ in range(3)]
    assert [r.status_code for r in counted] == [200, 200, 200]
    # The tightest of the minute (2, 1, 0 left) and the week (1 left, untouched by counting).
    assert [int(r.headers["anthropic-ratelimit-requests-remaining"]) for r in counted] == [1, 1, 0]
    over = post(gateway, key, COUNT)
    status, kind, message = refusal(over, COUNT)
    assert (status, kind) == (429, "rate_limit_error") and "requests per minute limit of 3" in message, message
    assert int(over.headers["retry-after"]) >= 1
    # The minute's requests are shared with completions: counting used them up.
    assert refusal(post(gateway, key, MESSAGES), MESSAGES)[:2] == (429, "rate_limit_error")
    assert sim.stats()["requests_total"] == 0

    # The weekly allowance of one completion is still whole: counting did not spend it.
    unlimited_rpm = org_key(make_plan(rpm=1000, weekly=1), gateway)
    assert [post(gateway, unlimited_rpm, COUNT).status_code for _ in range(5)] == [200] * 5
    assert post(gateway, unlimited_rpm, MESSAGES).status_code == 200
    assert refusal(post(gateway, unlimited_rpm, MESSAGES), MESSAGES)[:2] == (429, "rate_limit_error")  # now it is spent


def test_count_tokens_takes_a_concurrency_slot_and_gives_it_back_at_once(gateway: LiveGateway, sim: SimulatorServer) -> None:
    key = org_key(make_plan(concurrent=1), gateway)
    assert [post(gateway, key, COUNT).status_code for _ in range(3)] == [200, 200, 200]  # released every time
    sim.configure(token_delay_ms=300)  # a stream that holds the only slot for seconds after its headers came
    with HTTP.stream("POST", f"{gateway.url}{CHAT}", json=body_for(CHAT, stream=True), headers=headers_for(key, CHAT)) as held:
        assert held.status_code == 200
        busy = post(gateway, key, COUNT)
        status, kind, message = refusal(busy, COUNT)
        assert (status, kind) == (429, "rate_limit_error") and "concurrent requests limit of 1" in message, message
    sim.configure(token_delay_ms=0)
    wait_for(lambda: sim.stats()["streams_open"] == 0)  # the gateway closed the upstream: the slot is free
    assert post(gateway, key, COUNT).status_code == 200


# --- streams that end early: cancelled by the client, failed upstream -------------------------------------------------

SCRIPTED = "scripted-cjk"
CJK = "人工智能正在改变世界"  # ten characters, at least a token each to any tokenizer


@pytest.fixture
def scripted(gateway: LiveGateway) -> Iterator[ScriptedRouter]:
    """An alias on a router that streams what the test scripts, priced at 1 micro-unit an input token, 2 an output."""
    router = ScriptedRouter().start()
    pool = RouterPool.objects.create(name="scripted-pool")
    RouterEndpoint.objects.create(pool=pool, base_url=router.base_url)
    RouterSession.objects.create(pool=pool, session_id=1)
    ModelAlias.objects.create(alias=SCRIPTED, pool=pool, upstream_timeout_s=3)
    # Saved one by one, not with a queryset update(): a save logs the cache change the gateway reloads its prices on.
    # An update() logs none, so a gateway that had reloaded on the alias's own changes (its default prices) before the
    # update kept the defaults: a flake once (debit -60, the defaults' price of 500 + 25 tokens, for -550).
    for price in ModelPrice.objects.filter(alias=SCRIPTED):
        price.input_micros_per_million, price.output_micros_per_million = 1_000_000, 2_000_000
        price.save()
    wait_until_gateway_caught_up(gateway)
    yield router
    router.stop()


def text_steps(text: str, *, every_s: float = 0.02, usage_per_char: tuple[int, int] | None = None) -> list[Step]:
    """One chunk a character; with `usage_per_char` = (prompt, tokens a character) each chunk carries the running count."""
    return [
        Step(every_s, chunk(ch, usage=None if usage_per_char is None else (usage_per_char[0], usage_per_char[1] * (i + 1))))
        for i, ch in enumerate(text)
    ]


def read_deltas_then_hang_up(gateway: LiveGateway, key: IssuedKey, *, deltas: int) -> tuple[str, str]:
    """Stream a chat completion of the scripted alias, read `deltas` text deltas, hang up; (request id, text read)."""
    body = {"model": SCRIPTED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64, "stream": True}
    text = ""
    with httpx.stream("POST", f"{gateway.url}{CHAT}", json=body, headers=headers_for(key, CHAT), timeout=20) as response:
        assert response.status_code == 200
        rid = response.headers["x-request-id"]
        seen = 0
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:])["choices"]
            if choices and choices[0]["delta"].get("content"):
                text += choices[0]["delta"]["content"]
                seen += 1
                if seen == deltas:
                    break  # hang up: every text delta read, the final chunk not yet
    return rid, text


def stream_to_the_end(gateway: LiveGateway, key: IssuedKey) -> tuple[str, str]:
    """(request id, the raw SSE body) of a scripted stream read to its end."""
    body = {"model": SCRIPTED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64, "stream": True}
    with httpx.stream("POST", f"{gateway.url}{CHAT}", json=body, headers=headers_for(key, CHAT), timeout=20) as response:
        assert response.status_code == 200
        return response.headers["x-request-id"], response.read().decode()


def usage_and_debit(rid: str) -> tuple[UsageEvent, LedgerEntry | None]:
    row = wait_for(lambda: UsageEvent.objects.filter(request_id=rid).first(), timeout=10)
    debits = list(LedgerEntry.objects.filter(request_id=rid, kind=LedgerEntry.Kind.DEBIT))
    assert len(debits) <= 1  # idempotent on the request id: never two
    return row, (debits[0] if debits else None)


def test_hanging_up_just_before_the_usage_chunk_still_pays_the_routers_count(
    gateway: LiveGateway, api_key: IssuedKey, scripted: ScriptedRouter
) -> None:
    # The router counts 25 tokens for the ten characters (a tokenizer that splits them) and 500 for the prompt;
    # its final chunk comes 300 ms after the last text, and the client leaves as soon as it has the text.
    scripted.script = [*text_steps(CJK), Step(0.3, chunk("", finish="stop", usage=(500, 25))), Step(0, DONE)]
    rid, text = read_deltas_then_hang_up(gateway, api_key, deltas=len(CJK))
    assert text == CJK
    row, debit = usage_and_debit(rid)
    assert (row.status, row.prompt_tokens, row.completion_tokens, row.estimated) == ("cancelled", 500, 25, False)
    assert debit is not None and (debit.input_tokens, debit.output_tokens, debit.amount_micros) == (500, 25, -(500 + 2 * 25))
    assert scripted.finished == 1  # the gateway read on, within the grace, to the router's usage


def test_hanging_up_mid_answer_closes_the_upstream_at_once_and_pays_at_least_a_token_a_character(
    gateway: LiveGateway, api_key: IssuedKey, scripted: ScriptedRouter
) -> None:
    long_answer = CJK * 5
    scripted.script = [
        *text_steps(long_answer, every_s=0.05),
        Step(0.05, chunk("", finish="stop", usage=(500, 50))),
        Step(0, DONE),
    ]
    rid, text = read_deltas_then_hang_up(gateway, api_key, deltas=10)
    assert text == CJK
    wait_for(lambda: scripted.cut == 1, timeout=1.5)  # not waiting a grace out: more text was still coming
    row, debit = usage_and_debit(rid)
    assert (row.status, row.prompt_tokens, row.estimated) == ("cancelled", estimate_tokens(CHATML_HI), True)
    # What was relayed before the hang-up was noticed (ten characters, perhaps one or two more): a token a character.
    assert 10 <= row.completion_tokens <= 13
    assert debit is not None and debit.output_tokens == row.completion_tokens


def test_hanging_up_mid_answer_pays_no_less_than_the_routers_running_count(
    gateway: LiveGateway, api_key: IssuedKey, scripted: ScriptedRouter
) -> None:
    # Every chunk carries the router's count so far: three tokens a character.
    scripted.script = [
        *text_steps(CJK * 3, every_s=0.05, usage_per_char=(400, 3)),
        Step(0, chunk("", finish="stop")),
        Step(0, DONE),
    ]
    rid, text = read_deltas_then_hang_up(gateway, api_key, deltas=5)
    assert text == CJK[:5]
    row, debit = usage_and_debit(rid)
    assert row.status == "cancelled" and row.prompt_tokens == 400
    assert 15 <= row.completion_tokens <= 3 * 7  # the router's count for what it sent before the hang-up was seen
    assert debit is not None and debit.output_tokens == row.completion_tokens


@pytest.mark.parametrize("how", ["dropped", "deadline"])
def test_a_stream_that_fails_after_delivering_tokens_is_billed_for_them_once(
    how: str, gateway: LiveGateway, api_key: IssuedKey, scripted: ScriptedRouter
) -> None:
    # The router drops the connection after five characters, or stalls past the alias's 3 s timeout.
    end = Step(0, drop=True) if how == "dropped" else Step(6, chunk("", finish="stop", usage=(1, 1)))
    scripted.script = [*text_steps(CJK[:5]), end]
    rid, body = stream_to_the_end(gateway, api_key)
    assert '"error"' in body.splitlines()[-2] or '"error"' in body  # the failure reached the client in its shape
    row, debit = usage_and_debit(rid)
    assert (row.status, row.error_code) == ("error", "upstream_error")
    assert row.completion_tokens == estimate_tokens(CJK[:5]) >= 5
    assert debit is not None and (debit.input_tokens, debit.output_tokens) == (row.prompt_tokens, row.completion_tokens)


def test_a_failed_stream_uses_the_routers_count_so_far_and_one_that_delivered_nothing_costs_nothing(
    gateway: LiveGateway, api_key: IssuedKey, scripted: ScriptedRouter
) -> None:
    scripted.script = [*text_steps(CJK[:4], usage_per_char=(300, 2)), Step(0, drop=True)]
    rid, _ = stream_to_the_end(gateway, api_key)
    row, debit = usage_and_debit(rid)
    assert (row.status, row.prompt_tokens, row.completion_tokens) == ("error", 300, 8)
    assert debit is not None and debit.amount_micros == -(300 + 2 * 8)

    scripted.script = [Step(0.01, chunk("")), Step(0, drop=True)]  # a chunk, but no text at all
    rid, _ = stream_to_the_end(gateway, api_key)
    row, debit = usage_and_debit(rid)
    assert (row.status, row.completion_tokens) == ("error", 0)
    assert debit is None


def test_a_whole_stream_is_billed_the_routers_count_once(
    gateway: LiveGateway, api_key: IssuedKey, scripted: ScriptedRouter
) -> None:
    scripted.script = [*text_steps(CJK), Step(0, chunk("", finish="stop", usage=(500, 25))), Step(0, DONE)]
    rid, body = stream_to_the_end(gateway, api_key)
    row, debit = usage_and_debit(rid)
    assert (row.status, row.prompt_tokens, row.completion_tokens, row.estimated) == ("ok", 500, 25, False)
    assert debit is not None and debit.amount_micros == -(500 + 2 * 25)


# --- anonymous floods and database outages ----------------------------------------------------------------------------


def anonymous_refusals(gateway: LiveGateway) -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = {}
    for line in HTTP.get(f"{gateway.url}/metrics", headers=gateway.operator_headers).text.splitlines():
        if line.startswith("gateway_anonymous_refusals_total{"):
            labels, value = line.rsplit(" ", 1)
            route = labels.split('route="', 1)[1].split('"', 1)[0]
            status = labels.split('status="', 1)[1].split('"', 1)[0]
            counts[(route, status)] = float(value)
    return counts


def test_an_anonymous_flood_is_counted_in_metrics_and_writes_no_rows(gateway: LiveGateway, sim: SimulatorServer) -> None:
    before = anonymous_refusals(gateway)
    rids: list[str] = []
    for i in range(60):
        for path in (CHAT, MESSAGES, ENVELOPE, COUNT):
            headers = {"authorization": f"Bearer ctr_forged{i}"} if i % 2 else {}
            response = HTTP.post(f"{gateway.url}{path}", json=body_for(path), headers=headers)
            assert response.status_code == 401
            rids.append(response.headers["x-request-id"])
        unknown = HTTP.get(f"{gateway.url}/v1/secret-{uuid.uuid4().hex}/../{i}")
        assert unknown.status_code == 404
        rids.append(unknown.headers["x-request-id"])
    after = anonymous_refusals(gateway)
    for label in (("chat.completions", "401"), ("messages", "401"), ("completions", "401"), ("count_tokens", "401")):
        assert after.get(label, 0) - before.get(label, 0) == 60, label
    assert after.get(("other", "404"), 0) - before.get(("other", "404"), 0) == 60
    assert all(route in {"chat.completions", "completions", "messages", "count_tokens", "models", "other"} for route, _ in after)
    wait_for(lambda: HTTP.get(f"{gateway.url}/health", headers=gateway.operator_headers).json()["usage_queue_depth"] == 0)
    assert not RequestLog.objects.filter(request_id__in=rids).exists()
    assert sim.stats()["requests_total"] == 0


def _database_url_via(port: int) -> str:
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        pytest.skip("a database outage needs a database server")
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@127.0.0.1:{port}/{db['NAME']}"


def test_a_database_outage_fills_the_usage_backlog_to_its_bound_then_refuses_and_loses_nothing(
    start_gateway: Callable[..., LiveGateway], routed: IssuedKey, sim: SimulatorServer
) -> None:
    from django.conf import settings

    db = settings.DATABASES["default"]
    relay = CuttableRelay((db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432))).start()
    try:
        gw = start_gateway(
            DATABASE_URL=_database_url_via(relay.port), PORTAL_USAGE_QUEUE_MAX="10", PORTAL_REQUEST_LOG_QUEUE_MAX="10",
            PORTAL_USAGE_FLUSH_MS="50",
        )  # fmt: skip
        assert post(gw, routed, CHAT).status_code == 200  # the key is in the gateway's cache before the outage
        wait_for(lambda: HTTP.get(f"{gw.url}/health", headers=gw.operator_headers).json()["usage_queue_depth"] == 0)

        relay.cut()
        served = [post(gw, routed, (CHAT, MESSAGES, ENVELOPE)[i % 3], text=f"outage {i}") for i in range(10)]
        assert [r.status_code for r in served] == [200] * 10  # served from the cache while the database is away
        routed_before = sim.stats()["requests_total"]
        for path in (CHAT, MESSAGES, ENVELOPE):
            refused = post(gw, routed, path)
            status, kind, message = refusal(refused, path)
            assert status == 503 and kind in ("api_error", "usage_backlog_full"), refused.text
            assert "cannot record usage" in message and refused.headers["retry-after"] == "5"
            if path == CHAT:
                assert refused.json()["error"]["code"] == "usage_backlog_full"
        assert sim.stats()["requests_total"] == routed_before  # refused before any router
        assert post(gw, routed, COUNT).status_code == 200  # counting bills nothing: still answered
        log = gw.log()
        assert "80% of its bound of 10" in log and "refusing billable requests" in log
        metrics_text = HTTP.get(f"{gw.url}/metrics", headers=gw.operator_headers).text
        assert "gateway_usage_backlog_state 2.0" in metrics_text
        assert "gateway_request_logs_dropped_total" in metrics_text

        relay.start()  # the database is back: the backlog drains and requests are taken again
        wait_for(
            lambda: HTTP.get(f"{gw.url}/health", headers=gw.operator_headers).json()["usage_queue_depth"] == 0,
            timeout=30,
            interval=0.2,
        )
        assert post(gw, routed, CHAT).status_code == 200
        rids = [r.headers["x-request-id"] for r in served]
        assert UsageEvent.objects.filter(request_id__in=rids, status="ok").count() == 10  # not one usage row lost
        assert LedgerEntry.objects.filter(request_id__in=rids, kind=LedgerEntry.Kind.DEBIT).count() == 10
        assert "taking billable requests again" in gw.log()
    finally:
        relay.cut()
