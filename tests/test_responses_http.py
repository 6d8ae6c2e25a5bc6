"""Raw HTTP against live gateways: every error of `/v1/responses` and `/v1/responses/{id}`, exactly, in OpenAI's shape."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from simulator import SimulatorServer
from tests.conftest import ALIAS, IssuedKey, LiveGateway, issue_key, live_gateway_env, wait_for, wait_until_gateway_caught_up
from tests.test_http_errors import (
    LIMIT,
    MISSING_KEY,
    NOT_ALLOWED,
    NOT_FOUND,
    SUSPENDED,
    TOO_LARGE,
    UNAUTHORIZED,
    UNAVAILABLE,
    UPSTREAM_AUTH,
    UPSTREAM_FAILED,
    Expected,
    assert_counted_not_logged,
    assert_logged,
    assert_no_leak,
    collected,
    invalid,
    post,
    request_id_of,
)
from usage.models import UsageEvent

RESPONSES = "/v1/responses"
_NO_TOOLS = "Tool calling is not offered on hosted routes."


def good_body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": ALIAS, "input": "hi", "max_output_tokens": 8}
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None}


def response_not_found(response_id: str) -> Expected:
    return Expected(
        404,
        "invalid_request_error",
        "response_not_found",
        None,
        "not_found_error",
        "not_found",
        message=f"Response with id '{response_id}' not found.",
    )


def previous_not_found(response_id: str) -> Expected:
    return Expected(
        404,
        "invalid_request_error",
        "previous_response_not_found",
        "previous_response_id",
        "not_found_error",
        "not_found",
        message=f"Previous response with id '{response_id}' not found.",
    )


@pytest.fixture
def key(gateway: LiveGateway) -> IssuedKey:
    return issue_key(slug="responses-errors-org", plan="pro")


def auth(key: IssuedKey) -> dict[str, str]:
    return {"authorization": f"Bearer {key.raw}"}


# --- 400: the body --------------------------------------------------------------------------------------------------------

BODY_CASES: dict[str, tuple[Any, Expected]] = {
    "not_json": (b'{"model": "oss-20b", "input": [', invalid(None, None, message="the request body is not valid JSON")),
    "empty_body": (b"", invalid(None, None, message="the request body is empty; send a JSON object")),
    "json_array": (
        b'[{"model": "oss-20b"}]',
        invalid(None, "invalid_type", message="The request body must be a JSON object, but got an array."),
    ),
    "too_deep": (
        b'{"model": "oss-20b", "input": "hi", "deep": ' + b"[" * 70 + b"]" * 70 + b"}",
        invalid(None, None, message="the request body is nested deeper than 64 levels"),
    ),
    "missing_model": (
        {"input": "hi"},
        invalid("model", "missing_required_parameter", message="Missing required parameter: 'model'."),
    ),
    "missing_input": (
        {"model": ALIAS},
        invalid("input", "missing_required_parameter", message="Missing required parameter: 'input'."),
    ),
    "input_a_number": (
        good_body(input=5),
        invalid(
            "input",
            "invalid_type",
            message="Invalid type for 'input': expected a string or an array of input items, but got an integer instead.",
        ),
    ),
    "input_empty": (
        good_body(input=[]),
        invalid("input", "invalid_value", message="Invalid value for 'input': must contain at least one item."),
    ),
    "too_many_items": (
        good_body(input=[{"role": "user", "content": "x"}] * 2049),
        invalid("input", "invalid_value", message="Invalid value for 'input': at most 2048 items are allowed, got 2049."),
    ),
    "too_many_parts": (
        good_body(input=[{"role": "user", "content": [{"type": "input_text", "text": "x"}] * 257}]),
        invalid(
            "input[0].content",
            "invalid_value",
            message="Invalid value for 'input[0].content': at most 256 content parts are allowed, got 257.",
        ),
    ),
    "bad_role": (
        good_body(input=[{"role": "tool", "content": "42"}]),
        invalid(
            "input[0].role",
            "invalid_value",
            message="Invalid value for 'input[0].role': 'tool' is not one of 'user', 'assistant', 'system', 'developer'.",
        ),
    ),
    "max_output_tokens_a_string": (
        good_body(max_output_tokens="ten"),
        invalid(
            "max_output_tokens",
            "invalid_type",
            message="Invalid type for 'max_output_tokens': expected an integer, but got a string instead.",
        ),
    ),
    "temperature_out_of_range": (
        good_body(temperature=9),
        invalid("temperature", "invalid_value", message="Invalid value for 'temperature': must be between 0 and 2, got 9."),
    ),
    "store_a_string": (
        good_body(store="yes"),
        invalid("store", "invalid_type", message="Invalid type for 'store': expected a boolean, but got a string instead."),
    ),
    "metadata_too_many": (
        good_body(metadata={f"k{i}": "v" for i in range(17)}),
        invalid("metadata", "invalid_value", message="Invalid value for 'metadata': at most 16 entries are allowed, got 17."),
    ),
    "user_too_long": (
        good_body(user="u" * 257),
        invalid("user", "invalid_value", message="Invalid value for 'user': must be at most 256 characters long, got 257."),
    ),
    "previous_response_id_a_number": (
        good_body(previous_response_id=5),
        invalid(
            "previous_response_id",
            "invalid_type",
            message="Invalid type for 'previous_response_id': expected a string, but got an integer instead.",
        ),
    ),
}


def test_bad_body_is_400_naming_the_field(gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer) -> None:
    failures: list[str] = []
    for case, (payload, expected) in BODY_CASES.items():
        for stream in (False, True):
            with collected(failures, f"{case} (stream={stream})"):
                if isinstance(payload, bytes):
                    response = post(gateway, RESPONSES, key.raw, content=payload)
                else:
                    response = post(gateway, RESPONSES, key.raw, body={**payload, "stream": stream})
                expected.check(RESPONSES, response)
                assert_logged(request_id_of(response), 400, usage=False)
    assert not failures, "\n".join(failures)
    assert sim.stats()["requests_total"] == 0


UNSUPPORTED: dict[str, tuple[dict[str, Any], Expected]] = {
    "tools": (
        {"tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]},
        invalid("tools", "unsupported_parameter", message=f"Unsupported parameter: 'tools'. {_NO_TOOLS}"),
    ),
    "builtin_tool": ({"tools": [{"type": "web_search"}]}, invalid("tools", "unsupported_parameter", mentions="'tools'")),
    "tool_choice_auto": (
        {"tool_choice": "auto"},
        invalid(
            "tool_choice",
            "unsupported_value",
            message=f"Unsupported value for 'tool_choice': only 'none' is accepted. {_NO_TOOLS}",
        ),
    ),
    "function_call_output_item": (
        {"input": [{"role": "user", "content": "hi"}, {"type": "function_call_output", "call_id": "c1", "output": "42"}]},
        invalid("input[1].type", "unsupported_value", mentions="'function_call_output'"),
    ),
    "image_part": (
        {
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is this?"},
                        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="},
                    ],
                }
            ]
        },
        invalid("input[0].content[1].type", "unsupported_value", mentions="'input_image'"),
    ),
    "file_part": (
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
        invalid("input[0].content[0].type", "unsupported_value", mentions="'input_file'"),
    ),
    "reasoning": ({"reasoning": {"effort": "high"}}, invalid("reasoning", "unsupported_parameter", mentions="reasoning")),
    "json_schema": (
        {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}},
        invalid(
            "text.format", "unsupported_value", message="Unsupported value for 'text.format': only {'type': 'text'} is supported."
        ),
    ),
    "include": ({"include": ["message.output_text.logprobs"]}, invalid("include", "unsupported_value", mentions="'include'")),
    "conversation": (
        {"conversation": "conv_1"},
        invalid("conversation", "unsupported_parameter", mentions="previous_response_id"),
    ),
    "prompt_template": ({"prompt": {"id": "pmpt_1"}}, invalid("prompt", "unsupported_parameter", mentions="prompt templates")),
    "background": ({"background": True}, invalid("background", "unsupported_value", mentions="background")),
    "truncation_auto": ({"truncation": "auto"}, invalid("truncation", "unsupported_value", mentions="'disabled'")),
    "top_logprobs": ({"top_logprobs": 5}, invalid("top_logprobs", "unsupported_value", mentions="log probabilities")),
}


def test_what_hosted_routes_do_not_offer_is_refused(gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer) -> None:
    failures: list[str] = []
    for case, (extra, expected) in UNSUPPORTED.items():
        for stream in (False, True):
            with collected(failures, f"{case} (stream={stream})"):
                response = post(gateway, RESPONSES, key.raw, body=good_body(stream=stream, **extra))
                expected.check(RESPONSES, response)
                assert_logged(request_id_of(response), 400, usage=False)
    assert not failures, "\n".join(failures)
    assert sim.stats()["requests_total"] == 0


def test_the_harmless_forms_of_those_fields_are_accepted(gateway: LiveGateway, key: IssuedKey) -> None:
    body = good_body(
        tools=[],
        tool_choice="none",
        include=[],
        reasoning={"effort": None, "summary": None},
        text={"format": {"type": "text"}},
        truncation="disabled",
        background=False,
        parallel_tool_calls=True,
        top_logprobs=0,
        service_tier="auto",
        prompt_cache_key="abc",
        safety_identifier="u1",
        stream_options={"include_obfuscation": False},
        unknown_field={"x": 1},
    )
    response = post(gateway, RESPONSES, key.raw, body=body)
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "response"


# --- 401, 403, 404, 413, 405 ----------------------------------------------------------------------------------------------


def test_keys_are_checked_on_every_responses_route(gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer) -> None:
    made = post(gateway, RESPONSES, key.raw, body=good_body()).json()["id"]
    for headers, expected in (({}, MISSING_KEY), ({"authorization": "Bearer ctr_bad"}, UNAUTHORIZED)):
        responses = [
            post(gateway, RESPONSES, None, body=good_body(), headers=headers),
            httpx.get(f"{gateway.url}{RESPONSES}/{made}", headers=headers, timeout=10),
            httpx.delete(f"{gateway.url}{RESPONSES}/{made}", headers=headers, timeout=10),
        ]
        for response in responses:
            expected.check(RESPONSES, response)
            assert_counted_not_logged(gateway, request_id_of(response))
    assert sim.stats()["requests_total"] == 1


def test_suspended_organization_is_403(gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer) -> None:
    from accounts.models import Organization

    made = post(gateway, RESPONSES, key.raw, body=good_body()).json()["id"]
    Organization.objects.filter(pk=key.organization_id).update(status=Organization.Status.SUSPENDED)
    Organization.objects.get(pk=key.organization_id).save()  # the signal that records a change of its organization
    wait_until_gateway_caught_up(gateway)
    for response in (
        post(gateway, RESPONSES, key.raw, body=good_body()),
        httpx.get(f"{gateway.url}{RESPONSES}/{made}", headers=auth(key), timeout=10),
        httpx.delete(f"{gateway.url}{RESPONSES}/{made}", headers=auth(key), timeout=10),
    ):
        SUSPENDED.check(RESPONSES, response)
    assert sim.stats()["requests_total"] == 1


def test_model_outside_the_plan_is_403_and_unknown_model_404(gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer) -> None:
    from billing.models import Plan
    from routerpools.models import ModelAlias

    other = ModelAlias.objects.create(alias="other-model", pool=ModelAlias.objects.get(alias=ALIAS).pool)
    plan = Plan.objects.create(slug="limited", name="Limited", requests_per_minute=600)
    plan.allowed_aliases.add(other)
    limited = issue_key(slug="limited-org", plan="limited")
    wait_until_gateway_caught_up(gateway)
    response = post(gateway, RESPONSES, limited.raw, body=good_body())
    NOT_ALLOWED.check(RESPONSES, response)
    assert_logged(request_id_of(response), 403, usage=False)
    response = post(gateway, RESPONSES, key.raw, body=good_body(model="no-such-model"))
    NOT_FOUND.check(RESPONSES, response)
    assert_logged(request_id_of(response), 404, usage=False)
    assert sim.stats()["requests_total"] == 0


def test_unknown_response_ids_are_404(gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer) -> None:
    made = post(gateway, RESPONSES, key.raw, body=good_body()).json()["id"]
    other = issue_key(slug="other-org", plan="pro")
    failures: list[str] = []
    for response_id in ("resp_" + "0" * 24, "resp_nope", "x" * 64, made):
        raw_key = other if response_id == made else key
        for method in ("GET", "DELETE"):
            with collected(failures, f"{method} {response_id[:30]}"):
                response = httpx.request(method, f"{gateway.url}{RESPONSES}/{response_id}", headers=auth(raw_key), timeout=10)
                shown = response_id if len(response_id) <= 40 else f"{response_id[:40]}... (64 characters)"
                response_not_found(shown).check(RESPONSES, response)
                assert response.headers["x-ratelimit-limit-requests"]
                assert_logged(request_id_of(response), 404, usage=False)
        with collected(failures, f"previous {response_id[:30]}"):
            response = post(gateway, RESPONSES, raw_key.raw, body=good_body(previous_response_id=response_id))
            shown = response_id if len(response_id) <= 40 else f"{response_id[:40]}... (64 characters)"
            previous_not_found(shown).check(RESPONSES, response)
            assert_logged(request_id_of(response), 404, usage=False)
    response = post(gateway, RESPONSES, key.raw, body=good_body(previous_response_id="x" * 65))
    invalid(
        "previous_response_id",
        "invalid_value",
        message="Invalid value for 'previous_response_id': must be at most 64 characters long, got 65.",
    ).check(RESPONSES, response)
    assert not failures, "\n".join(failures)
    assert sim.stats()["requests_total"] == 1
    # The owner still has it.
    assert httpx.get(f"{gateway.url}{RESPONSES}/{made}", headers=auth(key), timeout=10).json()["id"] == made


def test_body_over_the_limit_is_413(gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer) -> None:
    raw = json.dumps(good_body(input="x" * LIMIT)).encode()
    TOO_LARGE.check(RESPONSES, post(gateway, RESPONSES, key.raw, content=raw))
    assert sim.stats()["requests_total"] == 0


def test_wrong_methods_and_routes(gateway: LiveGateway, key: IssuedKey) -> None:
    made = post(gateway, RESPONSES, key.raw, body=good_body()).json()["id"]
    cases = [
        ("GET", RESPONSES, "POST", "this route accepts POST only"),
        ("PUT", RESPONSES, "POST", "this route accepts POST only"),
        ("POST", f"{RESPONSES}/{made}", "GET, DELETE", "this route accepts GET or DELETE"),
        ("PATCH", f"{RESPONSES}/{made}", "GET, DELETE", "this route accepts GET or DELETE"),
    ]
    for method, path, allow, message in cases:
        response = httpx.request(method, f"{gateway.url}{path}", headers=auth(key), timeout=10)
        assert response.status_code == 405
        assert response.headers["allow"] == allow
        assert response.json() == {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
        assert_counted_not_logged(gateway, request_id_of(response))  # refused before the key was looked at
    # What this deployment does not offer under the route (input items, cancelling, compacting) is an unknown route.
    for method, path in (("GET", f"{RESPONSES}/{made}/input_items"), ("POST", f"{RESPONSES}/{made}/cancel")):
        response = httpx.request(method, f"{gateway.url}{path}", headers=auth(key), timeout=10)
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert response.json()["error"]["message"] == f"unknown route {method} {path}"


def test_retrieve_does_not_stream_again(gateway: LiveGateway, key: IssuedKey) -> None:
    made = post(gateway, RESPONSES, key.raw, body=good_body()).json()["id"]
    response = httpx.get(f"{gateway.url}{RESPONSES}/{made}?stream=true", headers=auth(key), timeout=10)
    invalid("stream", "unsupported_value", mentions="cannot be streamed again").check(RESPONSES, response)
    response = httpx.get(f"{gateway.url}{RESPONSES}/{made}?include[]=message.output_text.logprobs", headers=auth(key), timeout=10)
    assert response.status_code == 200 and response.json()["id"] == made


# --- the upstream ----------------------------------------------------------------------------------------------------------


def test_upstream_failures_in_openai_shape(gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer) -> None:
    for status, expected in ((503, UNAVAILABLE), (401, UPSTREAM_AUTH), (500, UPSTREAM_FAILED)):
        sim.configure(global_={"fail_status": status})
        for stream in (False, True):
            response = post(gateway, RESPONSES, key.raw, body=good_body(stream=stream))
            expected.check(RESPONSES, response)
            assert_no_leak(sim, response)
            rid = request_id_of(response)
            event = wait_for(lambda rid=rid: UsageEvent.objects.filter(request_id=rid).first())
            assert (event.status, event.route, event.http_status) == ("error", "responses", expected.status)


# --- the bounds of stored conversations, and of the queue ---------------------------------------------------------------------


@pytest.fixture
def bounded_gateway(gateway: LiveGateway, simulator: SimulatorServer) -> Iterator[LiveGateway]:
    """Small bounds, and a writer that would run only after a minute (so the queue keeps what it is given)."""
    env = {
        "PORTAL_RESPONSES_MAX_CONVERSATION_CHARS": "300000",
        "PORTAL_RESPONSES_MAX_CHAIN": "3",
        "PORTAL_RESPONSES_QUEUE_MAX_MB": "1",
        "PORTAL_USAGE_FLUSH_MS": "60000",
        "PORTAL_RESPONSES_READ_WAIT_MS": "0",
    }
    process = LiveGateway(env=live_gateway_env(simulator.base_url, **env)).start()
    yield process
    assert process.stop(signal.SIGTERM) == 0


def test_conversation_size_and_chain_length_are_bounded(
    bounded_gateway: LiveGateway, key: IssuedKey, sim: SimulatorServer
) -> None:
    gw = bounded_gateway
    response = post(gw, RESPONSES, key.raw, body=good_body(input="x" * 299_990, instructions="0123456789a"))
    invalid(
        "input",
        "invalid_value",
        message="Invalid value for 'input': a stored conversation may hold at most 300000 characters (its turns and "
        "instructions), and this one has 300001; shorten 'input' or send 'store': false.",
    ).check(RESPONSES, response)
    # Not stored, not bounded.
    assert (
        post(gw, RESPONSES, key.raw, body=good_body(input="x" * 299_990, instructions="0123456789a", store=False)).status_code
        == 200
    )
    ids = [post(gw, RESPONSES, key.raw, body=good_body(input="a" * 150_000)).json()["id"]]
    # The next turn would carry 150,000 characters of history, its answer, and 150,000 more.
    response = post(gw, RESPONSES, key.raw, body=good_body(input="b" * 150_000, previous_response_id=ids[0], store=False))
    invalid("previous_response_id", "invalid_value", mentions="start a new conversation").check(RESPONSES, response)
    for _ in range(2):
        made = post(gw, RESPONSES, key.raw, body=good_body(input="more", previous_response_id=ids[-1]))
        assert made.status_code == 200, made.text
        ids.append(made.json()["id"])
    requests = sim.stats()["requests_total"]
    response = post(gw, RESPONSES, key.raw, body=good_body(input="more", previous_response_id=ids[-1]))
    invalid(
        "previous_response_id",
        "invalid_value",
        message="Invalid value for 'previous_response_id': a conversation may hold at most 3 responses, and this one has 3; "
        "start a new one.",
    ).check(RESPONSES, response)
    assert sim.stats()["requests_total"] == requests


def test_a_full_store_queue_refuses_storing_with_503_and_loses_nothing(bounded_gateway: LiveGateway, key: IssuedKey) -> None:
    gw = bounded_gateway
    kept: list[str] = []
    refused: httpx.Response | None = None
    # The writer does not run: each stored response (200,000 characters and a few hundred more) stays queued until
    # the queue holds 1 MiB, after the sixth; the next request that would store one is refused before any router.
    for _ in range(10):
        response = post(gw, RESPONSES, key.raw, body=good_body(input="y" * 200_000, max_output_tokens=4))
        if response.status_code != 200:
            refused = response
            break
        kept.append(response.json()["id"])
    assert refused is not None and len(kept) == 6
    Expected(
        503,
        "api_error",
        "response_store_full",
        None,
        "api_error",
        "response_store_full",
        message="the service cannot store responses right now; try again shortly, or send 'store': false",
    ).check(RESPONSES, refused)
    assert refused.headers["retry-after"] == "5"
    assert post(gw, RESPONSES, key.raw, body=good_body(store=False)).status_code == 200
    # Every accepted one is still readable, from the queue.
    for response_id in (kept[0], kept[-1]):
        assert httpx.get(f"{gw.url}{RESPONSES}/{response_id}", headers=auth(key), timeout=10).status_code == 200
