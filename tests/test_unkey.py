"""Unkey as the key issuer: the client against a fake Unkey, the services and manage.py in unkey mode, and a live
gateway that creates, verifies, revokes and rate limits keys through Unkey, never showing the root key."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import openai
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from accounts.models import Organization
from apikeys.issuers import KeyIssuerUnavailable, display_parts
from apikeys.keys import generate_key
from apikeys.models import ApiKey, ApiKeyEvent
from apikeys.services import apikey_create, apikey_find, apikey_revoke
from apikeys.unkey import RatelimitSpec, RatelimitState, UnkeyClient, UnkeyError, Verification
from billing.models import Plan
from billing.services import organization_create, plans_seed_defaults, subscription_start
from gateway.auth import VerificationCache, unkey_refusal
from gateway.errors import AuthenticationFailed, AuthUnavailable, PermissionDenied, QuotaExceeded, RateLimited
from gateway.invalidation import Scope, record_change
from simulator import SimulatorServer, simulated_tokens
from tests.support import live
from tests.support.fake_unkey import FakeUnkey, FakeUnkeyServer
from tests.support.live import (
    ALIAS,
    ROOT,
    LiveGateway,
    _database_url_for_live_server,
    free_port,
    issue_key,
    live_gateway_env,
    router_env,
    seed_routing,
    wait_for,
    wait_until_gateway_caught_up,
    wait_until_usage_written,
)
from usage.models import UsageEvent

# Distinctive, so that a leak anywhere is found by a plain substring search.
ROOT_KEY = "unkey_root_" + secrets.token_hex(20)
API_ID = "api_portal_test"
GATEWAY_TIMEOUT_MS = 800
CHAT = {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
MESSAGES = {"model": ALIAS, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
ENVELOPE = {"model": ALIAS, "prompt": "hi", "max_tokens": 4}


@pytest.fixture(scope="module")
def unkey_server() -> Iterator[FakeUnkeyServer]:
    server = FakeUnkeyServer(root_key=ROOT_KEY, api_id=API_ID).start()
    yield server
    server.stop()


@pytest.fixture
def unkey(unkey_server: FakeUnkeyServer) -> Iterator[FakeUnkey]:
    """The fake's state, emptied and with every knob off for this test."""
    fake = unkey_server.fake
    fake.reset()
    fake.root_key = ROOT_KEY
    yield fake
    fake.reset()
    fake.root_key = ROOT_KEY


@pytest.fixture
def unkey_mode(settings, unkey_server: FakeUnkeyServer, unkey: FakeUnkey) -> FakeUnkey:  # noqa: ANN001
    """This process issues keys through the fake Unkey."""
    settings.PORTAL_KEY_ISSUER = "unkey"
    settings.PORTAL_UNKEY_ROOT_KEY = ROOT_KEY
    settings.PORTAL_UNKEY_API_ID = API_ID
    settings.PORTAL_UNKEY_BASE_URL = unkey_server.base_url
    settings.PORTAL_UNKEY_TIMEOUT_S = 0.5
    return unkey


def make_client(server: FakeUnkeyServer, *, root_key: str = ROOT_KEY, timeout_s: float = 0.5) -> UnkeyClient:
    return UnkeyClient(root_key=root_key, api_id=API_ID, base_url=server.base_url, timeout_s=timeout_s)


def verify(client: UnkeyClient, key: str, ratelimits: list[dict[str, Any]] | None = None) -> Verification:
    async def go() -> Verification:
        try:
            return await client.verify_key(key, ratelimits=ratelimits)
        finally:
            await client.aclose()

    return asyncio.run(go())


def create(client: UnkeyClient, **overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "name": "prod",
        "external_id": "acme",
        "meta": {"apiKeyId": 7, "organizationId": 3, "planSlug": "pro"},
        "prefix": "ctr",
        "byte_length": 32,
        **overrides,
    }
    return client.create_key(**fields)


def assert_root_key_absent(*texts: object) -> None:
    for text in texts:
        assert ROOT_KEY not in str(text)
        assert ROOT_KEY[11:] not in str(text)  # not even the random part


def error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + repr(exc.args)


# --- the client against the fake ------------------------------------------------------------------------


def test_create_then_verify_answers_valid_with_meta_identity_and_the_named_ratelimit(
    unkey_server: FakeUnkeyServer, unkey: FakeUnkey
) -> None:
    client = make_client(unkey_server)
    created = create(client, ratelimits=[RatelimitSpec("requests", 5, 60_000)])
    assert created.key.startswith("ctr_") and len(created.key) >= 44
    assert created.key_id.startswith("key_")
    assert created.key not in repr(created)
    assert unkey.recorded("createKey") == [
        {
            "apiId": API_ID,
            "prefix": "ctr",
            "name": "prod",
            "byteLength": 32,
            "externalId": "acme",
            "meta": {"apiKeyId": 7, "organizationId": 3, "planSlug": "pro"},
            "ratelimits": [{"name": "requests", "limit": 5, "duration": 60_000, "autoApply": True}],
        }
    ]
    before = int(time.time() * 1000)
    result = verify(client, created.key, [{"name": "requests", "cost": 1}])
    assert unkey.recorded("verifyKey") == [{"key": created.key, "ratelimits": [{"name": "requests", "cost": 1}]}]
    (limit,) = result.ratelimits
    assert (result.valid, result.code, result.key_id) == (True, "VALID", created.key_id)
    assert result.meta == {"apiKeyId": 7, "organizationId": 3, "planSlug": "pro"}
    assert result.identity_external_id == "acme"
    assert result.expires_ms is None
    assert (limit.name, limit.limit, limit.remaining, limit.exceeded, limit.duration_ms) == ("requests", 5, 4, False, 60_000)
    assert limit.reset_ms % 60_000 == 0 and before < limit.reset_ms <= before + 60_000


def test_a_disabled_key_verifies_as_disabled(unkey_server: FakeUnkeyServer, unkey: FakeUnkey) -> None:
    client = make_client(unkey_server)
    created = create(client)
    client.disable_key(created.key_id)
    assert unkey.recorded("updateKey") == [{"keyId": created.key_id, "enabled": False}]
    result = verify(client, created.key)
    assert (result.valid, result.code, result.key_id) == (False, "DISABLED", created.key_id)


