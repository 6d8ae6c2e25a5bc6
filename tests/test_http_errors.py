"""Raw HTTP against a live gateway: every error of docs/surfaces.md's table on the three completion routes, exactly."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.utils import timezone

from gateway.translate.common import estimate_tokens
from tests.support.live import (
    ALIAS,
    ROUTER_KEY,
    SESSION_102_KEY,
    IssuedKey,
    LiveGateway,
    issue_key,
    wait_for,
    wait_until_gateway_caught_up,
    wait_until_usage_written,
)
from usage.models import RequestLog, UsageEvent

CHAT = "/v1/chat/completions"
ENVELOPE = "/v1/completions"
MESSAGES = "/v1/messages"
ROUTES = (CHAT, ENVELOPE, MESSAGES)
REQUEST_ID = re.compile(r"^req_[0-9a-f]{24}$")
LIMIT = 1_048_576
CHATML_HI = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
INVALID_KEY_MESSAGE = "invalid or revoked API key"
MISSING_KEY_MESSAGE = "missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"


def good_body(route: str, **extra: Any) -> dict[str, Any]:
    """A valid request body for a route; `extra` overrides or adds fields."""
    if route == ENVELOPE:
        body: dict[str, Any] = {"model": ALIAS, "prompt": "hi", "max_tokens": 8}
    else:
        body = {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    body.update(extra)
    return body


def post(
    gateway: LiveGateway,
    route: str,
    key: str | None = None,
    *,
    body: Any = None,
    content: bytes | None = None,
    style: str = "bearer",
    headers: dict[str, str] | None = None,
    timeout: float = 20,
) -> httpx.Response:
    sent = {"content-type": "application/json", **(headers or {})}
    if key is not None:
        if style == "bearer":
            sent["authorization"] = f"Bearer {key}"
        else:
            sent["x-api-key"] = key
    if route == MESSAGES:
        sent.setdefault("anthropic-version", "2023-06-01")
    data = content if content is not None else json.dumps(body).encode()
    return httpx.post(f"{gateway.url}{route}", content=data, headers=sent, timeout=timeout)


def request_id_of(response: httpx.Response) -> str:
    rid = response.headers.get("x-request-id", "")
    assert REQUEST_ID.match(rid), f"x-request-id {rid!r} in {dict(response.headers)}"
    return rid


@dataclass(frozen=True)
class Expected:
    """One error as each surface shows it."""

    status: int
    openai_type: str
    openai_code: str | None
    param: str | None
    anthropic_type: str
    envelope_code: str
    anthropic_status: int | None = None
    message: str | None = None  # exact, when given
    mentions: str | None = None  # a substring of the message, when given

    def status_for(self, route: str) -> int:
        return (self.anthropic_status or self.status) if route == MESSAGES else self.status

    def check(self, route: str, response: httpx.Response, *, model: str | None = None, pool: str | None = None) -> dict[str, Any]:
        """Asserts the route's own error shape; returns the decoded body."""
        rid = request_id_of(response)
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        if route == MESSAGES:
            assert response.status_code == (self.anthropic_status or self.status), response.text
            assert response.headers["request-id"] == rid
            assert set(body) == {"type", "error", "request_id"}
            assert body["type"] == "error"
            assert body["request_id"] == rid
            assert set(body["error"]) == {"type", "message"}
            assert body["error"]["type"] == self.anthropic_type
            message = body["error"]["message"]
        elif route == ENVELOPE:
            assert response.status_code == self.status, response.text
            assert "request-id" not in response.headers
            assert body["request_id"] == rid
            assert body["status"] == "failed"
            assert body["data"] is None
            assert body["model"] == model
            assert body["router_pool"] == pool
            assert set(body) == {"request_id", "status", "model", "router_pool", "data", "error"}
            assert set(body["error"]) == {"code", "message", "details"}
            assert body["error"]["code"] == self.envelope_code
            assert body["error"]["details"] is None
            message = body["error"]["message"]
        else:
            assert response.status_code == self.status, response.text
            assert "request-id" not in response.headers
            assert set(body) == {"error"}
            assert set(body["error"]) == {"message", "type", "param", "code"}
            assert body["error"]["type"] == self.openai_type
            assert body["error"]["code"] == self.openai_code
            assert body["error"]["param"] == self.param
            message = body["error"]["message"]
        assert isinstance(message, str) and message
        if self.message is not None:
            assert message == self.message
        if self.mentions is not None:
            assert self.mentions in message
        return body


def invalid(param: str | None, code: str | None, *, message: str | None = None, mentions: str | None = None) -> Expected:
    return Expected(
        400, "invalid_request_error", code, param, "invalid_request_error", "invalid_request", message=message, mentions=mentions
    )


