"""Bad input at volume on `/v1/responses` and `/v1/responses/{id}` of a live gateway (tests/test_fuzz.py's method).

Whatever arrives, the answer is in OpenAI's shape with our request id, and never a 5xx: the router simulator behind
the gateway is healthy, so no failure can be the upstream's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.models import Plan
from tests.support.live import ALIAS, LiveGateway, issue_key
from tests.test_fuzz import (
    FUZZ,
    REQUEST_ID,
    anonymous_refusals,
    bodies,
    check_openai_error,
    every_request_was_logged,
    header_sets,
    json_values,
    max_tokens,
    model,
    numbers,
    send,
)

part = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "output_text", "input_image", "input_file", "refusal", "text", ""]) | json_values},
    optional={"text": st.text(max_size=40) | json_values, "annotations": json_values, "image_url": json_values},
)
item = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "developer", "tool", ""]) | json_values,
        "content": st.text(max_size=60) | st.lists(part, max_size=3) | json_values,
    },
    optional={
        "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning", "item_reference"])
        | json_values,
        "id": json_values,
        "status": json_values,
    },
)
# Mostly ids that are not ours (refused at once); a well-formed unknown one costs the read wait, so it is rare.
response_ids = st.sampled_from(["resp_nope", "", "x" * 70, "msg_1"]) | st.just("resp_" + "0" * 24) | json_values

FIELDS: dict[str, Any] = {
    "model": model, "input": st.text(max_size=80) | st.lists(item, max_size=4) | json_values, "instructions": st.text(max_size=40) | json_values,
    "max_output_tokens": max_tokens, "temperature": numbers, "top_p": numbers, "stream": st.booleans() | json_values,
    "store": st.booleans() | json_values, "previous_response_id": response_ids, "metadata": json_values, "user": json_values,
    "tools": json_values, "tool_choice": st.sampled_from(["none", "auto"]) | json_values, "include": json_values,
    "reasoning": json_values, "text": st.just({"format": {"type": "text"}}) | json_values,
    "truncation": st.sampled_from(["auto", "disabled"]) | json_values, "background": json_values, "top_logprobs": json_values,
    "conversation": json_values, "prompt": json_values, "parallel_tool_calls": json_values,
}  # fmt: skip
VALID = {"model": ALIAS, "input": "hi", "max_output_tokens": 8}


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


def check(response: httpx.Response, gateway: LiveGateway) -> None:
    status = response.status_code
    assert status < 500, f"{status} {response.text[:500]}\n--- gateway log ---\n{gateway.log()[-3000:]}"
    assert REQUEST_ID.match(response.headers.get("x-request-id", "")), response.headers
    if status == 200 and response.headers["content-type"].startswith("text/event-stream"):
        frames = [frame.split("\n") for frame in response.text.split("\n\n") if frame]
        events = [json.loads(lines[1].removeprefix("data: ")) for lines in frames]
        assert [lines[0] for lines in frames] == [f"event: {e['type']}" for e in events]
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        assert events[0]["type"] == "response.created" and events[-1]["type"] in ("response.completed", "response.incomplete")
        return
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    if status != 200:
        check_openai_error(body)
    elif "deleted" in body:
        assert body["object"] == "response.deleted" and body["deleted"] is True, body
    else:
        assert body["object"] == "response" and body["model"] == ALIAS and body["status"] in ("completed", "incomplete"), body
        assert isinstance(body["output"][0]["content"][0]["text"], str)


def test_no_body_or_headers_make_responses_fail_or_answer_out_of_shape(
    gateway: LiveGateway, fuzz_key: str, client: httpx.Client
) -> None:
    seen: dict[int, int] = {}
    anonymous_before = anonymous_refusals(gateway)

    @FUZZ
    @given(body=bodies(FIELDS, VALID), request=header_sets("POST"))
    def run(body: bytes | None, request: tuple[str, dict[str, str]]) -> None:
        method, headers = request
        response = send(client, gateway, fuzz_key, "/v1/responses", method, headers, body)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        check(response, gateway)

    run()
    assert seen.get(200, 0) > 0 and sum(n for s, n in seen.items() if s >= 400) > 0, seen
    every_request_was_logged(gateway, sum(seen.values()), anonymous_before)


def test_no_id_or_headers_make_retrieve_and_delete_fail_or_answer_out_of_shape(
    gateway: LiveGateway, fuzz_key: str, client: httpx.Client
) -> None:
    made = client.post(f"{gateway.url}/v1/responses", json=VALID, headers={"authorization": f"Bearer {fuzz_key}"}).json()["id"]
    segment = st.sampled_from([made, made, "resp_nope", "..", "%2e%2e", "%00", "x" * 300]) | st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#/%"), min_size=1, max_size=30
    )
    seen: dict[int, int] = {}
    anonymous_before = anonymous_refusals(gateway)

    @FUZZ
    @given(response_id=segment, request=header_sets("GET"), body=st.none() | st.binary(max_size=40))
    def run(response_id: str, request: tuple[str, dict[str, str]], body: bytes | None) -> None:
        method, headers = request
        response = send(client, gateway, fuzz_key, f"/v1/responses/{response_id}", method, headers, body)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        check(response, gateway)

    run()
    assert seen.get(200, 0) + seen.get(404, 0) > 0, seen
    every_request_was_logged(gateway, sum(seen.values()) + 1, anonymous_before)