def test_an_expired_key_verifies_as_expired(unkey_server: FakeUnkeyServer, unkey: FakeUnkey) -> None:
    client = make_client(unkey_server)
    expires = unkey.now_ms() + 60_000
    created = create(client, expires_ms=expires)
    assert unkey.recorded("createKey")[0]["expires"] == expires
    assert verify(client, created.key).code == "VALID"
    unkey.advance(61_000)
    result = verify(client, created.key)
    assert (result.valid, result.code, result.expires_ms) == (False, "EXPIRED", expires)


def test_the_named_ratelimit_is_a_fixed_window(unkey_server: FakeUnkeyServer, unkey: FakeUnkey) -> None:
    client = make_client(unkey_server)
    created = create(client, ratelimits=[RatelimitSpec("requests", 2, 3_600_000)])
    asked = [{"name": "requests", "cost": 1}]
    assert [verify(client, created.key, asked).ratelimits[0].remaining for _ in range(2)] == [1, 0]
    limited = verify(client, created.key, asked)
    assert (limited.valid, limited.code) == (False, "RATE_LIMITED")
    assert limited.ratelimits[0].exceeded is True and limited.ratelimits[0].remaining == 0
    unkey.advance(3_600_000)
    assert verify(client, created.key, asked).code == "VALID"


def test_an_unknown_or_deleted_key_is_not_found(unkey_server: FakeUnkeyServer, unkey: FakeUnkey) -> None:
    client = make_client(unkey_server)
    result = verify(client, "ctr_" + "x" * 40)
    assert result == Verification(valid=False, code="NOT_FOUND")
    created = create(client)
    client.delete_key(created.key_id)
    assert verify(client, created.key).code == "NOT_FOUND"
    with pytest.raises(UnkeyError) as info:
        client.delete_key(created.key_id)
    assert (info.value.status, str(info.value).split(" (")[0]) == (404, "Unkey deleteKey failed: HTTP 404")


def test_a_slow_unkey_is_an_error_within_the_deadline(unkey_server: FakeUnkeyServer, unkey: FakeUnkey) -> None:
    client = make_client(unkey_server, timeout_s=0.3)
    created = create(client)
    unkey.configure(delay_s=2.0)
    for call in (lambda: verify(client, created.key), lambda: create(client)):
        started = time.monotonic()
        with pytest.raises(UnkeyError) as info:
            call()
        assert time.monotonic() - started < 1.0
        assert str(info.value).endswith("failed: no answer within 0.3s")


@pytest.mark.parametrize(
    ("knobs", "reason"),
    [
        ({"fail_status": 500}, "HTTP 500"),
        ({"fail_status": 503}, "HTTP 503"),
        ({"malformed": True}, "HTTP 200 with a body that is not JSON"),
    ],
)
def test_a_failing_unkey_is_an_error_that_does_not_quote_its_body(
    unkey_server: FakeUnkeyServer, unkey: FakeUnkey, knobs: dict[str, Any], reason: str
) -> None:
    client = make_client(unkey_server)
    created = create(client)
    unkey.configure(**knobs)
    with pytest.raises(UnkeyError) as info:
        verify(client, created.key)
    assert info.value.reason == reason
    assert "simulated failure" not in error_text(info.value)
    assert created.key not in error_text(info.value)
    with pytest.raises(UnkeyError):
        client.disable_key(created.key_id)