UNAUTHORIZED = Expected(
    401, "invalid_request_error", "invalid_api_key", None, "authentication_error", "invalid_api_key", message=INVALID_KEY_MESSAGE
)
MISSING_KEY = Expected(
    401, "invalid_request_error", "invalid_api_key", None, "authentication_error", "invalid_api_key", message=MISSING_KEY_MESSAGE
)
SUSPENDED = Expected(
    403,
    "permission_error",
    "account_suspended",
    None,
    "permission_error",
    "permission_denied",
    message="this organization is suspended",
)
NOT_ALLOWED = Expected(
    403,
    "permission_error",
    "model_not_allowed",
    "model",
    "permission_error",
    "permission_denied",
    message=f"your plan does not include the model '{ALIAS}'",
)
NOT_FOUND = Expected(
    404,
    "invalid_request_error",
    "model_not_found",
    "model",
    "not_found_error",
    "model_not_found",
    message="the model 'no-such-model' does not exist",
)
TOO_LARGE = Expected(
    413,
    "invalid_request_error",
    "request_too_large",
    None,
    "request_too_large",
    "invalid_request",
    message=f"request body is larger than {LIMIT} bytes",
)
UNAVAILABLE = Expected(
    503,
    "api_error",
    "upstream_unavailable",
    None,
    "overloaded_error",
    "upstream_unavailable",
    anthropic_status=529,
    message="no upstream model server is available; try again shortly",
)
UPSTREAM_AUTH = Expected(
    502,
    "api_error",
    "upstream_error",
    None,
    "api_error",
    "upstream_error",
    message="the upstream model server rejected the gateway's credentials",
)
UPSTREAM_FAILED = Expected(
    502, "api_error", "upstream_error", None, "api_error", "upstream_error", message="the upstream model server failed to answer"
)
UPSTREAM_REFUSED = invalid(None, None, message="the model server could not process this request")


@pytest.fixture
def key(gateway: LiveGateway) -> IssuedKey:
    # The pro plan: these tests send many requests and must never meet the free plan's limits.
    return issue_key(slug="errors-org", plan="pro")


@contextmanager
def collected(failures: list[str], case: str) -> Iterator[None]:
    """Runs one case of a table; a failed assertion is kept, named, and the table carries on."""
    try:
        yield
    except AssertionError as exc:
        failures.append(f"{case}: {exc}")


def assert_logged(rid: str, status: int, *, usage: bool) -> RequestLog:
    row = wait_for(lambda: RequestLog.objects.filter(request_id=rid).first())
    assert row.status == status
    if not usage:
        # Refused before a model was chosen: a request log row and no usage event.
        assert not UsageEvent.objects.filter(request_id=rid).exists()
    return row


def assert_counted_not_logged(gateway: LiveGateway, rid: str) -> None:
    """Refused without an authenticated principal (no, a bad or a suspended organization's key): counted in
    gateway_anonymous_refusals_total, no row (PORTAL_ANONYMOUS_LOG_SAMPLE is 0; tests/hostile/test_billing.py)."""
    wait_until_usage_written(gateway)
    assert not RequestLog.objects.filter(request_id=rid).exists()
    assert not UsageEvent.objects.filter(request_id=rid).exists()


def assert_no_leak(sim: Any, response: httpx.Response) -> None:
    text = response.text
    for secret in (
        sim.base_url,
        f"127.0.0.1:{sim.port}",
        "/api/v3",
        ROUTER_KEY,
        SESSION_102_KEY,
        "simulated failure",
        "Invalid Authorization header format",
        "unauthorized",
    ):
        assert secret not in text, f"{secret!r} leaked into {text!r}"
    for name, value in response.headers.items():
        assert ROUTER_KEY not in value and SESSION_102_KEY not in value and sim.base_url not in value, name


# --- 400: the body ----------------------------------------------------------------------------------------------------

NOT_JSON = invalid(None, None, message="the request body is not valid JSON")
NOT_OBJECT = invalid(None, "invalid_type", message="The request body must be a JSON object, but got an array.")

