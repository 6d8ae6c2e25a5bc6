"""Bad input at volume: hypothesis-generated bodies and headers on every /v1 route of a live gateway.

Whatever arrives, the gateway answers in the route's own shape with our request id, and never with a 5xx: the
router simulator behind it is healthy, so no failure can be the upstream's. Bodies range from arbitrary bytes and
arbitrary JSON to valid requests with fields swapped for arbitrary values; headers from a valid key in either
style to garbage, with arbitrary client request ids and content types. Examples are bounded per route so the
whole module runs in well under a minute; in CI (`CI=true`) the examples are derandomized, so a run is repeatable.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.models import Plan
from tests.support.live import ALIAS, LiveGateway, issue_key, wait_for
from usage.models import RequestLog

REQUEST_ID = re.compile(r"^req_[0-9a-f]{24}$")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))  # per route; raise it to hunt longer

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies -------------------------------------------------------------------------------------------------------

header_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)  # sent as NaN / Infinity, which Python's json accepts
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12
)
text_block = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["text", "image", "image_url", "tool_use", "tool_result", "document", "thinking", "input_audio", ""]
        )
    },
    optional={"text": st.text(max_size=40) | json_values, "source": json_values, "cache_control": json_values},
)
content = st.text(max_size=60) | st.lists(text_block, max_size=3) | json_values
message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "developer", "tool", "function", ""]) | json_values,
        "content": content,
    },
    optional={"name": json_values, "tool_call_id": json_values},
)
messages = st.lists(message, max_size=4) | json_values
model = st.sampled_from([ALIAS, ALIAS, "no-such-model", "", ALIAS.upper()]) | json_values
max_tokens = st.integers(min_value=-5, max_value=5000) | st.sampled_from([0, 1, 2**31, 2**63]) | json_values
numbers = st.floats(min_value=-3, max_value=3) | json_values

CHAT_FIELDS: dict[str, Any] = {
    "model": model, "messages": messages, "max_tokens": max_tokens, "max_completion_tokens": max_tokens,
    "temperature": numbers, "top_p": numbers, "presence_penalty": numbers, "frequency_penalty": numbers,
    "stop": st.text(max_size=10) | st.lists(st.text(max_size=10), max_size=6) | json_values, "stream": st.booleans() | json_values,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | json_values}) | json_values,
    "n": st.integers(0, 3) | json_values, "tools": json_values, "tool_choice": json_values, "functions": json_values,
    "response_format": st.just({"type": "text"}) | json_values, "logprobs": st.booleans() | json_values,
    "seed": json_values, "user": json_values, "metadata": json_values, "safety_identifier": json_values,
    "service_tier": st.sampled_from(["auto", "default", "flex"]) | json_values, "store": st.booleans() | json_values,
    "logit_bias": json_values, "top_logprobs": json_values, "modalities": st.just(["text"]) | json_values,
    "audio": json_values, "reasoning_effort": json_values, "prediction": json_values, "parallel_tool_calls": json_values,
}  # fmt: skip
MESSAGES_FIELDS: dict[str, Any] = {
    "model": model, "messages": messages, "max_tokens": max_tokens, "system": content, "temperature": numbers,
    "top_p": numbers, "top_k": st.integers(-3, 100) | json_values, "stop_sequences": st.lists(st.text(max_size=10), max_size=5) | json_values,
    "stream": st.booleans() | json_values, "metadata": json_values, "tools": json_values, "tool_choice": json_values,
    "thinking": st.just({"type": "enabled", "budget_tokens": 1024}) | json_values,
    "service_tier": st.sampled_from(["auto", "standard_only", "priority"]) | json_values, "speed": json_values,
    "output_config": json_values, "mcp_servers": json_values, "container": json_values, "inference_geo": json_values,
    "cache_control": json_values,
}  # fmt: skip
ENVELOPE_FIELDS: dict[str, Any] = {
    "model": model, "prompt": st.text(max_size=80) | json_values, "max_tokens": max_tokens, "temperature": numbers,
    "top_p": numbers, "stream": st.booleans() | json_values,
}  # fmt: skip


def bodies(fields: dict[str, Any], valid: dict[str, Any]) -> st.SearchStrategy[bytes | None]:
    """No body, raw bytes, arbitrary JSON, a body built from the route's fields (any subset, any values, plus
    unknown fields), or a valid body with one field replaced by an arbitrary value."""
    built = st.fixed_dictionaries({}, optional=fields).flatmap(
        lambda d: st.dictionaries(st.text(max_size=10), json_values, max_size=2).map(lambda extra: {**extra, **d})
    )
    replaced = st.sampled_from(sorted(fields)).flatmap(lambda name: fields[name].map(lambda value: {**valid, name: value}))
    as_json = (built | replaced | replaced | json_values).map(lambda value: json.dumps(value).encode())
    return st.none() | st.binary(max_size=120) | as_json


def header_sets(route_method: str) -> st.SearchStrategy[tuple[str, dict[str, str]]]:
    """(method, headers): usually the route's method; auth in every form, arbitrary client ids and content types."""
    auth = st.sampled_from(
        ["bearer"] * 3 + ["x-api-key"] * 3 + ["both", "none", "garbage-bearer", "garbage-x-api-key", "basic", "empty-bearer"]
    )
    optional = {
        "x-request-id": header_text,
        # Not multipart/form-data: Twisted parses such bodies itself and answers a malformed one with a bare 400
        # before daphne hands the request to any application (twisted.web.http.Request.requestReceived).
        "content-type": st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"])
        | header_text.filter(lambda value: "multipart" not in value.lower()),
        "anthropic-version": st.sampled_from(["2023-06-01", "1999-01-01"]) | header_text,
        "anthropic-beta": header_text,
        "accept": st.sampled_from(["application/json", "text/event-stream", "*/*"]),
        "x-forwarded-for": header_text,
    }
    method = st.sampled_from([route_method] * 20 + ["GET", "POST", "PUT", "DELETE", "PATCH"])
    return st.tuples(method, auth, st.fixed_dictionaries({}, optional=optional)).map(lambda t: (t[0], {"__auth": t[1], **t[2]}))