def test_unkey_unreachable_is_a_transport_error() -> None:
    client = UnkeyClient(root_key=ROOT_KEY, api_id=API_ID, base_url=f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
    with pytest.raises(UnkeyError) as info:
        verify(client, "ctr_" + "a" * 40)
    assert info.value.reason == "transport error (ConnectError)"


def test_a_refused_root_key_is_an_error_that_never_shows_the_root_key(
    unkey_server: FakeUnkeyServer, unkey: FakeUnkey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = make_client(unkey_server, root_key=ROOT_KEY + "-wrong")
    right = make_client(unkey_server)
    created = create(right)
    errors: list[UnkeyError] = []
    for call in (lambda: verify(wrong, created.key), lambda: create(wrong), lambda: wrong.disable_key(created.key_id)):
        with pytest.raises(UnkeyError) as info:
            call()
        errors.append(info.value)
    assert [e.status for e in errors] == [401, 401, 401]
    assert errors[0].reason == "HTTP 401 (the root key was refused)"
    assert errors[0].request_id is not None and errors[0].request_id.startswith("req_")
    assert unkey.key(created.key_id).enabled is True
    assert [r.authorized for r in unkey.requests] == [True, False, False, False]
    assert_root_key_absent(*(error_text(e) for e in errors), repr(wrong), repr(right), caplog.text)


# --- what a verification means at the gateway ------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error", "status", "openai_code"),
    [
        ("NOT_FOUND", AuthenticationFailed, 401, "invalid_api_key"),
        ("DISABLED", AuthenticationFailed, 401, "invalid_api_key"),
        ("EXPIRED", AuthenticationFailed, 401, "invalid_api_key"),
        ("SOMETHING_NEW", AuthenticationFailed, 401, "invalid_api_key"),
        ("USAGE_EXCEEDED", QuotaExceeded, 429, "insufficient_quota"),
        ("FORBIDDEN", PermissionDenied, 403, "permission_denied"),
        ("INSUFFICIENT_PERMISSIONS", PermissionDenied, 403, "permission_denied"),
        ("RATE_LIMITED", RateLimited, 429, "rate_limit_exceeded"),
    ],
)
def test_each_verification_code_maps_to_one_error(code: str, error: type, status: int, openai_code: str) -> None:
    refusal = unkey_refusal(Verification(valid=False, code=code, key_id="key_1"))
    assert type(refusal) is error
    assert (refusal.status, refusal.code) == (status, openai_code)
    if error is AuthenticationFailed:
        assert refusal.message == "invalid or revoked API key"  # the same words as a local key
    if status == 429:
        assert refusal.headers["retry-after"].isdigit()
    assert unkey_refusal(Verification(valid=True, code="VALID", key_id="key_1")) is None


def test_a_rate_limited_answer_gives_retry_after_and_the_surface_headers() -> None:
    now = 1_700_000_000.25
    reset_ms = 1_700_000_037_000  # 36.75 s away: 37 whole seconds
    limited = Verification(
        valid=False,
        code="RATE_LIMITED",
        key_id="key_1",
        ratelimits=(RatelimitState("requests", 2, 0, reset_ms, True, 60_000),),
    )
    openai_err = unkey_refusal(limited, surface="openai", now=now)
    assert isinstance(openai_err, RateLimited)
    assert openai_err.headers == {
        "retry-after": "37",
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "37s",
    }
    assert openai_err.message == "API key requests limit of 2 per 1m0s reached; resets in 37s"
    assert openai_err.details == {"limit": "requests_per_minute", "scope": "key", "limit_value": 2, "reset_seconds": 37}
    anthropic_err = unkey_refusal(limited, surface="anthropic", now=now)
    assert anthropic_err.headers == {
        "retry-after": "37",
        "anthropic-ratelimit-requests-limit": "2",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:57Z",
    }
    # Without a surface (the pipeline does not pass one yet), both families.
    assert unkey_refusal(limited, now=now).headers == {**openai_err.headers, **anthropic_err.headers}


def test_auth_unavailable_is_a_503_on_every_surface() -> None:
    err = AuthUnavailable()
    assert (err.status, err.status_for_anthropic, err.openai_type, err.code, err.anthropic_type, err.envelope_code) == (
        503,
        503,
        "api_error",
        "auth_unavailable",
        "api_error",
        "auth_unavailable",
    )


def test_display_parts_show_at_most_a_third_of_the_random_part() -> None:
    raw = "ctr_" + "A" * 12 + "B" * 28 + "wxyz"
    assert display_parts(raw) == ("A" * 12, "ctr_" + "A" * 12, "wxyz")
    assert display_parts("ctr_abcdefghijklmnopqrstu") == ("abcdefg", "ctr_abcdefg", "rstu")


# --- the services in unkey mode --------------------------------------------------------------------------


def _expected_hash(raw: str) -> str:
    return hmac.new(settings.PORTAL_API_KEY_PEPPER.encode(), raw.encode(), hashlib.sha256).hexdigest()


@pytest.mark.django_db
def test_apikey_create_issues_at_unkey_and_keeps_only_metadata(unkey_mode: FakeUnkey) -> None:
    plans_seed_defaults()
    org = organization_create(slug="acme", name="Acme", plan_slug="pro")
    expires = timezone.now() + timedelta(days=30)
    created = apikey_create(organization=org, name="prod", expires_at=expires, actor_label="tests", source_ip="10.1.2.3")
    raw = created.raw
    row = ApiKey.objects.get()
    (sent,) = unkey_mode.recorded("createKey")
    assert sent == {
        "apiId": API_ID,
        "prefix": "ctr",
        "name": "prod",
        "byteLength": 32,
        "externalId": "acme",
        "meta": {"apiKeyId": row.pk, "organizationId": org.pk, "planSlug": "pro"},
        "expires": int(expires.timestamp() * 1000),
        "ratelimits": [{"name": "requests", "limit": 600, "duration": 60_000, "autoApply": True}],
    }
    fake_key = unkey_mode.key(row.external_id)
    assert fake_key.digest == hashlib.sha256(raw.encode()).hexdigest()  # the key handed back is Unkey's
    assert (row.issuer, row.public_id, row.prefix, row.last_four) == ("unkey", raw[4:16], raw[:16], raw[-4:])
    assert row.key_hash == _expected_hash(raw)
    assert (row.expires_at, row.revoked_at, row.name) == (expires, None, "prod")
    assert row.masked == f"{raw[:16]}_…{raw[-4:]}"
    assert apikey_find(id_or_prefix=row.prefix) == row
    assert list(row.events.values_list("action", "actor_label", "source_ip")) == [("create", "tests", "10.1.2.3")]
    secret = raw[4:]
    with connection.cursor() as cursor:
        for table in (ApiKey._meta.db_table, ApiKeyEvent._meta.db_table):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            for value in (str(v) for r in cursor.fetchall() for v in r):
                assert raw not in value and secret[:-4] not in value and secret[12:] not in value


@pytest.mark.django_db
def test_a_plan_change_or_a_plan_edit_reaches_the_organizations_live_unkey_keys(
    unkey_mode: FakeUnkey,
    django_capture_on_commit_callbacks,
    caplog: pytest.LogCaptureFixture,  # noqa: ANN001
) -> None:
    plans_seed_defaults()
    org = organization_create(slug="acme", name="Acme", plan_slug="free")
    live = apikey_create(organization=org, name="live", actor_label="tests")
    revoked = apikey_create(organization=org, name="old", actor_label="tests")
    with django_capture_on_commit_callbacks(execute=True):
        apikey_revoke(api_key=revoked.api_key, actor_label="tests")
    live_row = ApiKey.objects.get(pk=live.api_key.pk)
    free, pro = Plan.objects.get(slug="free"), Plan.objects.get(slug="pro")
    assert unkey_mode.key(live_row.external_id).ratelimits["requests"].limit == free.requests_per_minute

    with django_capture_on_commit_callbacks(execute=True):
        subscription_start(organization=org, plan=pro)  # the upgrade
    fake_key = unkey_mode.key(live_row.external_id)
    assert fake_key.ratelimits["requests"].limit == pro.requests_per_minute
    assert fake_key.meta == {"apiKeyId": live_row.pk, "organizationId": org.pk, "planSlug": "pro"}
    updates = unkey_mode.recorded("updateKey")
    assert [u["keyId"] for u in updates if "ratelimits" in u] == [live_row.external_id]  # not the revoked key

    with django_capture_on_commit_callbacks(execute=True):
        pro.requests_per_minute = 777  # staff edit the plan itself
        pro.save()
    assert unkey_mode.key(live_row.external_id).ratelimits["requests"].limit == 777

    with django_capture_on_commit_callbacks(execute=True):
        org.name = "Acme Inc"  # not a plan change: Unkey is not called
        org.save()
    assert len(unkey_mode.recorded("updateKey")) == len(updates) + 1

    unkey_mode.configure(fail_status=503, only=["updateKey"])
    with caplog.at_level(logging.ERROR, logger="apikeys.issuers"), django_capture_on_commit_callbacks(execute=True):
        subscription_start(organization=org, plan=free)  # Unkey down: the change stands, an error line says so
    assert Organization.objects.get(pk=org.pk).plan_id == free.pk
    assert any("could not update Unkey key" in r.getMessage() for r in caplog.records)
    assert ROOT_KEY not in caplog.text


@pytest.mark.django_db
def test_apikey_create_with_unkey_down_creates_nothing(unkey_mode: FakeUnkey, caplog: pytest.LogCaptureFixture) -> None:
    plans_seed_defaults()
    org = Organization.objects.create(slug="acme", name="Acme")
    unkey_mode.configure(fail_status=500)
    with pytest.raises(KeyIssuerUnavailable) as info:
        apikey_create(organization=org, name="prod", actor_label="tests")
    assert str(info.value) == "the key issuer (Unkey) is unavailable; no key was created, try again"
    assert isinstance(info.value, ValueError)
    assert ApiKey.objects.count() == 0 and ApiKeyEvent.objects.count() == 0
    assert "could not create a key at Unkey for organization acme: Unkey createKey failed: HTTP 500" in caplog.text
    assert_root_key_absent(caplog.text, error_text(info.value))


@pytest.mark.django_db
def test_apikey_create_takes_the_unkey_key_back_when_our_write_fails(
    unkey_mode: FakeUnkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    plans_seed_defaults()
    org = Organization.objects.create(slug="acme", name="Acme")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the audit write failed")

    monkeypatch.setattr(ApiKeyEvent.objects, "create", broken)
    with pytest.raises(RuntimeError):
        apikey_create(organization=org, name="prod", actor_label="tests")
    (deleted,) = unkey_mode.recorded("deleteKey")
    assert list(deleted) == ["keyId"] and deleted["keyId"].startswith("key_")
    assert unkey_mode.keys == {}  # no working key at Unkey without our row
    assert ApiKey.objects.count() == 0


@pytest.mark.django_db
def test_apikey_revoke_disables_the_key_at_unkey_once_committed(
    unkey_mode: FakeUnkey, django_capture_on_commit_callbacks: Any
) -> None:
    plans_seed_defaults()
    key = issue_key(slug="acme")
    row = ApiKey.objects.get(pk=key.key_id)
    with django_capture_on_commit_callbacks(execute=False) as pending:
        apikey_revoke(api_key=row, actor_label="tests")
    assert unkey_mode.recorded("updateKey") == []  # not before our revocation is committed
    for callback in pending:
        callback()
    assert unkey_mode.recorded("updateKey") == [{"keyId": row.external_id, "enabled": False}]
    assert unkey_mode.key(row.external_id).enabled is False
    # A second revoke writes no second event, and asks Unkey again (how a failed disable is retried).
    with django_capture_on_commit_callbacks(execute=True):
        apikey_revoke(api_key=row, actor_label="again")
    assert len(unkey_mode.recorded("updateKey")) == 2
    assert list(ApiKeyEvent.objects.filter(api_key=row).values_list("action", "actor_label")) == [
        ("revoke", "tests"),
        ("create", "tests"),
    ]


@pytest.mark.django_db
def test_apikey_revoke_with_unkey_down_still_revokes_here(
    unkey_mode: FakeUnkey, django_capture_on_commit_callbacks: Any, caplog: pytest.LogCaptureFixture
) -> None:
    plans_seed_defaults()
    key = issue_key(slug="acme")
    row = ApiKey.objects.get(pk=key.key_id)
    unkey_mode.configure(delay_s=2.0)
    started = time.monotonic()
    with django_capture_on_commit_callbacks(execute=True):
        revoked = apikey_revoke(api_key=row, actor_label="tests")
    assert time.monotonic() - started < 1.5
    assert revoked.revoked_at is not None
    assert unkey_mode.key(row.external_id).enabled is True
    assert (
        f"could not disable Unkey key {row.external_id} (revoked here; revoke again to retry): "
        "Unkey updateKey failed: no answer within 0.5s"
    ) in caplog.text
    assert_root_key_absent(caplog.text)


@pytest.mark.django_db
def test_list_keys_reads_the_same_in_unkey_mode(unkey_mode: FakeUnkey) -> None:
    import io

    plans_seed_defaults()
    first = issue_key(slug="acme", name="first")
    second = issue_key(slug="acme", name="second")
    apikey_revoke(api_key=ApiKey.objects.get(pk=first.key_id), actor_label="tests")
    out = io.StringIO()
    call_command("list_keys", "--org", "acme", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["ID", "KEY", "NAME", "STATUS", "CREATED", "LAST", "USED", "EXPIRES"]
    cells = [line.split()[:4] for line in lines[1:]]
    assert cells == [
        [str(second.key_id), f"{second.raw[:16]}_…{second.raw[-4:]}", "second", "active"],
        [str(first.key_id), f"{first.raw[:16]}_…{first.raw[-4:]}", "first", "revoked"],
    ]
    for key in (first, second):
        assert key.raw not in out.getvalue()


# --- manage.py in unkey mode (a subprocess with its own environment) -------------------------------------


def unkey_env(server: FakeUnkeyServer, **overrides: str) -> dict[str, str]:
    return {
        "PORTAL_KEY_ISSUER": "unkey",
        "PORTAL_UNKEY_ROOT_KEY": ROOT_KEY,
        "PORTAL_UNKEY_API_ID": API_ID,
        "PORTAL_UNKEY_BASE_URL": server.base_url,
        **overrides,
    }


def manage(server: FakeUnkeyServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "PORTAL_ROUTER_")) and k != "PORTAL_DEFAULT_MODEL"}
    env.update({"DJANGO_SETTINGS_MODULE": "portal_project.settings", "DATABASE_URL": _database_url_for_live_server()})
    env.update(unkey_env(server, PORTAL_UNKEY_TIMEOUT_MS="1000"))
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.django_db(transaction=True)
def test_manage_py_issues_and_revokes_a_key_at_unkey(unkey_server: FakeUnkeyServer, unkey: FakeUnkey) -> None:
    plans_seed_defaults()
    org = organization_create(slug="ops", name="Ops")  # the default plan: free
    issued = manage(unkey_server, "issue_key", "--org", "ops", "--name", "from the shell", "--expires-in-days", "7")
    assert issued.returncode == 0, issued.stderr
    lines = issued.stdout.split("\n")
    assert lines[1:] == [""], "exactly one line on stdout"
    raw = lines[0]
    assert raw.startswith("ctr_") and len(raw) >= 44
    row = ApiKey.objects.get()
    (sent,) = unkey.recorded("createKey")
    assert sent["meta"] == {"apiKeyId": row.pk, "organizationId": org.pk, "planSlug": "free"}
    assert sent["externalId"] == "ops"
    assert sent["expires"] == int(row.expires_at.timestamp() * 1000)
    assert sent["ratelimits"] == [{"name": "requests", "limit": 20, "duration": 60_000, "autoApply": True}]
    assert unkey.key(row.external_id).enabled is True
    assert verify(make_client(unkey_server), raw).code == "VALID"
    assert issued.stderr.startswith(f"issued key {row.pk} {row.prefix} for ops (expires ")
    assert raw not in issued.stderr

    revoked = manage(unkey_server, "revoke_key", row.prefix)
    assert revoked.returncode == 0, revoked.stderr
    row.refresh_from_db()
    assert revoked.stdout == f"{row.masked} (from the shell, ops) revoked at {row.revoked_at.isoformat()}\n"
    assert unkey.recorded("updateKey") == [{"keyId": row.external_id, "enabled": False}]
    assert unkey.key(row.external_id).enabled is False
    assert verify(make_client(unkey_server), raw).code == "DISABLED"
    assert list(ApiKeyEvent.objects.filter(api_key=row).order_by("created_at").values_list("action", "actor_label")) == [
        ("create", "manage.py issue_key"),
        ("revoke", "manage.py revoke_key"),
    ]
    assert_root_key_absent(issued.stdout, issued.stderr, revoked.stdout, revoked.stderr)


@pytest.mark.django_db(transaction=True)
def test_manage_py_issue_key_with_unkey_refusing_the_root_key_is_one_clean_line(
    unkey_server: FakeUnkeyServer, unkey: FakeUnkey
) -> None:
    plans_seed_defaults()
    Organization.objects.create(slug="ops", name="Ops")
    unkey.root_key = "a-rotated-root-key"
    result = manage(unkey_server, "issue_key", "--org", "ops", "--name", "k")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.endswith("CommandError: the key issuer (Unkey) is unavailable; no key was created, try again\n")
    assert "Traceback" not in result.stderr
    assert ApiKey.objects.count() == 0
    assert_root_key_absent(result.stderr)


# --- a live gateway in unkey mode ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unkey_gateway_process(
    django_db_setup: Any, django_db_blocker: Any, simulator: SimulatorServer, unkey_server: FakeUnkeyServer
) -> Iterator[LiveGateway]:
    # No verification cache here: these tests watch what each of Unkey's answers does to a request.
    env = live_gateway_env(
        simulator.base_url,
        **unkey_env(unkey_server, PORTAL_UNKEY_TIMEOUT_MS=str(GATEWAY_TIMEOUT_MS), PORTAL_UNKEY_CACHE_TTL_MS="0"),
    )
    gateway = LiveGateway(env=env).start()
    yield gateway
    gateway.stop()
    assert_root_key_absent(gateway.log())


