"""Operability of a live gateway: Prometheus metrics at /metrics (content, bounded cardinality, the token), the
x-gateway-overhead-ms header, and structured JSON log lines that carry the request id of the request they belong to.

Each test runs a gateway of its own, so the process's counters start at zero and its log holds only this test.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import httpx
from prometheus_client.parser import text_string_to_metric_families

from apikeys.keys import split_key
from simulator import SimulatorServer
from tests.conftest import (
    ALIAS,
    ROUTER_KEY,
    SESSION_102_KEY,
    IssuedKey,
    LiveGateway,
    issue_key,
    wait_for,
    wait_until_usage_written,
)
from tests.support.plans import big_plan
from tests.support.traffic import CHAT, ENVELOPE, MESSAGES, SURFACES, body_for, headers_for, post, random_request_id

pytest_plugins = ["tests.support.fixtures"]

ROUTE_LABEL = {CHAT: "chat.completions", MESSAGES: "messages", ENVELOPE: "completions"}
HTTP = httpx.Client(timeout=30)


def scrape(gateway: LiveGateway, **headers: str | bytes) -> httpx.Response:
    """GET /metrics, with the live gateways' token unless `headers` say otherwise (anonymous: authorization="")."""
    sent = {**gateway.operator_headers, **headers}
    return httpx.get(f"{gateway.url}/metrics", headers={k: v for k, v in sent.items() if v}, timeout=10)