# --- the shapes each route may answer with ----------------------------------------------------------------------------


def check_openai_error(body: Any) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)


def check_anthropic_error(body: Any, rid: str) -> None:
    assert isinstance(body, dict) and set(body) == {"type", "error", "request_id"}, body
    assert body["type"] == "error" and body["request_id"] == rid
    assert set(body["error"]) == {"type", "message"} and isinstance(body["error"]["message"], str), body


def check_envelope(body: Any, rid: str, status: int) -> None:
    assert isinstance(body, dict) and set(body) == {"request_id", "status", "model", "router_pool", "data", "error"}, body
    assert body["request_id"] == rid
    if status == 200:
        assert body["status"] == "ok" and body["error"] is None and isinstance(body["data"], dict), body
    else:
        assert body["status"] == "failed" and body["data"] is None, body
        assert set(body["error"]) == {"code", "message", "details"} and isinstance(body["error"]["message"], str), body


def sse_payloads(text: str) -> list[Any]:
    payloads = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            payloads.append(json.loads(line[6:]))  # every event is JSON
    return payloads


def check_stream(route: str, text: str) -> None:
    payloads = sse_payloads(text)
    assert payloads, text
    if route == "/v1/messages":
        assert text.rstrip().endswith('data: {"type":"message_stop"}'), text[-500:]
        assert payloads[0]["type"] == "message_start" and payloads[0]["message"]["model"] == ALIAS
    elif route == "/v1/chat/completions":
        assert text.rstrip().endswith("data: [DONE]"), text[-500:]
        assert all(p["object"] == "chat.completion.chunk" and p["model"] == ALIAS for p in payloads), payloads
    else:
        assert text.rstrip().endswith("data: [DONE]"), text[-500:]
        assert all("error" not in p or p["error"] is None for p in payloads), payloads