BODY_CASES: dict[str, dict[str, tuple[Any, Expected]]] = {
    # case -> route -> (body, or bytes sent as is; expected)
    "not_json": {route: (b'{"model": "oss-20b", "messages": [', NOT_JSON) for route in ROUTES},
    "empty_body": {
        route: (b"", invalid(None, None, message="the request body is empty; send a JSON object")) for route in ROUTES
    },
    "json_array": {route: (b'[{"model": "oss-20b"}]', NOT_OBJECT) for route in ROUTES},
    "messages_a_string": {
        CHAT: (
            good_body(CHAT, messages="hi"),
            invalid(
                "messages", "invalid_type", message="Invalid type for 'messages': expected an array, but got a string instead."
            ),
        ),
        MESSAGES: (
            good_body(MESSAGES, messages="hi"),
            invalid(
                "messages", "invalid_type", message="Invalid type for 'messages': expected an array, but got a string instead."
            ),
        ),
        ENVELOPE: (
            good_body(ENVELOPE, prompt=["hi"]),
            invalid("prompt", "invalid_type", message="Invalid type for 'prompt': expected a string, but got an array instead."),
        ),
    },
    "max_tokens_a_string": {
        route: (
            good_body(route, max_tokens="ten"),
            invalid(
                "max_tokens",
                "invalid_type",
                message="Invalid type for 'max_tokens': expected an integer, but got a string instead.",
            ),
        )
        for route in ROUTES
    },
    "temperature_out_of_range": {
        CHAT: (
            good_body(CHAT, temperature=9),
            invalid("temperature", "invalid_value", message="Invalid value for 'temperature': must be between 0 and 2, got 9."),
        ),
        ENVELOPE: (
            good_body(ENVELOPE, temperature=9),
            invalid("temperature", "invalid_value", message="Invalid value for 'temperature': must be between 0 and 2, got 9."),
        ),
        MESSAGES: (
            good_body(MESSAGES, temperature=9),
            invalid("temperature", "invalid_value", message="Invalid value for 'temperature': must be between 0 and 1, got 9."),
        ),
    },
    "missing_messages": {
        CHAT: (
            {"model": ALIAS},
            invalid("messages", "missing_required_parameter", message="Missing required parameter: 'messages'."),
        ),
        MESSAGES: (
            {"model": ALIAS, "max_tokens": 8},
            invalid("messages", "missing_required_parameter", message="Missing required parameter: 'messages'."),
        ),
        ENVELOPE: (
            {"model": ALIAS},
            invalid("prompt", "missing_required_parameter", message="Missing required parameter: 'prompt'."),
        ),
    },
    "missing_model": {
        # The envelope falls back to PORTAL_DEFAULT_MODEL instead (tests/test_routing.py).
        CHAT: (
            {"messages": [{"role": "user", "content": "hi"}]},
            invalid("model", "missing_required_parameter", message="Missing required parameter: 'model'."),
        ),
        MESSAGES: (
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
            invalid("model", "missing_required_parameter", message="Missing required parameter: 'model'."),
        ),
    },
    "missing_max_tokens_on_messages": {
        MESSAGES: (
            good_body(MESSAGES, max_tokens=None),
            invalid("max_tokens", "missing_required_parameter", message="Missing required parameter: 'max_tokens'."),
        ),
    },
}


def test_bad_body_is_400_naming_the_field(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    failures: list[str] = []
    for case, routes in BODY_CASES.items():
        for route, (payload, expected) in routes.items():
            with collected(failures, f"{case} on {route}"):
                if isinstance(payload, bytes):
                    response = post(gateway, route, key.raw, content=payload)
                else:
                    response = post(gateway, route, key.raw, body={k: v for k, v in payload.items() if v is not None})
                expected.check(route, response)
                assert_logged(request_id_of(response), 400, usage=False)
    assert not failures, "\n".join(failures)
    assert sim.stats()["requests_total"] == 0  # nothing invalid reaches the router


# --- 400: what hosted routes do not offer -----------------------------------------------------------------------------

_NO_TOOLS = "Tool calling is not offered on hosted routes."
UNSUPPORTED_CHAT: dict[str, tuple[dict[str, Any], Expected]] = {
    "tools": (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
        invalid("tools", "unsupported_parameter", message=f"Unsupported parameter: 'tools'. {_NO_TOOLS}"),
    ),
    "functions": (
        {"functions": [{"name": "f", "parameters": {"type": "object"}}]},
        invalid("functions", "unsupported_parameter", message=f"Unsupported parameter: 'functions'. {_NO_TOOLS}"),
    ),
    "tool_choice_auto": (
        {"tool_choice": "auto"},
        invalid(
            "tool_choice",
            "unsupported_value",
            message=f"Unsupported value for 'tool_choice': only 'none' is accepted. {_NO_TOOLS}",
        ),
    ),
    "tool_role_message": (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_1", "content": "42"}]},
        invalid("messages[1].role", "unsupported_value", mentions="role 'tool'"),
    ),
    "image_part": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    ],
                }
            ]
        },
        invalid("messages[0].content[1].type", "unsupported_value", mentions="'image_url'"),
    ),
    "n_2": ({"n": 2}, invalid("n", "unsupported_value", mentions="'n' must be 1")),
    "response_format_json": (
        {"response_format": {"type": "json_object"}},
        invalid(
            "response_format",
            "unsupported_value",
            message="Unsupported value for 'response_format': only {'type': 'text'} is supported.",
        ),
    ),
    "logprobs": ({"logprobs": True}, invalid("logprobs", "unsupported_value", mentions="log probabilities")),
}


