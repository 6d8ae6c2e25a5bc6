"""API keys: the format, the keyed hash (the raw key stored nowhere), verification, the audit trail, revocation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest
from django.conf import settings
from django.db import connection, connections

from accounts.models import Organization
from apikeys.keys import generate_key, hash_key, hashes_match, split_key
from apikeys.models import ApiKey, ApiKeyEvent
from apikeys.services import apikey_create, apikey_revoke
from billing.services import plans_seed_defaults
from tests.support.live import ROOT, IssuedKey, LiveGateway, _database_url_for_live_server, issue_key, wait_for
from usage.models import RequestLog, UsageEvent

KEY_RE = r"^ctr_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$"


def expected_hash(raw: str) -> str:
    return hmac.new(settings.PORTAL_API_KEY_PEPPER.encode(), raw.encode(), hashlib.sha256).hexdigest()


# --- the format -----------------------------------------------------------------------------------


def test_key_format_and_entropy() -> None:
    keys = [generate_key() for _ in range(200)]
    for key in keys:
        prefix, public_id, secret = key.raw.split("_", 2)
        assert prefix == "ctr"
        assert len(public_id) == 12 and all(c in "0123456789abcdef" for c in public_id)
        assert len(secret) == 43
        assert len(base64.urlsafe_b64decode(secret + "=")) == 32  # 256 random bits
        assert re.match(KEY_RE, key.raw)
        assert (key.public_id, key.prefix, key.last_four) == (public_id, f"ctr_{public_id}", key.raw[-4:])
        assert split_key(key.raw) == public_id
    assert len({k.raw for k in keys}) == len({k.public_id for k in keys}) == 200


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "ctr_",
        "sk-abc",
        "ctr_0123456789ab_" + "a" * 42,
        "ctr_0123456789ab_" + "a" * 44,
        "ctr_0123456789AB_" + "a" * 43,
        "ctr_0123456789a_" + "a" * 44,
        "xtr_0123456789ab_" + "a" * 43,
        "ctr_0123456789ab_" + "a" * 42 + "=",
        " ctr_0123456789ab_" + "a" * 43,
        "ctr_0123456789ab_" + "a" * 42 + "\u00e9",
    ],
)
def test_malformed_keys_have_no_public_id(raw: str) -> None:
    assert split_key(raw) is None


# --- hashing and verification ---------------------------------------------------------------------


def test_the_hash_is_hmac_sha256_with_the_pepper() -> None:
    new = generate_key()
    assert new.key_hash == expected_hash(new.raw)
    assert new.key_hash != hashlib.sha256(new.raw.encode()).hexdigest()  # keyed, not a plain digest
    assert hash_key(new.raw, pepper="another-pepper") != new.key_hash


def test_verification_accepts_the_key_and_refuses_any_other() -> None:
    new = generate_key()
    assert hashes_match(new.raw, new.key_hash) is True
    raw = new.raw
    for position in (0, 4, 10, 17, 30, len(raw) - 1):
        flipped = raw[:position] + ("B" if raw[position] != "B" else "C") + raw[position + 1 :]
        assert hashes_match(flipped, new.key_hash) is False
    assert hashes_match(raw[:-1], new.key_hash) is False
    assert hashes_match(raw + "x", new.key_hash) is False
    assert hashes_match("", new.key_hash) is False
    assert hashes_match(raw, "") is False
    assert hashes_match(raw, new.key_hash[:-1]) is False
    assert hashes_match(raw, new.key_hash.upper()) is False
    assert hashes_match(raw, new.key_hash, pepper="another-pepper") is False
    other = generate_key()
    assert hashes_match(other.raw, new.key_hash) is False


def test_a_changed_pepper_invalidates_stored_hashes(settings) -> None:  # noqa: ANN001
    new = generate_key()
    settings.PORTAL_API_KEY_PEPPER = "rotated-pepper"
    assert hashes_match(new.raw, new.key_hash) is False
    assert hash_key(new.raw) == hmac.new(b"rotated-pepper", new.raw.encode(), hashlib.sha256).hexdigest()


@pytest.mark.django_db
def test_created_key_row_holds_the_hash_not_the_key() -> None:
    plans_seed_defaults()
    org = Organization.objects.create(slug="acme", name="Acme")
    created = apikey_create(organization=org, name="prod", actor_label="tests", source_ip="10.1.2.3")
    apikey_revoke(api_key=created.api_key, actor_label="tests")
    raw = created.raw
    secret = raw.split("_", 2)[2]
    row = ApiKey.objects.get()
    assert row.key_hash == expected_hash(raw)
    assert (row.public_id, row.prefix, row.last_four) == (raw[4:16], raw[:16], raw[-4:])
    # Every column of the key row and of its audit rows, read back from the database.
    with connection.cursor() as cursor:
        for table in (ApiKey._meta.db_table, ApiKeyEvent._meta.db_table):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            values = [str(v) for r in cursor.fetchall() for v in r]
            assert values
            for value in values:
                assert raw not in value
                assert secret not in value
                assert secret[:-4] not in value


# --- the audit trail ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_create_and_revoke_write_audit_events_once() -> None:
    plans_seed_defaults()
    org = Organization.objects.create(slug="acme", name="Acme")
    created = apikey_create(organization=org, name="prod", actor_label="portal", source_ip="10.1.2.3")
    key = created.api_key
    assert list(key.events.values_list("action", "actor_label", "source_ip")) == [("create", "portal", "10.1.2.3")]
    first = apikey_revoke(api_key=key, actor_label="first", source_ip="10.9.9.9")
    assert first.revoked_at is not None
    second = apikey_revoke(api_key=key, actor_label="second")
    assert second.revoked_at == first.revoked_at
    revokes = list(ApiKeyEvent.objects.filter(api_key=key, action="revoke").values_list("actor_label", "source_ip"))
    assert revokes == [("first", "10.9.9.9")]
    assert ApiKeyEvent.objects.filter(api_key=key).count() == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_revokes_write_one_event() -> None:
    plans_seed_defaults()
    key = issue_key(slug="acme")
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def revoke(label: str) -> None:
        try:
            row = ApiKey.objects.get(pk=key.key_id)
            barrier.wait(timeout=10)
            apikey_revoke(api_key=row, actor_label=label)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=revoke, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert ApiKeyEvent.objects.filter(api_key_id=key.key_id, action="revoke").count() == 1
    assert ApiKey.objects.get(pk=key.key_id).revoked_at is not None


# --- at the live gateway ----------------------------------------------------------------------------


def models_status(gateway: LiveGateway, raw: str) -> httpx.Response:
    return httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {raw}"}, timeout=5)


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def seconds_until_refused(gateway: LiveGateway, raw: str, since: float, limit: float = 5.0) -> float:
    while True:
        response = models_status(gateway, raw)
        elapsed = time.monotonic() - since
        if response.status_code != 200:
            assert_refused(response)
            return elapsed
        if elapsed > limit:
            pytest.fail(f"key still accepted {elapsed:.2f}s after revocation")
        time.sleep(0.01)


def test_gateway_accepts_the_key_and_refuses_wrong_ones(gateway: LiveGateway, api_key: IssuedKey) -> None:
    assert models_status(gateway, api_key.raw).status_code == 200
    _, public_id, secret = api_key.raw.split("_", 2)
    wrong_secret = f"ctr_{public_id}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    assert_refused(models_status(gateway, wrong_secret))
    unknown = generate_key()
    assert_refused(models_status(gateway, unknown.raw))
    assert_refused(models_status(gateway, "ctr_not_a_key"))
    # x-api-key works as well as Bearer.
    assert httpx.get(f"{gateway.url}/v1/models", headers={"x-api-key": api_key.raw}, timeout=5).status_code == 200


def test_the_raw_key_is_in_no_database_column_after_use(gateway: LiveGateway, api_key: IssuedKey) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {api_key.raw}", "x-request-id": "client-req-1"},
        json={"model": "oss-20b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=20,
    )
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    wait_for(
        lambda: (
            UsageEvent.objects.filter(request_id=request_id).exists()
            and RequestLog.objects.filter(request_id=request_id).exists()
        )
    )
    apikey_revoke(api_key=ApiKey.objects.get(pk=api_key.key_id), actor_label="tests")
    secret = api_key.raw.split("_", 2)[2]
    tables = connection.introspection.table_names()
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            for row in cursor.fetchall():
                for value in row:
                    text = bytes(value).decode(errors="replace") if isinstance(value, bytes | memoryview) else str(value)
                    assert api_key.raw not in text, table
                    assert secret[:-4] not in text, table
    assert api_key.raw not in gateway.log()


def test_a_revoked_key_is_refused_within_one_second(gateway: LiveGateway, api_key: IssuedKey) -> None:
    assert models_status(gateway, api_key.raw).status_code == 200  # cached by the gateway now
    apikey_revoke(api_key=ApiKey.objects.get(pk=api_key.key_id), actor_label="tests")
    assert seconds_until_refused(gateway, api_key.raw, since=time.monotonic()) < 1.0
    # and it stays refused
    assert_refused(models_status(gateway, api_key.raw))


def _manage(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update({"DJANGO_SETTINGS_MODULE": "portal_project.settings", "DATABASE_URL": _database_url_for_live_server()})
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_a_key_issued_and_revoked_by_manage_py_in_another_process(gateway: LiveGateway) -> None:
    Organization.objects.create(slug="ops", name="Ops")
    issued = _manage("issue_key", "--org", "ops", "--name", "from the shell")
    assert issued.returncode == 0, issued.stderr
    raw = issued.stdout.strip()
    assert models_status(gateway, raw).status_code == 200
    key = ApiKey.objects.get(public_id=split_key(raw))

    revoked = _manage("revoke_key", key.prefix)
    done = time.monotonic()
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked at" in revoked.stdout
    assert seconds_until_refused(gateway, raw, since=done) < 1.0
    assert list(ApiKeyEvent.objects.filter(api_key=key).order_by("created_at").values_list("action", "actor_label")) == [
        ("create", "manage.py issue_key"),
        ("revoke", "manage.py revoke_key"),
    ]