def check_success(route: str, body: Any, rid: str, *, anthropic_models: bool = False) -> None:
    if anthropic_models:  # /v1/models to a client that sent anthropic-version: the Anthropic SDK's page and ModelInfo
        entries = body["data"] if route == "/v1/models" else [body]
        assert all(m["type"] == "model" and m["lifecycle"] == "active" for m in entries), body
        if route == "/v1/models":
            assert isinstance(body["has_more"], bool) and body["first_id"] == entries[0]["id"], body
        else:
            assert body["id"] == ALIAS, body
    elif route == "/v1/chat/completions":
        assert body["object"] == "chat.completion" and body["model"] == ALIAS, body
        assert isinstance(body["choices"][0]["message"]["content"], str)
        assert all(isinstance(body["usage"][k], int) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    elif route == "/v1/messages":
        assert body["type"] == "message" and body["model"] == ALIAS and body["content"][0]["type"] == "text", body
        assert body["stop_reason"] in ("end_turn", "max_tokens", "stop_sequence")
    elif route == "/v1/messages/count_tokens":
        assert set(body) == {"input_tokens"} and isinstance(body["input_tokens"], int), body
    elif route == "/v1/completions":
        check_envelope(body, rid, 200)
    elif route == "/v1/models":
        assert body["object"] == "list" and all(m["object"] == "model" for m in body["data"]), body
    else:  # /v1/models/<alias>
        assert body["object"] == "model" and body["id"] == ALIAS, body


def check_response(route: str, response: httpx.Response, gateway: LiveGateway, *, anthropic_models: bool = False) -> None:
    """`anthropic_models`: a /v1/models request that sent anthropic-version, answered in Anthropic's shape."""
    status = response.status_code
    assert status < 500, f"{status} {response.text[:500]}\n--- gateway log ---\n{gateway.log()[-3000:]}"
    rid = response.headers.get("x-request-id", "")
    assert REQUEST_ID.match(rid), response.headers
    anthropic = route.startswith("/v1/messages") or anthropic_models
    if anthropic:
        assert response.headers.get("request-id") == rid
    if status == 200 and response.headers["content-type"].startswith("text/event-stream"):
        check_stream(route, response.text)
        return
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    if status == 200:
        check_success(route, body, rid, anthropic_models=anthropic_models)
    elif anthropic:
        check_anthropic_error(body, rid)
    elif route == "/v1/completions" and status != 405:
        check_envelope(body, rid, status)
    elif route == "/v1/completions":
        assert "error" in body, body
    else:
        check_openai_error(body)


def anonymous_refusals(gateway: LiveGateway) -> float:
    """The gateway's count of requests refused without an authenticated principal (they leave no row)."""
    text = httpx.get(f"{gateway.url}/metrics", headers=gateway.operator_headers, timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("gateway_anonymous_refusals_total{")
    )


def every_request_was_logged(gateway: LiveGateway, sent: int, anonymous_before: float) -> None:
    """What was sent cannot have poisoned the usage queue: it drains, and each request left its one log row, or,
    refused before anyone was authenticated, was counted in the metrics instead."""
    wait_for(
        lambda: httpx.get(f"{gateway.url}/health", headers=gateway.operator_headers, timeout=5).json()["usage_queue_depth"] == 0,
        timeout=15,
        interval=0.1,
    )
    assert RequestLog.objects.count() + (anonymous_refusals(gateway) - anonymous_before) == sent


# --- the tests ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def fuzz_key(gateway: LiveGateway) -> str:
    plan, _ = Plan.objects.get_or_create(
        slug="fuzz", defaults={"name": "Fuzz", "requests_per_minute": 1_000_000, "window_seconds": 3600}
    )
    return issue_key(slug="fuzz", plan=plan.slug).raw


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as session:
        yield session


def send(
    client: httpx.Client, gateway: LiveGateway, key: str, path: str, method: str, headers: dict[str, str], body: bytes | None
) -> httpx.Response:
    headers = dict(headers)
    auth = headers.pop("__auth")
    if auth in ("bearer", "both"):
        headers["authorization"] = f"Bearer {key}"
    if auth in ("x-api-key", "both"):
        headers["x-api-key"] = key
    if auth == "garbage-bearer":
        headers["authorization"] = f"Bearer {key[:-3]}xyz"
    if auth == "garbage-x-api-key":
        headers["x-api-key"] = "ctr_" + key[-20:]
    if auth == "basic":
        headers["authorization"] = "Basic dXNlcjpwYXNz"
    if auth == "empty-bearer":
        headers["authorization"] = "Bearer"
    return client.request(method, f"{gateway.url}{path}", headers=headers, content=body)


ROUTES = [
    (
        "/v1/chat/completions",
        "POST",
        CHAT_FIELDS,
        {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
    ),
    ("/v1/messages", "POST", MESSAGES_FIELDS, {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}),
    ("/v1/messages/count_tokens", "POST", MESSAGES_FIELDS, {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/completions", "POST", ENVELOPE_FIELDS, {"model": ALIAS, "prompt": "hi", "max_tokens": 8}),
]


@pytest.mark.parametrize("path,method,fields,valid", ROUTES, ids=[r[0] for r in ROUTES])
def test_no_body_and_no_headers_make_a_completion_route_fail_or_answer_out_of_shape(
    gateway: LiveGateway,
    fuzz_key: str,
    client: httpx.Client,
    path: str,
    method: str,
    fields: dict[str, Any],
    valid: dict[str, Any],
) -> None:
    seen: dict[int, int] = {}
    anonymous_before = anonymous_refusals(gateway)

    @FUZZ
    @given(body=bodies(fields, valid), request=header_sets(method))
    def run(body: bytes | None, request: tuple[str, dict[str, str]]) -> None:
        method_used, headers = request
        response = send(client, gateway, fuzz_key, path, method_used, headers, body)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        check_response(path, response, gateway)

    run()
    # The generator reached both sides: accepted requests and refusals (else the fuzzing proved little).
    assert seen.get(200, 0) > 0 and sum(n for s, n in seen.items() if s >= 400) > 0, seen
    every_request_was_logged(gateway, sum(seen.values()), anonymous_before)


def test_no_path_or_headers_make_the_models_routes_fail_or_answer_out_of_shape(
    gateway: LiveGateway, fuzz_key: str, client: httpx.Client
) -> None:
    segment = st.sampled_from([ALIAS, "no-such-model", "..", "%2e%2e", "a/b", "%00", "x" * 300]) | st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#/%"), min_size=1, max_size=30
    )
    seen: dict[int, int] = {}
    anonymous_before = anonymous_refusals(gateway)

    @FUZZ
    @given(alias=st.none() | segment, request=header_sets("GET"), body=st.none() | st.binary(max_size=40))
    def run(alias: str | None, request: tuple[str, dict[str, str]], body: bytes | None) -> None:
        method_used, headers = request
        path = "/v1/models" if alias is None else f"/v1/models/{alias}"
        response = send(client, gateway, fuzz_key, path, method_used, headers, body)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        # In Anthropic's shape when anthropic-version is sent to a models route (`/v1/models/..` is `/v1/` by then).
        sent_to = response.request.url.path
        to_models = sent_to == "/v1/models" or sent_to.startswith("/v1/models/")
        anthropic_models = to_models and bool(headers.get("anthropic-version", "").strip())
        check_response("/v1/models" if alias is None else "/v1/models/x", response, gateway, anthropic_models=anthropic_models)

    run()
    assert seen.get(200, 0) > 0 and seen.get(401, 0) > 0, seen
    every_request_was_logged(gateway, sum(seen.values()), anonymous_before)


def test_unknown_v1_routes_are_refused_in_shape_and_counted(gateway: LiveGateway, client: httpx.Client) -> None:
    # `/v1` itself is not a route of the URL table (it is what a client makes of `/v1/models/..`).
    paths = ["/v1", "/v1/", "/v1/nope", "/v1/messages/nope", "/v1/chat/completions/extra"]
    anonymous_before = anonymous_refusals(gateway)
    rids = []
    for path in paths:
        response = client.post(f"{gateway.url}{path}", json={})
        assert response.status_code == 404
        rid = response.headers["x-request-id"]
        assert REQUEST_ID.match(rid)
        if path.startswith("/v1/messages"):
            check_anthropic_error(response.json(), rid)
        else:
            check_openai_error(response.json())
        rids.append(rid)
    # Nobody was authenticated: counted in the metrics, no row each (PORTAL_ANONYMOUS_LOG_SAMPLE is 0).
    wait_for(lambda: anonymous_refusals(gateway) - anonymous_before == len(paths), timeout=10)
    assert not RequestLog.objects.filter(request_id__in=rids).exists()