def test_chat_refuses_what_hosted_routes_do_not_offer(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    failures: list[str] = []
    for case, (extra, expected) in UNSUPPORTED_CHAT.items():
        for stream in (False, True):
            with collected(failures, f"{case} (stream={stream})"):
                response = post(gateway, CHAT, key.raw, body=good_body(CHAT, stream=stream, **extra))
                expected.check(CHAT, response)
                assert_logged(request_id_of(response), 400, usage=False)
    assert not failures, "\n".join(failures)
    assert sim.stats()["requests_total"] == 0


def test_chat_accepts_the_harmless_forms_of_those_fields(gateway: LiveGateway, key: IssuedKey) -> None:
    body = good_body(
        CHAT,
        tools=[],
        functions=[],
        tool_choice="none",
        n=1,
        response_format={"type": "text"},
        logprobs=False,
        unknown_field={"ignored": True},
    )
    response = post(gateway, CHAT, key.raw, body=body)
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"


UNSUPPORTED_MESSAGES: dict[str, tuple[dict[str, Any], Expected]] = {
    "tools": (
        {"tools": [{"name": "f", "input_schema": {"type": "object"}}]},
        invalid("tools", "unsupported_parameter", mentions="'tools'"),
    ),
    "tool_choice": ({"tool_choice": {"type": "auto"}}, invalid("tool_choice", "unsupported_parameter", mentions="'tool_choice'")),
    "image_block": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    ],
                }
            ]
        },
        invalid("messages[0].content[0].type", "unsupported_value", mentions="'messages[0].content[0].type'"),
    ),
    "tool_result_block": (
        {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}]}]},
        invalid("messages[0].content[0].type", "unsupported_value", mentions="'tool_result'"),
    ),
    "thinking": (
        {"thinking": {"type": "enabled", "budget_tokens": 1024}},
        invalid("thinking", "unsupported_value", mentions="'thinking'"),
    ),
}