@pytest.fixture
def unkey_gateway(
    transactional_db: Any, unkey_gateway_process: LiveGateway, sim: SimulatorServer, unkey_mode: FakeUnkey
) -> Iterator[LiveGateway]:
    live.LIVE_ROUTER_ENV.clear()
    live.LIVE_ROUTER_ENV.update(router_env(sim.base_url))
    seed_routing()
    wait_until_gateway_caught_up(unkey_gateway_process)
    yield unkey_gateway_process
    time.sleep(0.06)
    wait_until_usage_written(unkey_gateway_process)
    assert_root_key_absent(unkey_gateway_process.log())


def chat(gateway: LiveGateway, raw: str, *, timeout: float = 10) -> httpx.Response:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", headers={"authorization": f"Bearer {raw}"}, json=CHAT, timeout=timeout
    )
    assert_root_key_absent(response.text, response.headers)
    return response


def messages(gateway: LiveGateway, raw: str) -> httpx.Response:
    response = httpx.post(
        f"{gateway.url}/v1/messages", headers={"x-api-key": raw, "anthropic-version": "2023-06-01"}, json=MESSAGES, timeout=10
    )
    assert_root_key_absent(response.text, response.headers)
    return response


def envelope(gateway: LiveGateway, raw: str) -> httpx.Response:
    response = httpx.post(f"{gateway.url}/v1/completions", headers={"authorization": f"Bearer {raw}"}, json=ENVELOPE, timeout=10)
    assert_root_key_absent(response.text, response.headers)
    return response