def samples(gateway: LiveGateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every series of the exposition: (sample name, sorted labels) -> value."""
    response = scrape(gateway)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")  # the Prometheus text format
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(series: dict, name: str, **labels: str) -> float:
    return series.get((name, tuple(sorted(labels.items()))), 0.0)


# --- /metrics ------------------------------------------------------------------------------------------------------------


def test_metrics_count_requests_by_route_alias_and_status_and_expose_latency_streams_queue_and_health(
    routed: IssuedKey, sim: SimulatorServer, start_gateway: Callable[..., LiveGateway]
) -> None:
    gateway = start_gateway()
    for path in SURFACES:
        for stream in (False, True):
            assert post(HTTP, gateway.url, routed.raw, path, stream=stream).status_code == 200
    assert post(HTTP, gateway.url, routed.raw, CHAT, model="no-such-model").status_code == 404
    assert post(HTTP, gateway.url, "ctr_wrong_key", MESSAGES).status_code == 401
    assert post(HTTP, gateway.url, routed.raw, ENVELOPE, max_tokens=-1).status_code == 400

    series = samples(gateway)
    requests = {labels: v for (name, labels), v in series.items() if name == "gateway_requests_total"}
    assert requests == {
        (("alias", ALIAS), ("route", "chat.completions"), ("status", "200")): 2.0,
        (("alias", ALIAS), ("route", "messages"), ("status", "200")): 2.0,
        (("alias", ALIAS), ("route", "completions"), ("status", "200")): 2.0,
        # Refused before a model was resolved: no alias, never the name the customer sent.
        (("alias", ""), ("route", "chat.completions"), ("status", "404")): 1.0,
        (("alias", ""), ("route", "messages"), ("status", "401")): 1.0,
        (("alias", ""), ("route", "completions"), ("status", "400")): 1.0,
    }
    # Upstream latency and time to first byte per alias, one observation per answered call; the gateway's own
    # overhead per route, one per completion response (refusals included).
    assert value(series, "gateway_upstream_latency_seconds_count", alias=ALIAS) == 6
    assert value(series, "gateway_upstream_ttfb_seconds_count", alias=ALIAS) == 6
    assert value(series, "gateway_upstream_latency_seconds_bucket", alias=ALIAS, le="+Inf") == 6
    for path in SURFACES:
        assert value(series, "gateway_overhead_seconds_count", route=ROUTE_LABEL[path]) == 3
    assert 0 < value(series, "gateway_overhead_seconds_sum", route="chat.completions") < 1
    assert value(series, "gateway_upstreams", alias=ALIAS) == 2
    assert value(series, "gateway_upstreams_healthy", alias=ALIAS) == 2
    assert value(series, "gateway_usage_write_failures_total") == 0
    assert ("gateway_usage_queue_depth", ()) in series
    assert value(series, "gateway_inflight_streams") == 0
    assert value(series, "gateway_inflight_requests") == 1  # the scrape itself

    # A stream in flight shows as one, and is gone when it ends.
    sim.configure(token_delay_ms=100, answer_tokens=15)
    done = threading.Event()

    def slow_stream() -> None:
        post(httpx.Client(timeout=30), gateway.url, routed.raw, CHAT, stream=True, max_tokens=64)
        done.set()

    threading.Thread(target=slow_stream, daemon=True).start()
    wait_for(lambda: sim.stats()["streams_open"] == 1, timeout=5, interval=0.02)
    series = samples(gateway)
    assert value(series, "gateway_inflight_streams") == 1
    assert value(series, "gateway_inflight_requests") == 2
    assert done.wait(10)
    wait_for(lambda: value(samples(gateway), "gateway_inflight_streams") == 0, timeout=2)
    wait_until_usage_written(gateway)
    assert value(samples(gateway), "gateway_usage_queue_depth") == 0


def test_label_values_never_hold_keys_or_request_ids_and_the_series_do_not_grow_with_customers(
    routed: IssuedKey, start_gateway: Callable[..., LiveGateway]
) -> None:
    plan = big_plan()
    keys = [issue_key(slug=f"card-{i % 20}", plan=plan.slug, name=f"key {i}") for i in range(200)]
    gateway = start_gateway()
    client_ids: list[str] = []
    our_ids: list[str] = []

    def traffic(batch: list[IssuedKey]) -> None:
        for n, key in enumerate(batch):
            path = SURFACES[n % 3]
            client_id = random_request_id()
            client_ids.append(client_id)
            headers = {**headers_for(key.raw, path), "x-request-id": client_id}
            bodies = [
                body_for(path, text=f"card {uuid.uuid4().hex}", stream=n % 2 == 0),
                body_for(path, model=f"m-{uuid.uuid4().hex[:12]}"),  # a model name per request: refused, not a label
            ]
            for body in bodies:
                response = HTTP.post(f"{gateway.url}{path}", json=body, headers=headers)
                assert response.status_code in (200, 404), response.text
                our_ids.append(response.headers["x-request-id"])
            bad = HTTP.post(f"{gateway.url}{path}", json=body_for(path), headers=headers_for(f"ctr_{uuid.uuid4().hex}", path))
            assert bad.status_code == 401
            our_ids.append(bad.headers["x-request-id"])

    traffic(keys[:30])
    first = samples(gateway)
    traffic(keys[30:])
    after = samples(gateway)

    # The same series after 30 customers and after 200: nothing keyed by who called.
    assert set(after) == set(first)
    assert len(after) < 250, len(after)
    assert value(after, "gateway_requests_total", route="chat.completions", alias=ALIAS, status="200") == 67
    label_names = {name for _, labels in after for name, _ in labels}
    assert label_names <= {"route", "alias", "status", "le"}, label_names
    values = {(name, v) for _, labels in after for name, v in labels}
    assert {v for name, v in values if name == "alias"} <= {ALIAS, ""}
    assert {v for name, v in values if name == "route"} <= set(ROUTE_LABEL.values())
    assert all(re.fullmatch(r"[1-5]\d\d", v) for name, v in values if name == "status")
    text = scrape(gateway).text
    secrets = [k.raw for k in keys] + [split_key(k.raw) or "" for k in keys] + client_ids + our_ids
    leaked = [s for s in secrets if s and s in text]
    assert leaked == []
    assert "ctr_" not in text and "req_" not in text and "client-" not in text
    key_ids = {str(k.key_id) for k in keys}
    assert not {v for name, v in values if name in ("route", "alias")} & key_ids


def test_metrics_token_protects_the_scrape(routed: IssuedKey, start_gateway: Callable[..., LiveGateway]) -> None:
    gateway = start_gateway(PORTAL_METRICS_TOKEN="scrape-secret-0123")
    assert scrape(gateway, authorization="").status_code == 401
    assert scrape(gateway, authorization="Bearer wrong").status_code == 401
    assert scrape(gateway, authorization="scrape-secret-0123").status_code == 401
    assert scrape(gateway, authorization=b"Bearer scrape-secret-0123\xe9").status_code == 401  # a latin-1 byte: not a 500
    refused = scrape(gateway, authorization="Bearer scrape-secret-0123-and-more")
    assert refused.status_code == 401 and "gateway_" not in refused.text and "scrape-secret" not in refused.text
    assert refused.headers["www-authenticate"].startswith("Bearer")
    allowed = scrape(gateway, authorization="Bearer scrape-secret-0123")
    assert allowed.status_code == 200 and "gateway_requests_total" in allowed.text


def test_without_a_token_metrics_are_open_under_debug_only(routed: IssuedKey, start_gateway: Callable[..., LiveGateway]) -> None:
    # Production refuses to start without PORTAL_METRICS_TOKEN (tests/test_config.py); `make run` (DEBUG) may leave it out.
    gateway = start_gateway(PORTAL_METRICS_TOKEN="", DEBUG="1")
    assert scrape(gateway, authorization="").status_code == 200


# --- x-gateway-overhead-ms ------------------------------------------------------------------------------------------------


def test_every_completion_response_reports_the_gateways_own_overhead(
    routed: IssuedKey, sim: SimulatorServer, start_gateway: Callable[..., LiveGateway]
) -> None:
    gateway = start_gateway()
    sim.configure(first_byte_delay_ms=300)  # an upstream wait the overhead must leave out
    cases: list[tuple[str, dict[str, Any], str, int]] = []
    for path in SURFACES:
        cases += [
            (path, body_for(path), routed.raw, 200),
            (path, body_for(path, stream=True), routed.raw, 200),
            (path, body_for(path, model="no-such-model"), routed.raw, 404),
            (path, {"model": ALIAS}, routed.raw, 400),
            (path, body_for(path), "ctr_not_a_key", 401),
        ]
    for path, body, raw, status in cases:
        started = time.perf_counter()
        response = HTTP.post(f"{gateway.url}{path}", json=body, headers=headers_for(raw, path))
        total_ms = (time.perf_counter() - started) * 1000
        assert response.status_code == status, response.text
        overhead = float(response.headers["x-gateway-overhead-ms"])
        assert 0 <= overhead < total_ms, (path, status, overhead, total_ms)
        if status == 200:
            assert total_ms >= 300 and overhead < total_ms - 250, (path, overhead, total_ms)  # the 300 ms upstream wait excluded
        assert overhead < 250, (path, status, overhead)
        if not body.get("stream"):
            # A JSON answer or error is sized (one body, no chunked framing); a stream is not.
            assert response.headers["content-length"] == str(len(response.content)), (path, status)
            assert "transfer-encoding" not in response.headers
        else:
            assert "content-length" not in response.headers


# --- structured logs --------------------------------------------------------------------------------------------------------


def json_lines(gateway: LiveGateway) -> list[dict[str, Any]]:
    lines = []
    for raw in gateway.log().splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    return lines


RID_IN_TEXT = re.compile(r"request_id=(req_[0-9a-f]{24})")


def test_log_lines_are_json_and_each_line_of_a_request_carries_its_request_id(
    routed: IssuedKey, sim: SimulatorServer, start_gateway: Callable[..., LiveGateway]
) -> None:
    gateway = start_gateway()
    sim.configure(sessions={"101": {"fail_status": 503}})
    responses = [post(HTTP, gateway.url, routed.raw, SURFACES[i % 3], text=f"log {i}", stream=i % 2 == 1) for i in range(12)]
    assert [r.status_code for r in responses] == [200] * 12
    sim.configure(sessions={"101": {"fail_status": None}}, global_={"disconnect_after_tokens": 2})
    cut = post(HTTP, gateway.url, routed.raw, CHAT, stream=True, max_tokens=32)
    responses.append(cut)
    sim.configure(global_={"disconnect_after_tokens": None}, status_fail=True)  # a probe failure: no request's line
    wait_for(lambda: "failed its status probe" in gateway.log(), timeout=3)
    sim.configure(status_fail=False)
    wait_for(lambda: "answers its status probe again" in gateway.log(), timeout=3)

    ours = {r.headers["x-request-id"] for r in responses}
    lines = json_lines(gateway)
    assert lines and all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    upstream_failures = [line for line in lines if line["logger"] == "gateway.upstream" and "upstream" in line["msg"]]
    assert len([line for line in upstream_failures if "answered 503" in line["msg"]]) >= 3
    for line in upstream_failures + [line for line in lines if "stream from" in line["msg"]]:
        mentioned = RID_IN_TEXT.search(line["msg"])
        rid = mentioned.group(1) if mentioned else None
        assert line.get("request_id") == rid or (rid is None and line.get("request_id") in ours), line
        assert line.get("request_id") in ours, line
    assert any("stream from" in line["msg"] and line.get("request_id") == cut.headers["x-request-id"] for line in lines)
    # Every line that names one of our requests carries that request's id as a field.
    for line in lines:
        for rid in ours & set(RID_IN_TEXT.findall(line["msg"])):
            assert line.get("request_id") == rid, line
    # Background work (the routers' probe, the usage writer, the cache poller) belongs to no request.
    background = [line for line in lines if "status probe" in line["msg"]]
    assert background and all("request_id" not in line for line in background), background
    # And no secret in any line.
    text = gateway.log()
    for secret in (routed.raw, ROUTER_KEY, SESSION_102_KEY):
        assert secret not in text
    # Every line of the log is one JSON object, the access log included (daphne runs with -v 0; the gateway writes it).
    unstructured = [raw for raw in text.splitlines() if raw.strip() and not raw.startswith("{")]
    assert unstructured == [], unstructured[:5]
    access = {line["request_id"]: line for line in lines if line["logger"] == "access" and "request_id" in line}
    for response in responses:
        line = access[response.headers["x-request-id"]]
        assert line["method"] == "POST" and line["path"] == urlparse(str(response.url)).path, line
        assert line["status"] == response.status_code and line["duration_ms"] >= 0 and line["client"] == "127.0.0.1", line
    assert any(line["logger"] == "access" and line["path"] == "/health" and line["status"] == 200 for line in lines)