def test_messages_refuses_what_hosted_routes_do_not_offer(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    failures: list[str] = []
    for case, (extra, expected) in UNSUPPORTED_MESSAGES.items():
        with collected(failures, case):
            response = post(gateway, MESSAGES, key.raw, body=good_body(MESSAGES, **extra))
            expected.check(MESSAGES, response)
            assert_logged(request_id_of(response), 400, usage=False)
    assert not failures, "\n".join(failures)
    assert sim.stats()["requests_total"] == 0


# --- 401: keys ----------------------------------------------------------------------------------------------------------


def _unknown_key() -> str:
    return f"ctr_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def _wrong_secret(raw: str) -> str:
    public = raw.rsplit("_", 1)[0] if raw.count("_") == 2 else raw[:17]
    wrong = secrets.token_urlsafe(32)
    assert len(wrong) == 43 and f"{public}_{wrong}" != raw
    return f"{public}_{wrong}"


def assert_refused_everywhere(
    gateway: LiveGateway, raw: str | None, expected: Expected, *, headers: dict[str, str] | None = None, secret: str | None = None
) -> None:
    secret = secret or raw
    for route in ROUTES:
        for style in ("bearer", "x-api-key"):
            if raw is None and style == "x-api-key":
                continue
            response = post(gateway, route, raw, body=good_body(route), style=style, headers=headers)
            expected.check(route, response)
            if secret:
                assert secret not in response.text
                assert secret[-12:] not in response.text
            assert_counted_not_logged(gateway, request_id_of(response))


def test_missing_key_is_401(gateway: LiveGateway, sim: Any) -> None:
    assert_refused_everywhere(gateway, None, MISSING_KEY)
    assert sim.stats()["requests_total"] == 0


def test_empty_and_non_bearer_authorization_is_401(gateway: LiveGateway, key: IssuedKey) -> None:
    assert_refused_everywhere(gateway, None, UNAUTHORIZED, headers={"authorization": f"Basic {key.raw}"}, secret=key.raw)
    assert_refused_everywhere(gateway, None, UNAUTHORIZED, headers={"authorization": "Bearer"})
    assert_refused_everywhere(gateway, None, MISSING_KEY, headers={"x-api-key": ""})


def test_bad_key_is_401_without_echoing_it(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    failures: list[str] = []
    bad_keys = {
        "malformed": "sk-not-a-cortensor-key",
        "truncated": key.raw[:-1],
        "unknown": _unknown_key(),
        "wrong_secret": _wrong_secret(key.raw),
        "other_case": key.raw.upper(),
    }
    for case, raw in bad_keys.items():
        assert raw != key.raw
        with collected(failures, case):
            assert_refused_everywhere(gateway, raw, UNAUTHORIZED)
    assert not failures, "\n".join(failures)
    assert sim.stats()["requests_total"] == 0
    # The real key still works: nothing above poisoned its cache entry.
    assert post(gateway, CHAT, key.raw, body=good_body(CHAT)).status_code == 200


def test_revoked_key_is_refused_within_a_second(gateway: LiveGateway, key: IssuedKey) -> None:
    from apikeys.models import ApiKey
    from apikeys.services import apikey_revoke

    for route in ROUTES:  # the key is now cached by the gateway
        assert post(gateway, route, key.raw, body=good_body(route)).status_code == 200
    apikey_revoke(api_key=ApiKey.objects.get(pk=key.key_id), actor_label="tests")
    revoked_at = time.monotonic()
    wait_for(lambda: post(gateway, CHAT, key.raw, body=good_body(CHAT)).status_code == 401, timeout=1.0, interval=0.02)
    assert time.monotonic() - revoked_at < 1.0 + 0.5  # the poll itself may overrun its last request
    assert_refused_everywhere(gateway, key.raw, UNAUTHORIZED)


def test_expired_key_is_401(gateway: LiveGateway, key: IssuedKey) -> None:
    from apikeys.models import ApiKey

    assert post(gateway, CHAT, key.raw, body=good_body(CHAT)).status_code == 200
    row = ApiKey.objects.get(pk=key.key_id)
    row.expires_at = timezone.now() - timedelta(seconds=1)
    row.save()
    wait_until_gateway_caught_up(gateway)
    assert_refused_everywhere(gateway, key.raw, UNAUTHORIZED)


def test_key_expiring_while_cached_is_refused(gateway: LiveGateway, key: IssuedKey) -> None:
    from apikeys.models import ApiKey

    row = ApiKey.objects.get(pk=key.key_id)
    row.expires_at = timezone.now() + timedelta(seconds=1.5)
    row.save()
    wait_until_gateway_caught_up(gateway)
    assert post(gateway, CHAT, key.raw, body=good_body(CHAT)).status_code == 200
    # No database change at expiry: the cached record's own expiry must be checked.
    wait_for(lambda: post(gateway, CHAT, key.raw, body=good_body(CHAT)).status_code == 401, timeout=3.0, interval=0.1)


def test_x_api_key_works_like_bearer_on_every_route(gateway: LiveGateway, key: IssuedKey) -> None:
    for style in ("bearer", "x-api-key"):
        for route in ROUTES:
            response = post(gateway, route, key.raw, body=good_body(route), style=style)
            assert response.status_code == 200, (style, route, response.text)
            request_id_of(response)
        for path in ("/v1/models", f"/v1/models/{ALIAS}"):
            header = {"authorization": f"Bearer {key.raw}"} if style == "bearer" else {"x-api-key": key.raw}
            response = httpx.get(f"{gateway.url}{path}", headers=header, timeout=10)
            assert response.status_code == 200, (style, path, response.text)
            request_id_of(response)
        header = {"authorization": f"Bearer {key.raw}"} if style == "bearer" else {"x-api-key": key.raw}
        response = httpx.post(
            f"{gateway.url}/v1/messages/count_tokens",
            headers=header,
            timeout=10,
            json={"model": ALIAS, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert response.status_code == 200, (style, response.text)
        assert response.json() == {"input_tokens": estimate_tokens(CHATML_HI)}


# --- 403 ------------------------------------------------------------------------------------------------------------------


def test_suspended_organization_is_403(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    from accounts.models import Organization

    assert post(gateway, CHAT, key.raw, body=good_body(CHAT)).status_code == 200
    org = Organization.objects.get(pk=key.organization_id)
    org.status = Organization.Status.SUSPENDED
    org.save()
    wait_until_gateway_caught_up(gateway)
    before = sim.stats()["requests_total"]
    for route in ROUTES:
        for style in ("bearer", "x-api-key"):
            response = post(gateway, route, key.raw, body=good_body(route), style=style)
            SUSPENDED.check(route, response)
            assert key.raw not in response.text
            assert_counted_not_logged(gateway, request_id_of(response))  # refused at authentication: no principal
    assert sim.stats()["requests_total"] == before


def test_model_outside_the_plan_is_403(gateway: LiveGateway, sim: Any) -> None:
    from billing.models import Plan
    from routerpools.models import ModelAlias

    other = ModelAlias.objects.create(alias="other-model", pool=ModelAlias.objects.get(alias=ALIAS).pool)
    plan = Plan.objects.create(slug="limited", name="Limited", requests_per_minute=600)
    plan.allowed_aliases.add(other)
    limited = issue_key(slug="limited-org", plan="limited")
    wait_until_gateway_caught_up(gateway)
    for route in ROUTES:
        response = post(gateway, route, limited.raw, body=good_body(route))
        NOT_ALLOWED.check(route, response, model=ALIAS)
        assert_logged(request_id_of(response), 403, usage=False)
    # The envelope's default model is refused the same way.
    response = post(gateway, ENVELOPE, limited.raw, body={"prompt": "hi"})
    NOT_ALLOWED.check(ENVELOPE, response, model=None)
    assert sim.stats()["requests_total"] == 0
    # The alias the plan does include is served.
    response = post(gateway, CHAT, limited.raw, body=good_body(CHAT, model="other-model"))
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "other-model"
    listed = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {limited.raw}"}, timeout=10).json()
    assert [m["id"] for m in listed["data"]] == ["other-model"]


# --- 404, 413, 405 -----------------------------------------------------------------------------------------------------------


def test_unknown_model_is_404(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    for route in ROUTES:
        response = post(gateway, route, key.raw, body=good_body(route, model="no-such-model"))
        NOT_FOUND.check(route, response, model="no-such-model")
        assert_logged(request_id_of(response), 404, usage=False)
    assert sim.stats()["requests_total"] == 0


def _oversized(route: str) -> bytes:
    body = good_body(route)
    filler = "x" * LIMIT
    if route == ENVELOPE:
        body["prompt"] = filler
    else:
        body["messages"] = [{"role": "user", "content": filler}]
    raw = json.dumps(body).encode()
    assert LIMIT < len(raw) < LIMIT + 200
    return raw


def test_body_over_the_limit_is_413(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    for route in ROUTES:
        # Refused by the server layer on the declared length, before the body is read or any view runs: no request
        # log row for it (counted in gateway_edge_refusals_total); tests/hostile/test_edges.py has the rest.
        response = post(gateway, route, key.raw, content=_oversized(route))
        TOO_LARGE.check(route, response)
    assert sim.stats()["requests_total"] == 0


def test_body_over_the_limit_without_content_length_is_413(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    for route in ROUTES:
        raw = _oversized(route)

        def chunks(data: bytes = raw):  # noqa: ANN202 - a generator: sent chunked, no Content-Length
            for i in range(0, len(data), 65536):
                yield data[i : i + 65536]

        headers = {"authorization": f"Bearer {key.raw}", "content-type": "application/json"}
        response = httpx.post(f"{gateway.url}{route}", content=chunks(), headers=headers, timeout=20)
        TOO_LARGE.check(route, response)
    assert sim.stats()["requests_total"] == 0


def test_body_at_the_limit_is_accepted(gateway: LiveGateway, key: IssuedKey) -> None:
    # Whitespace padding: exactly LIMIT bytes on the wire, a small prompt for the router.
    for route in ROUTES:
        raw = json.dumps(good_body(route)).encode()
        raw = raw[:-1] + b" " * (LIMIT - len(raw)) + b"}"
        assert len(raw) == LIMIT
        response = post(gateway, route, key.raw, content=raw)
        assert response.status_code == 200, response.text[:500]
        too_big = post(gateway, route, key.raw, content=raw[:-1] + b" }")
        TOO_LARGE.check(route, too_big)


def test_wrong_method_is_405_in_the_route_shape(gateway: LiveGateway, key: IssuedKey) -> None:
    for route in ROUTES:
        response = httpx.get(f"{gateway.url}{route}", headers={"authorization": f"Bearer {key.raw}"}, timeout=10)
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        rid = request_id_of(response)
        if route == MESSAGES:
            assert response.headers["request-id"] == rid
            assert response.json()["error"]["type"] == "invalid_request_error"
        elif route == ENVELOPE:
            assert response.json()["status"] == "failed"
            assert response.json()["error"]["code"] == "invalid_request"
        else:
            assert response.json()["error"]["type"] == "invalid_request_error"


# --- the upstream ----------------------------------------------------------------------------------------------------------


def test_failed_session_fails_over_to_the_other(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    sim.configure(sessions={"101": {"fail_status": 503}})
    responses: list[httpx.Response] = []

    def send_until_101_was_tried() -> bool:
        responses.append(post(gateway, CHAT, key.raw, body=good_body(CHAT)))
        # A session that failed is tried last for a while: keep asking until 101 got its turn.
        return len(responses) >= 4 and sim.stats()["requests"].get("101", 0) >= 1

    wait_for(send_until_101_was_tried, timeout=10, interval=0.05)
    for response in responses:
        assert response.status_code == 200, response.text
        request_id_of(response)
    stats = sim.stats()
    assert stats["requests"]["101"] >= 1
    assert stats["requests"]["102"] == len(responses)  # every request was answered by 102
    assert stats["statuses"] == {"503": stats["requests"]["101"], "200": len(responses)}
    rids = [request_id_of(r) for r in responses]
    wait_for(lambda: UsageEvent.objects.filter(request_id__in=rids).count() == len(rids))
    rows = UsageEvent.objects.filter(request_id__in=rids)
    assert {(r.status, r.http_status, r.session_id, r.error_code) for r in rows} == {("ok", 200, 102, "")}


def test_all_sessions_down_is_503_and_529(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    sim.configure(global_={"fail_status": 503})
    for route in ROUTES:
        for stream in (False, True):
            before = sim.stats()["requests"]
            response = post(gateway, route, key.raw, body=good_body(route, stream=stream))
            UNAVAILABLE.check(route, response, model=ALIAS, pool=ALIAS)
            assert_no_leak(sim, response)
            after = sim.stats()["requests"]
            # Both sessions were tried before giving up.
            assert after.get("101", 0) == before.get("101", 0) + 1
            assert after.get("102", 0) == before.get("102", 0) + 1
            rid = request_id_of(response)
            status = 529 if route == MESSAGES else 503
            assert_logged(rid, status, usage=True)
            event = wait_for(lambda rid=rid: UsageEvent.objects.filter(request_id=rid).first())
            assert (event.status, event.http_status, event.error_code) == ("error", status, "upstream_unavailable")
            assert (event.alias, event.pool, event.organization_id, event.api_key_id) == (
                ALIAS,
                ALIAS,
                key.organization_id,
                key.key_id,
            )
            assert event.route == {CHAT: "chat.completions", ENVELOPE: "completions", MESSAGES: "messages"}[route]
            assert (event.completion_tokens, event.streamed) == (0, False)


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"global_": {"fail_status": 401}}, id="fail_status_401"),
        pytest.param({"global_": {"fail_status": 403}}, id="fail_status_403"),
        pytest.param(
            {"global_": {"auth_key": "rotated-key"}, "sessions": {"102": {"auth_key": "rotated-102"}}}, id="key_mismatch"
        ),
    ],
)
def test_router_refusing_our_credentials_is_502(config: dict[str, Any], gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    sim.configure(**config)
    for route in ROUTES:
        before = sim.stats()["requests_total"]
        response = post(gateway, route, key.raw, body=good_body(route))
        UPSTREAM_AUTH.check(route, response, model=ALIAS, pool=ALIAS)
        assert_no_leak(sim, response)
        assert sim.stats()["requests_total"] == before + 1  # not retried: a configuration error
        rid = request_id_of(response)
        assert_logged(rid, 502, usage=True)
        event = wait_for(lambda rid=rid: UsageEvent.objects.filter(request_id=rid).first())
        assert (event.status, event.http_status, event.error_code) == ("error", 502, "upstream_error")
    assert "OPERATOR ALERT" in gateway.log()


def test_router_400_is_400_with_a_generic_message(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    sim.configure(global_={"fail_status": 400})
    for route in ROUTES:
        before = sim.stats()["requests_total"]
        response = post(gateway, route, key.raw, body=good_body(route))
        UPSTREAM_REFUSED.check(route, response, model=ALIAS, pool=ALIAS)
        assert_no_leak(sim, response)
        assert sim.stats()["requests_total"] == before + 1
        rid = request_id_of(response)
        assert_logged(rid, 400, usage=True)
        event = wait_for(lambda rid=rid: UsageEvent.objects.filter(request_id=rid).first())
        assert (event.status, event.http_status, event.error_code) == ("error", 400, "invalid_request")


def test_router_422_is_400_and_other_statuses_are_502(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    sim.configure(global_={"fail_status": 422})
    response = post(gateway, CHAT, key.raw, body=good_body(CHAT))
    UPSTREAM_REFUSED.check(CHAT, response)
    for status in (500, 404, 429):
        sim.configure(global_={"fail_status": status})
        before = sim.stats()["requests_total"]
        for route in ROUTES:
            response = post(gateway, route, key.raw, body=good_body(route))
            UPSTREAM_FAILED.check(route, response, model=ALIAS, pool=ALIAS)
            assert_no_leak(sim, response)
            assert "retry-after" not in response.headers
        assert sim.stats()["requests_total"] == before + len(ROUTES)


def test_hanging_upstream_is_503_once_each_session_had_the_alias_timeout(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    from routerpools.models import ModelAlias

    alias = ModelAlias.objects.get(alias=ALIAS)
    alias.upstream_timeout_s = 2
    alias.save()
    wait_until_gateway_caught_up(gateway)
    sim.configure(global_={"hang": True})
    for route, stream in ((CHAT, False), (MESSAGES, True)):
        started = time.monotonic()
        response = post(gateway, route, key.raw, body=good_body(route, stream=stream), timeout=15)
        elapsed = time.monotonic() - started
        # Each of the two sessions gets the alias's 2 s (the gateway's own 20 s bound the request as a whole).
        assert 3.8 <= elapsed < 6.0, elapsed
        UNAVAILABLE.check(route, response, model=ALIAS, pool=ALIAS)
        assert_no_leak(sim, response)
        assert sim.stats()["last_request"]["timeout"] == 2  # the router is told the alias timeout too
        rid = request_id_of(response)
        event = wait_for(lambda rid=rid: UsageEvent.objects.filter(request_id=rid).first())
        assert (event.status, event.error_code) == ("error", "upstream_unavailable")
    # The gateway dropped the hung connections.
    wait_for(lambda: sim.stats()["requests_open"] == 0, timeout=2)


# --- request ids and logs --------------------------------------------------------------------------------------------------


def test_every_response_carries_our_request_id(gateway: LiveGateway, key: IssuedKey) -> None:
    responses = []
    for route in ROUTES:
        responses.append(post(gateway, route, key.raw, body=good_body(route)))  # 200
        responses.append(post(gateway, route, key.raw, body=good_body(route, stream=True)))  # 200, SSE
        responses.append(post(gateway, route, None, body=good_body(route)))  # 401
        responses.append(post(gateway, route, key.raw, content=b"nope"))  # 400
        responses.append(post(gateway, route, key.raw, body=good_body(route, model="no-such-model")))  # 404
    auth = {"authorization": f"Bearer {key.raw}"}
    for path in ("/v1/models", f"/v1/models/{ALIAS}", "/v1/models/no-such-model", "/v1/nothing-here"):
        responses.append(httpx.get(f"{gateway.url}{path}", headers=auth, timeout=10))
        responses.append(httpx.get(f"{gateway.url}{path}", timeout=10))
    rids = [request_id_of(r) for r in responses]
    assert len(set(rids)) == len(rids)
    for response in responses:
        if response.url.path.startswith(MESSAGES):
            assert response.headers["request-id"] == response.headers["x-request-id"]
        else:
            assert "request-id" not in response.headers


def test_client_request_id_is_kept_apart_from_ours(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    for route in ROUTES:
        response = post(gateway, route, key.raw, body=good_body(route), headers={"x-request-id": "client-chosen-id"})
        assert response.status_code == 200
        rid = request_id_of(response)
        assert rid != "client-chosen-id"
        assert sim.stats()["last_request"]["client_reference"] == rid
        row = assert_logged(rid, 200, usage=True)
        assert row.client_request_id == "client-chosen-id"
        assert row.organization_id == key.organization_id
        assert row.method == "POST" and row.path == route


def test_every_authenticated_request_gets_a_request_log_row(gateway: LiveGateway, key: IssuedKey, sim: Any) -> None:
    cases: list[tuple[httpx.Response, int, bool]] = []
    for route in ROUTES:
        cases.append((post(gateway, route, key.raw, body=good_body(route)), 200, True))
        cases.append((post(gateway, route, key.raw, body=good_body(route, stream=True)), 200, True))
        cases.append((post(gateway, route, "ctr_bad", body=good_body(route)), 401, False))
        cases.append((post(gateway, route, key.raw, body=good_body(route, max_tokens="ten")), 400, False))
        cases.append((post(gateway, route, key.raw, body=good_body(route, model="no-such-model")), 404, False))
    sim.configure(global_={"fail_status": 503})
    for route in ROUTES:
        cases.append((post(gateway, route, key.raw, body=good_body(route)), 529 if route == MESSAGES else 503, True))
    for response, status, routed in cases:
        rid = request_id_of(response)
        assert response.status_code == status
        if status == 401:
            assert_counted_not_logged(gateway, rid)
            continue
        row = assert_logged(rid, status, usage=routed)
        assert row.path == response.url.path
        assert row.organization_id == (None if status == 401 else key.organization_id)
        assert row.duration_ms >= 0
        if routed:
            event = wait_for(lambda rid=rid: UsageEvent.objects.filter(request_id=rid).first())
            assert event.status == ("ok" if status == 200 else "error")


def test_other_v1_routes_get_request_log_rows(gateway: LiveGateway, key: IssuedKey) -> None:
    auth = {"authorization": f"Bearer {key.raw}"}
    url = gateway.url
    count = {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}]}
    cases = [
        (httpx.get(f"{url}/v1/models", headers=auth, timeout=10), 200),
        (httpx.get(f"{url}/v1/models", timeout=10), 401),
        (httpx.get(f"{url}/v1/models/{ALIAS}", headers=auth, timeout=10), 200),
        (httpx.get(f"{url}/v1/models/no-such-model", headers=auth, timeout=10), 404),
        (httpx.post(f"{url}/v1/messages/count_tokens", headers=auth, json=count, timeout=10), 200),
        (httpx.post(f"{url}/v1/messages/count_tokens", headers=auth, json={**count, "model": "no-such-model"}, timeout=10), 404),
        (httpx.get(f"{url}{CHAT}", headers=auth, timeout=10), 405),
        (httpx.get(f"{url}/v1/nothing-here", headers=auth, timeout=10), 404),
    ]
    # Refused before any key was looked at (no key, a method or a route that does not exist): no principal, so
    # counted in gateway_anonymous_refusals_total instead of a row each (PORTAL_ANONYMOUS_LOG_SAMPLE is 0).
    anonymous = {(401, "/v1/models"), (405, CHAT), (404, "/v1/nothing-here")}
    for response, status in cases:
        assert response.status_code == status, response.url
        if (status, response.url.path) in anonymous:
            continue
        row = assert_logged(request_id_of(response), status, usage=False)
        assert row.path == response.url.path
        assert row.method == response.request.method
    wait_until_usage_written(gateway)
    unlogged = [request_id_of(r) for r, status in cases if (status, r.url.path) in anonymous]
    assert len(unlogged) == 3 and not RequestLog.objects.filter(request_id__in=unlogged).exists()