def assert_invalid_key(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == {
        "error": {
            "message": "invalid or revoked API key",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


def seconds_until_refused(gateway: LiveGateway, raw: str, *, since: float, limit: float = 5.0) -> float:
    while True:
        response = chat(gateway, raw)
        elapsed = time.monotonic() - since
        if response.status_code != 200:
            assert_invalid_key(response)
            return elapsed
        if elapsed > limit:
            pytest.fail(f"key still accepted {elapsed:.2f}s after revocation")
        time.sleep(0.01)


def test_a_chat_completion_with_an_unkey_issued_key(unkey_gateway: LiveGateway, unkey_mode: FakeUnkey) -> None:
    key = issue_key(slug="acme", plan="pro")
    row = ApiKey.objects.get(pk=key.key_id)
    assert (row.issuer, bool(row.external_id)) == ("unkey", True)
    client = openai.OpenAI(base_url=f"{unkey_gateway.url}/v1", api_key=key.raw, max_retries=0, timeout=20)
    raw_response = client.chat.completions.with_raw_response.create(
        model=ALIAS, messages=[{"role": "user", "content": "hi"}], max_tokens=12
    )
    completion = raw_response.parse()
    tokens, reason = simulated_tokens("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", 12)
    assert completion.choices[0].message.content == "".join(tokens)
    assert completion.choices[0].finish_reason == reason
    # The local limiter still runs after Unkey: its headers, from the plan.
    assert raw_response.headers["x-ratelimit-limit-requests"] == "600"
    assert raw_response.headers["x-ratelimit-remaining-requests"] == "599"
    assert unkey_mode.recorded("verifyKey") == [{"key": key.raw, "ratelimits": [{"name": "requests", "cost": 1}]}]
    usage = wait_for(lambda: UsageEvent.objects.filter(request_id=raw_response.headers["x-request-id"]).first())
    assert (usage.status, usage.api_key_id, usage.organization_id) == ("ok", key.key_id, key.organization_id)
    models = httpx.get(f"{unkey_gateway.url}/v1/models", headers={"x-api-key": key.raw}, timeout=5)
    assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == [ALIAS]


def test_every_key_goes_to_unkey_and_unknown_or_malformed_ones_are_401(unkey_gateway: LiveGateway, unkey_mode: FakeUnkey) -> None:
    local_format = generate_key().raw
    assert_invalid_key(chat(unkey_gateway, local_format))
    assert unkey_mode.recorded("verifyKey") == [{"key": local_format, "ratelimits": [{"name": "requests", "cost": 1}]}]
    for garbage in ("nope", "ctr_", "sk-" + "a" * 40):
        assert_invalid_key(chat(unkey_gateway, garbage))
    assert len(unkey_mode.recorded("verifyKey")) == 1  # not worth a network call


def test_a_revoked_key_is_refused_within_one_second(unkey_gateway: LiveGateway, unkey_mode: FakeUnkey) -> None:
    key = issue_key(slug="acme")
    assert chat(unkey_gateway, key.raw).status_code == 200
    row = ApiKey.objects.get(pk=key.key_id)
    apikey_revoke(api_key=row, actor_label="tests")  # autocommit: Unkey is told at once
    assert seconds_until_refused(unkey_gateway, key.raw, since=time.monotonic()) < 1.0
    assert unkey_mode.key(row.external_id).enabled is False
    assert unkey_mode.recorded("verifyKey")[-1]["key"] == key.raw


def test_a_key_revoked_only_here_is_refused_though_unkey_says_valid(unkey_gateway: LiveGateway, unkey_mode: FakeUnkey) -> None:
    key = issue_key(slug="acme")
    assert chat(unkey_gateway, key.raw).status_code == 200
    ApiKey.objects.filter(pk=key.key_id).update(revoked_at=timezone.now())  # behind the service's back
    record_change(Scope.UNKEY, ApiKey.objects.get(pk=key.key_id).external_id)  # what a save would record
    assert seconds_until_refused(unkey_gateway, key.raw, since=time.monotonic()) < 1.0
    assert unkey_mode.key(ApiKey.objects.get(pk=key.key_id).external_id).enabled is True


def test_a_key_expired_at_unkey_is_401(unkey_gateway: LiveGateway, unkey_mode: FakeUnkey) -> None:
    org = Organization.objects.create(slug="acme", name="Acme", plan=None)
    created = apikey_create(organization=org, name="temp", expires_at=timezone.now() + timedelta(days=1), actor_label="tests")
    assert chat(unkey_gateway, created.raw).status_code == 200
    unkey_mode.advance(2 * 86_400_000)
    assert_invalid_key(chat(unkey_gateway, created.raw))


def test_a_suspended_organization_is_403(unkey_gateway: LiveGateway, unkey_mode: FakeUnkey) -> None:
    key = issue_key(slug="acme")
    assert chat(unkey_gateway, key.raw).status_code == 200
    Organization.objects.filter(pk=key.organization_id).update(status=Organization.Status.SUSPENDED)
    record_change(Scope.ORG, str(key.organization_id))
    wait_until_gateway_caught_up(unkey_gateway)
    response = chat(unkey_gateway, key.raw)
    assert response.status_code == 403
    assert response.json()["error"] == {
        "message": "this organization is suspended",
        "type": "permission_error",
        "param": None,
        "code": "account_suspended",
    }


def test_unkey_rate_limited_is_429_with_retry_after_and_rate_limit_headers(
    unkey_gateway: LiveGateway, unkey_mode: FakeUnkey
) -> None:
    key = issue_key(slug="acme")
    row = ApiKey.objects.get(pk=key.key_id)
    unkey_mode.set_ratelimit(row.external_id, "requests", limit=2, duration=3_600_000)
    assert [chat(unkey_gateway, key.raw).status_code for _ in range(2)] == [200, 200]
    limited = chat(unkey_gateway, key.raw)
    assert limited.status_code == 429
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    retry_after = int(limited.headers["retry-after"])
    assert 1 <= retry_after <= 3600
    assert limited.headers["x-ratelimit-limit-requests"] == "2"
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    reset = limited.headers["x-ratelimit-reset-requests"]
    assert reset.endswith("s") and reset[:-1].replace("m", "").replace("h", "").isdigit()
    assert limited.headers["x-request-id"].startswith("req_")
    anthropic = messages(unkey_gateway, key.raw)
    assert anthropic.status_code == 429
    assert anthropic.json()["error"]["type"] == "rate_limit_error"
    assert anthropic.headers["anthropic-ratelimit-requests-limit"] == "2"
    assert anthropic.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert anthropic.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert int(anthropic.headers["retry-after"]) >= 1
    env = envelope(unkey_gateway, key.raw)
    assert env.status_code == 429
    assert (env.json()["status"], env.json()["error"]["code"]) == ("failed", "rate_limited")
    # The SDK sees a RateLimitError it can back off on.
    client = openai.OpenAI(base_url=f"{unkey_gateway.url}/v1", api_key=key.raw, max_retries=0, timeout=10)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert info.value.code == "rate_limit_exceeded"


def test_an_upgraded_organization_is_not_refused_by_unkey_at_its_old_plans_rate(
    unkey_gateway: LiveGateway, unkey_mode: FakeUnkey
) -> None:
    small = Plan.objects.create(slug=f"small{secrets.token_hex(3)}", name="Small", requests_per_minute=2)
    key = issue_key(slug="upgrader", plan=small.slug)
    row = ApiKey.objects.get(pk=key.key_id)
    assert unkey_mode.key(row.external_id).ratelimits["requests"].limit == 2
    subscription_start(organization=Organization.objects.get(pk=key.organization_id), plan=Plan.objects.get(slug="pro"))
    assert unkey_mode.key(row.external_id).ratelimits["requests"].limit == 600
    wait_until_gateway_caught_up(unkey_gateway)
    responses = [chat(unkey_gateway, key.raw) for _ in range(4)]
    assert [r.status_code for r in responses] == [200] * 4, responses[-1].text
    assert responses[-1].headers["x-ratelimit-limit-requests"] == "600"


@pytest.mark.parametrize(
    ("code", "status", "body_error"),
    [
        ("USAGE_EXCEEDED", 429, {"type": "insufficient_quota", "code": "insufficient_quota"}),
        ("FORBIDDEN", 403, {"type": "permission_error", "code": "permission_denied"}),
        ("INSUFFICIENT_PERMISSIONS", 403, {"type": "permission_error", "code": "permission_denied"}),
    ],
)
def test_unkey_refusals_map_to_our_errors(
    unkey_gateway: LiveGateway, unkey_mode: FakeUnkey, code: str, status: int, body_error: dict[str, str]
) -> None:
    key = issue_key(slug="acme")
    unkey_mode.configure(verify_code=code)
    response = chat(unkey_gateway, key.raw)
    assert response.status_code == status
    error = response.json()["error"]
    assert {"type": error["type"], "code": error["code"]} == body_error
    if status == 429:
        assert response.headers["retry-after"] == "60"


@pytest.mark.parametrize(
    ("knobs", "reason"),
    [
        ({"delay_s": 3.0}, f"no answer within {GATEWAY_TIMEOUT_MS / 1000:g}s"),
        ({"fail_status": 500}, "HTTP 500"),
        ({"fail_status": 502}, "HTTP 502"),
        ({"malformed": True}, "HTTP 200 with a body that is not JSON"),
        ({"root_key": "rotated-root-key"}, "HTTP 401 (the root key was refused)"),
    ],
    ids=["slow", "500", "502", "malformed-json", "root-key-refused"],
)
def test_unkey_failing_is_503_in_each_surface_shape_in_bounded_time(
    unkey_gateway: LiveGateway, unkey_mode: FakeUnkey, knobs: dict[str, Any], reason: str
) -> None:
    key = issue_key(slug="acme")
    assert chat(unkey_gateway, key.raw).status_code == 200
    if "root_key" in knobs:
        unkey_mode.root_key = knobs["root_key"]
    else:
        unkey_mode.configure(**knobs)
    bound = GATEWAY_TIMEOUT_MS / 1000 + 1.0
    message = "API key verification is temporarily unavailable; try again shortly"

    answers: list[httpx.Response] = []

    started = time.monotonic()
    response = chat(unkey_gateway, key.raw)
    assert time.monotonic() - started < bound
    assert response.status_code == 503
    assert response.json() == {"error": {"message": message, "type": "api_error", "param": None, "code": "auth_unavailable"}}
    assert response.headers["retry-after"] == "1"
    answers.append(response)

    started = time.monotonic()
    response = messages(unkey_gateway, key.raw)
    assert time.monotonic() - started < bound
    assert response.status_code == 503
    body = response.json()
    assert body["type"] == "error" and body["error"] == {"type": "api_error", "message": message}
    assert body["request_id"] == response.headers["request-id"]
    answers.append(response)

    started = time.monotonic()
    response = envelope(unkey_gateway, key.raw)
    assert time.monotonic() - started < bound
    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["data"], body["error"]["code"], body["error"]["message"]) == (
        "failed",
        None,
        "auth_unavailable",
        message,
    )
    answers.append(response)
    # Unkey's own words stay out of our answers; the warning is in the log, without the root key.
    for answer in answers:
        assert "simulated failure" not in answer.text and "root key" not in answer.text and "unkey" not in answer.text.lower()
    wait_for(lambda: f"API key verification unavailable, answering 503: Unkey verifyKey failed: {reason}" in unkey_gateway.log())
    assert_root_key_absent(unkey_gateway.log())


def test_the_gateway_log_never_holds_the_root_key_or_a_customer_key(unkey_gateway: LiveGateway, unkey_mode: FakeUnkey) -> None:
    key = issue_key(slug="acme")
    assert chat(unkey_gateway, key.raw).status_code == 200
    unkey_mode.configure(fail_status=500)
    assert chat(unkey_gateway, key.raw).status_code == 503
    log = unkey_gateway.log()
    assert_root_key_absent(log)
    assert key.raw not in log
    assert json.dumps(ROOT_KEY) not in log


def test_a_single_unkey_failure_is_retried_and_the_request_succeeds(unkey_gateway: LiveGateway, unkey_mode: FakeUnkey) -> None:
    key = issue_key(slug="acme")
    for knob in ("fail_next", "drop_next"):  # a 503 from Unkey; a connection closed without an answer
        before = len(unkey_mode.recorded("verifyKey"))
        unkey_mode.configure(**{knob: 1})
        response = chat(unkey_gateway, key.raw)
        assert response.status_code == 200, (knob, response.text)
        assert len(unkey_mode.recorded("verifyKey")) == before + 2, knob
    unkey_mode.configure(fail_next=2)  # twice in a row: the one retry fails too, 503 as before
    response = chat(unkey_gateway, key.raw)
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    assert chat(unkey_gateway, key.raw).status_code == 200


# --- the verification cache ------------------------------------------------------------------------------------

CACHE_TTL_MS = 3000  # long enough for a handful of requests on a loaded machine; the production default is 1000


@pytest.fixture(scope="module")
def cached_gateway_process(
    django_db_setup: Any, django_db_blocker: Any, simulator: SimulatorServer, unkey_server: FakeUnkeyServer
) -> Iterator[LiveGateway]:
    env = live_gateway_env(
        simulator.base_url,
        **unkey_env(unkey_server, PORTAL_UNKEY_TIMEOUT_MS=str(GATEWAY_TIMEOUT_MS), PORTAL_UNKEY_CACHE_TTL_MS=str(CACHE_TTL_MS)),
    )
    gateway = LiveGateway(env=env).start()
    yield gateway
    gateway.stop()
    assert_root_key_absent(gateway.log())


@pytest.fixture
def cached_gateway(
    transactional_db: Any, cached_gateway_process: LiveGateway, sim: SimulatorServer, unkey_mode: FakeUnkey
) -> Iterator[LiveGateway]:
    live.LIVE_ROUTER_ENV.clear()
    live.LIVE_ROUTER_ENV.update(router_env(sim.base_url))
    seed_routing()
    wait_until_gateway_caught_up(cached_gateway_process)
    yield cached_gateway_process
    time.sleep(0.06)
    wait_until_usage_written(cached_gateway_process)
    assert_root_key_absent(cached_gateway_process.log())


def verify_calls(unkey: FakeUnkey, raw: str) -> int:
    return sum(1 for body in unkey.recorded("verifyKey") if body["key"] == raw)


def test_a_cached_key_makes_one_unkey_call_for_many_requests_then_asks_again_after_the_ttl(
    cached_gateway: LiveGateway, unkey_mode: FakeUnkey
) -> None:
    key = issue_key(slug="acme")
    started = time.monotonic()
    answers = [chat(cached_gateway, key.raw) for _ in range(5)]
    assert time.monotonic() - started < CACHE_TTL_MS / 1000, "too slow a machine for this test's TTL"
    assert [a.status_code for a in answers] == [200] * 5
    assert verify_calls(unkey_mode, key.raw) == 1
    # The plan's own limiter still counts every request, cached or not.
    assert answers[-1].headers["x-ratelimit-remaining-requests"] == str(600 - 5)
    time.sleep(CACHE_TTL_MS / 1000 + 0.1)
    assert chat(cached_gateway, key.raw).status_code == 200
    assert verify_calls(unkey_mode, key.raw) == 2


def test_a_key_revoked_here_is_refused_at_once_though_its_verification_is_cached(
    cached_gateway: LiveGateway, unkey_mode: FakeUnkey
) -> None:
    key = issue_key(slug="acme")
    assert chat(cached_gateway, key.raw).status_code == 200
    ApiKey.objects.filter(pk=key.key_id).update(revoked_at=timezone.now())  # behind the service's back: Unkey still says valid
    record_change(Scope.UNKEY, ApiKey.objects.get(pk=key.key_id).external_id)  # what a save would record
    assert seconds_until_refused(cached_gateway, key.raw, since=time.monotonic()) < 1.0
    assert verify_calls(unkey_mode, key.raw) == 1  # refused by our own row, from the cached verification


def test_an_organization_suspended_here_is_refused_at_once_though_cached(
    cached_gateway: LiveGateway, unkey_mode: FakeUnkey
) -> None:
    key = issue_key(slug="acme")
    assert chat(cached_gateway, key.raw).status_code == 200
    Organization.objects.filter(pk=key.organization_id).update(status=Organization.Status.SUSPENDED)
    record_change(Scope.ORG, str(key.organization_id))
    wait_until_gateway_caught_up(cached_gateway)
    assert chat(cached_gateway, key.raw).status_code == 403
    assert verify_calls(unkey_mode, key.raw) == 1


def test_a_key_revoked_only_at_unkey_is_refused_within_the_ttl(cached_gateway: LiveGateway, unkey_mode: FakeUnkey) -> None:
    key = issue_key(slug="acme")
    assert chat(cached_gateway, key.raw).status_code == 200
    row = ApiKey.objects.get(pk=key.key_id)
    with unkey_mode.lock:
        unkey_mode.keys[row.external_id].enabled = False  # disabled in Unkey's dashboard, say
    assert seconds_until_refused(cached_gateway, key.raw, since=time.monotonic()) < CACHE_TTL_MS / 1000 + 0.3


def test_a_key_with_limited_uses_is_never_served_from_the_cache(cached_gateway: LiveGateway, unkey_mode: FakeUnkey) -> None:
    key = issue_key(slug="acme")
    row = ApiKey.objects.get(pk=key.key_id)
    with unkey_mode.lock:
        unkey_mode.keys[row.external_id].credits = 3
    assert [chat(cached_gateway, key.raw).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert verify_calls(unkey_mode, key.raw) == 4
    assert unkey_mode.key(row.external_id).credits == 0


def test_a_cached_verification_serves_no_more_requests_than_unkeys_window_had_left(
    cached_gateway: LiveGateway, unkey_mode: FakeUnkey
) -> None:
    key = issue_key(slug="acme")
    row = ApiKey.objects.get(pk=key.key_id)
    unkey_mode.set_ratelimit(row.external_id, "requests", limit=3, duration=3_600_000)
    # Unkey's first answer says 2 left: two requests from the cache, then Unkey again, which refuses (3 + 1 > 3).
    statuses = [chat(cached_gateway, key.raw).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    # The second call reports the two served from the cache with its own: Unkey counted all four.
    assert [body["ratelimits"] for body in unkey_mode.recorded("verifyKey") if body["key"] == key.raw] == [
        [{"name": "requests", "cost": 1}],
        [{"name": "requests", "cost": 3}],
    ]


def test_the_plans_limits_apply_to_requests_served_from_the_cache(cached_gateway: LiveGateway, unkey_mode: FakeUnkey) -> None:
    small = Plan.objects.create(slug=f"small{secrets.token_hex(3)}", name="Small", requests_per_minute=2)
    key = issue_key(slug="smallco", plan=small.slug)
    row = ApiKey.objects.get(pk=key.key_id)
    unkey_mode.set_ratelimit(row.external_id, "requests", limit=1000)  # Unkey's limit looser than the plan
    responses = [chat(cached_gateway, key.raw) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[-1].headers["x-ratelimit-limit-requests"] == "2"
    assert verify_calls(unkey_mode, key.raw) == 1  # the 429 is our limiter's, on a cached verification


def test_refusals_are_not_cached(cached_gateway: LiveGateway, unkey_mode: FakeUnkey) -> None:
    key = issue_key(slug="acme")
    unkey_mode.configure(verify_code="RATE_LIMITED")
    assert chat(cached_gateway, key.raw).status_code == 429
    unkey_mode.configure(verify_code=None)
    assert chat(cached_gateway, key.raw).status_code == 200
    assert verify_calls(unkey_mode, key.raw) == 2


def _valid(**fields: Any) -> Verification:
    return Verification(valid=True, code="VALID", key_id="key_1", **fields)


def test_the_verification_cache_holds_a_keyed_hash_not_the_key_and_is_bounded() -> None:
    cache = VerificationCache(max_entries=50)
    raw = "ctr_" + secrets.token_urlsafe(32)
    digest = cache.digest(raw)
    assert digest != hashlib.sha256(raw.encode()).digest() and digest == cache.digest(raw)
    assert VerificationCache().digest(raw) != digest  # a secret of its own per process
    cache.put(digest, _valid(), now=0.0, ttl_s=1.0)
    assert raw not in repr(cache._entries) and raw.encode() not in b"".join(cache._entries)
    assert cache.take(digest, 0.5) is not None and cache.take(digest, 1.0) is None
    assert (cache.drop(digest), len(cache)) == (1, 0)  # what it served, for the next verifyKey to report
    for i in range(500):
        cache.put(cache.digest(f"ctr_{i:040d}"), _valid(), now=float(i) / 1000, ttl_s=1.0)
        assert len(cache) <= 50
    assert cache.take(cache.digest(f"ctr_{499:040d}"), 0.5) is not None  # the newest stay


def test_the_verification_cache_skips_limited_uses_and_counts_down_a_window() -> None:
    cache = VerificationCache()
    cache.put(b"a", _valid(credits=10), now=0.0, ttl_s=1.0)
    assert cache.take(b"a", 0.1) is None
    window = RatelimitState("requests", 5, 2, 0, False)
    cache.put(b"b", _valid(ratelimits=(window,)), now=0.0, ttl_s=1.0)
    assert [cache.take(b"b", 0.1) is not None for _ in range(3)] == [True, True, False]
    assert cache.drop(b"b") == 2
    cache.put(b"c", _valid(expires_ms=int(time.time() * 1000) - 1), now=0.0, ttl_s=1.0)  # expired at Unkey meanwhile
    assert cache.take(b"c", 0.1) is None
