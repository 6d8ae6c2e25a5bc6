"""The operator's management commands: create_org, issue_key, revoke_key, list_keys, sync_router_pools, run_router_simulator."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
from datetime import timedelta

import httpx
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from accounts.models import Membership, Organization, User
from apikeys.keys import hash_key
from apikeys.models import ApiKey, ApiKeyEvent
from billing.models import PlanSubscription
from billing.services import plans_seed_defaults
from gateway.invalidation import read_position
from routerpools.config import parse_router_env
from routerpools.models import ModelAlias, RouterEndpoint, RouterPool, RouterSession
from routerpools.selectors import routing_table
from tests.support.live import ROOT, _database_url_for_live_server, free_port, issue_key

KEY_RE = re.compile(r"^ctr_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")


def command_env(**overrides: str) -> dict[str, str]:
    """The environment of a manage.py subprocess on the test database (no router maps unless given)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "PORTAL_ROUTER_")) and k != "PORTAL_DEFAULT_MODEL"}
    env.update({"DJANGO_SETTINGS_MODULE": "portal_project.settings", "DATABASE_URL": _database_url_for_live_server()})
    env.update(overrides)
    return env


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=command_env(**env), capture_output=True, text=True, timeout=60
    )


def run(*args: str, **options: object) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, **options)
    return out.getvalue()


@pytest.fixture
def plans(db) -> None:  # noqa: ANN001
    plans_seed_defaults()


# --- create_org -------------------------------------------------------------------------------------


def test_create_org_with_the_default_plan(plans) -> None:  # noqa: ANN001
    assert run("create_org", "--slug", "acme", "--name", "Acme Inc") == "created organization acme (plan free)\n"
    org = Organization.objects.get(slug="acme")
    assert (org.name, org.status, org.plan.slug) == ("Acme Inc", "active", "free")
    assert list(PlanSubscription.objects.filter(organization=org).values_list("plan__slug", "ended_at")) == [("free", None)]
    assert Membership.objects.filter(organization=org).count() == 0


def test_create_org_with_plan_and_owner(plans) -> None:  # noqa: ANN001
    out = run("create_org", "--slug", "beta", "--name", "Beta", "--plan", "pro", "--owner-email", "Owner@Example.COM")
    assert out == "created organization beta (plan pro)\n"
    org = Organization.objects.get(slug="beta")
    assert org.plan.slug == "pro"
    assert list(Membership.objects.filter(organization=org).values_list("user__email", "role")) == [
        ("owner@example.com", "owner")
    ]
    # An existing user becomes the owner of a second organization; no second user.
    run("create_org", "--slug", "gamma", "--name", "Gamma", "--owner-email", "owner@example.com")
    assert User.objects.filter(email="owner@example.com").count() == 1
    assert Membership.objects.get(organization__slug="gamma").user.email == "owner@example.com"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slug", "Bad Slug", "--name", "X"], "--slug must be lowercase letters, digits and dashes, got 'Bad Slug'"),
        (["--slug", "", "--name", "X"], "--slug must be lowercase letters, digits and dashes, got ''"),
        (["--slug", "a" * 65, "--name", "X"], "--slug must be at most 64 characters"),
        (["--slug", "acme", "--name", "X"], "an organization with slug 'acme' already exists"),
        (["--slug", "new", "--name", "X", "--plan", "gold"], "no plan with slug 'gold'"),
        (["--slug", "new", "--name", "   "], "--name must be 1 to 200 characters"),
        (["--slug", "new", "--name", "n" * 201], "--name must be 1 to 200 characters"),
        (
            ["--slug", "new", "--name", "X", "--owner-email", "not an email"],
            "--owner-email is not a valid email address: 'not an email'",
        ),
    ],
)
def test_create_org_bad_input_is_a_command_error(plans, args: list[str], message: str) -> None:  # noqa: ANN001
    Organization.objects.create(slug="acme", name="Acme")
    with pytest.raises(CommandError) as info:
        run("create_org", *args)
    assert str(info.value) == message
    assert Organization.objects.count() == 1
    assert User.objects.count() == 0


def test_create_org_that_fails_creates_no_owner(plans) -> None:  # noqa: ANN001
    Organization.objects.create(slug="acme", name="Acme")
    with pytest.raises(CommandError, match="already exists"):
        run("create_org", "--slug", "acme", "--name", "Again", "--owner-email", "new@example.com")
    assert not User.objects.filter(email="new@example.com").exists()


@pytest.mark.django_db(transaction=True)
def test_create_org_bad_input_in_a_shell_is_one_clear_line() -> None:
    plans_seed_defaults()
    ok = manage("create_org", "--slug", "shell", "--name", "Shell")
    assert (ok.returncode, ok.stdout) == (0, "created organization shell (plan free)\n")
    result = manage("create_org", "--slug", "shell", "--name", "Shell")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "CommandError: an organization with slug 'shell' already exists\n"


# --- issue_key ------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_issue_key_prints_only_the_raw_key_on_stdout() -> None:
    plans_seed_defaults()
    org = Organization.objects.create(slug="acme", name="Acme")
    result = manage("issue_key", "--org", "acme", "--name", "ci deploy")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[1:] == [""], "exactly one line on stdout"
    raw = lines[0]
    match = KEY_RE.match(raw)
    assert match, raw
    key = ApiKey.objects.get()
    assert (key.organization_id, key.name, key.public_id, key.prefix, key.last_four) == (
        org.pk,
        "ci deploy",
        match.group(1),
        f"ctr_{match.group(1)}",
        raw[-4:],
    )
    assert key.key_hash == hash_key(raw)
    assert key.expires_at is None and key.revoked_at is None
    # Everything else went to stderr, and the secret did not.
    assert result.stderr == (
        f"issued key {key.pk} ctr_{match.group(1)} for acme (expires never); store it now, it is not shown again\n"
    )
    assert list(key.events.values_list("action", "actor_label")) == [("create", "manage.py issue_key")]


def test_issue_key_with_expiry(plans, capsys) -> None:  # noqa: ANN001
    Organization.objects.create(slug="acme", name="Acme")
    before = timezone.now()
    raw = run("issue_key", "--org", "acme", "--name", "temp", "--expires-in-days", "30").rstrip("\n")
    after = timezone.now()
    assert KEY_RE.match(raw)
    key = ApiKey.objects.get()
    assert before + timedelta(days=30) <= key.expires_at <= after + timedelta(days=30)
    err = capsys.readouterr().err
    assert f"issued key {key.pk} {key.prefix} for acme (expires {key.expires_at.isoformat()})" in err
    assert raw not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--org", "nope", "--name", "k"], "no organization with slug 'nope'"),
        (["--org", "acme", "--name", "   "], "a key needs a name of 1 to 100 characters"),
        (["--org", "acme", "--name", "k" * 101], "a key needs a name of 1 to 100 characters"),
        (["--org", "acme", "--name", "k", "--expires-in-days", "0"], "expiry days must be positive"),
        (["--org", "acme", "--name", "k", "--expires-in-days", "-3"], "expiry days must be positive"),
        (["--org", "acme", "--name", "k", "--expires-in-days", "3000000"], "expiry days is too large"),
        (
            ["--org", "acme", "--name", "k", "--expires-in-days", "soon"],
            "Error: argument --expires-in-days: invalid int value: 'soon'",
        ),
    ],
)
def test_issue_key_bad_input_is_a_command_error(plans, args: list[str], message: str) -> None:  # noqa: ANN001
    Organization.objects.create(slug="acme", name="Acme")
    with pytest.raises(CommandError) as info:
        run("issue_key", *args)
    assert str(info.value) == message
    assert ApiKey.objects.count() == 0
    assert ApiKeyEvent.objects.count() == 0


# --- revoke_key ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("reference", ["id", "public_id", "prefix", "masked"])
def test_revoke_key_by_id_or_prefix(plans, reference: str) -> None:  # noqa: ANN001
    key = issue_key(slug="acme")
    other = issue_key(slug="acme", name="other")
    row = ApiKey.objects.get(pk=key.key_id)
    ref = {"id": str(row.pk), "public_id": row.public_id, "prefix": row.prefix, "masked": row.masked}[reference]
    out = run("revoke_key", ref)
    row.refresh_from_db()
    assert row.revoked_at is not None
    assert out == f"{row.masked} (test key, acme) revoked at {row.revoked_at.isoformat()}\n"
    assert list(row.events.filter(action="revoke").values_list("actor_label", flat=True)) == ["manage.py revoke_key"]
    assert ApiKey.objects.get(pk=other.key_id).revoked_at is None


def test_revoke_key_twice_writes_one_event(plans) -> None:  # noqa: ANN001
    key = issue_key(slug="acme")
    run("revoke_key", str(key.key_id))
    first = ApiKey.objects.get(pk=key.key_id).revoked_at
    out = run("revoke_key", str(key.key_id))
    row = ApiKey.objects.get(pk=key.key_id)
    assert row.revoked_at == first
    assert out == f"{row.masked} (test key, acme) was already revoked at {first.isoformat()}\n"
    assert row.events.filter(action="revoke").count() == 1
    assert row.events.count() == 2


@pytest.mark.parametrize("reference", ["999999", "ctr_000000000000", "nope", ""])
def test_revoke_key_unknown_is_a_command_error(plans, reference: str) -> None:  # noqa: ANN001
    issue_key(slug="acme")
    with pytest.raises(CommandError) as info:
        run("revoke_key", reference)
    assert str(info.value) == f"no single key matches {reference!r}"
    assert ApiKey.objects.filter(revoked_at__isnull=False).count() == 0


# --- list_keys ----------------------------------------------------------------------------------------


def test_list_keys_is_masked(plans) -> None:  # noqa: ANN001
    first = issue_key(slug="acme", name="first")
    second = issue_key(slug="acme", name="second")
    elsewhere = issue_key(slug="other", name="elsewhere")
    run("revoke_key", str(first.key_id))
    out = run("list_keys", "--org", "acme")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "KEY", "NAME", "STATUS", "CREATED", "LAST", "USED", "EXPIRES"]
    assert len(lines) == 3
    rows = {ApiKey.objects.get(pk=k.key_id).masked: k for k in (first, second)}
    for line in lines[1:]:
        cells = line.split()
        key = rows[cells[1]]
        assert cells[0] == str(key.key_id)
        assert cells[2] == ("first" if key is first else "second")
        assert cells[3] == ("revoked" if key is first else "active")
    # Newest first.
    assert lines[1].split()[0] == str(second.key_id)
    for key in (first, second, elsewhere):
        secret = key.raw.split("_", 2)[2]
        assert key.raw not in out
        assert secret[:-4] not in out
    assert ApiKey.objects.get(pk=elsewhere.key_id).prefix not in out


def test_list_keys_unknown_org(plans) -> None:  # noqa: ANN001
    with pytest.raises(CommandError) as info:
        run("list_keys", "--org", "nope")
    assert str(info.value) == "no organization with slug 'nope'"


# --- sync_router_pools ---------------------------------------------------------------------------


TWO_ALIASES = {
    "PORTAL_ROUTER_POOLS_JSON": json.dumps(
        {"oss-20b": ["http://10.0.0.5:5010", "http://10.0.0.6:5010"], "gemma4": "http://10.0.0.7:5010"}
    ),
    "PORTAL_ROUTER_MODEL_SESSIONS_JSON": json.dumps({"oss-20b": [101, 102], "gemma4": 7}),
    "PORTAL_ROUTER_MODEL_AUTH_KEYS_JSON": json.dumps({"oss-20b": "router-secret"}),
    "PORTAL_ROUTER_SESSION_AUTH_KEYS_JSON": json.dumps({"7": "session-7-secret"}),
    "PORTAL_DEFAULT_MODEL": "oss-20b",
}
ONE_ALIAS = {
    "PORTAL_ROUTER_POOLS_JSON": json.dumps({"oss-20b": ["http://10.0.0.5:5010", "http://10.0.0.6:5010"]}),
    "PORTAL_ROUTER_MODEL_SESSIONS_JSON": json.dumps({"oss-20b": [101, 102]}),
    "PORTAL_ROUTER_MODEL_AUTH_KEYS_JSON": json.dumps({"oss-20b": "router-secret"}),
}


def routing_rows() -> dict[str, list[tuple]]:
    return {
        "pools": list(RouterPool.objects.order_by("pk").values_list()),
        "endpoints": list(RouterEndpoint.objects.order_by("pk").values_list()),
        "sessions": list(RouterSession.objects.order_by("pk").values_list()),
        "aliases": list(ModelAlias.objects.order_by("pk").values_list()),
    }


def sync(settings, env: dict[str, str]) -> str:  # noqa: ANN001
    settings.PORTAL_ROUTER_ENV = parse_router_env(env)
    return run("sync_router_pools")


def test_sync_router_pools_writes_the_env_and_a_second_run_changes_nothing(settings, db) -> None:  # noqa: ANN001
    out = sync(settings, TWO_ALIASES)
    assert out == "router pools synced (oss-20b, gemma4): 10 created, 0 updated, 0 removed\n"
    assert sorted(RouterPool.objects.values_list("name", "enabled", "env_managed")) == [
        ("gemma4", True, True),
        ("oss-20b", True, True),
    ]
    assert sorted(RouterEndpoint.objects.values_list("pool__name", "base_url", "auth_key")) == [
        ("gemma4", "http://10.0.0.7:5010", ""),
        ("oss-20b", "http://10.0.0.5:5010", "router-secret"),
        ("oss-20b", "http://10.0.0.6:5010", "router-secret"),
    ]
    assert sorted(RouterSession.objects.values_list("pool__name", "session_id", "auth_key")) == [
        ("gemma4", 7, "session-7-secret"),
        ("oss-20b", 101, ""),
        ("oss-20b", 102, ""),
    ]
    assert sorted(ModelAlias.objects.values_list("alias", "pool__name", "enabled", "env_managed")) == [
        ("gemma4", "gemma4", True, True),
        ("oss-20b", "oss-20b", True, True),
    ]
    table = routing_table()
    assert sorted(table) == ["gemma4", "oss-20b"]
    assert [(u.session_id, u.auth_key) for u in table["gemma4"].upstreams] == [(7, "session-7-secret")]
    assert len(table["oss-20b"].upstreams) == 4

    rows = routing_rows()
    position = read_position()
    assert sync(settings, TWO_ALIASES) == "router pools synced (oss-20b, gemma4): 0 created, 0 updated, 0 removed\n"
    assert routing_rows() == rows
    assert read_position() == position  # no save, so no gateway cache was invalidated either


def test_sync_router_pools_disables_a_removed_alias(settings, db) -> None:  # noqa: ANN001
    sync(settings, TWO_ALIASES)
    out = sync(settings, ONE_ALIAS)
    assert out == "router pools synced (oss-20b): 0 created, 0 updated, 1 removed\n"
    gemma = ModelAlias.objects.get(alias="gemma4")  # kept, so usage history keeps its name
    assert (gemma.enabled, gemma.env_managed) == (False, True)
    assert ModelAlias.objects.get(alias="oss-20b").enabled is True
    assert sorted(routing_table()) == ["oss-20b"]
    rows = routing_rows()
    assert sync(settings, ONE_ALIAS) == "router pools synced (oss-20b): 0 created, 0 updated, 0 removed\n"
    assert routing_rows() == rows
    # Back in the environment: enabled again.
    assert sync(settings, TWO_ALIASES) == "router pools synced (oss-20b, gemma4): 0 created, 1 updated, 0 removed\n"
    assert sorted(routing_table()) == ["gemma4", "oss-20b"]


def test_sync_router_pools_applies_changed_urls_and_keys(settings, db) -> None:  # noqa: ANN001
    sync(settings, TWO_ALIASES)
    changed = dict(TWO_ALIASES)
    changed["PORTAL_ROUTER_POOLS_JSON"] = json.dumps({"oss-20b": "http://10.0.0.5:5010", "gemma4": "http://10.0.0.7:5010"})
    changed["PORTAL_ROUTER_SESSION_AUTH_KEYS_JSON"] = json.dumps({"7": "rotated"})
    assert sync(settings, changed) == "router pools synced (oss-20b, gemma4): 0 created, 1 updated, 1 removed\n"
    assert list(RouterEndpoint.objects.filter(pool__name="oss-20b").values_list("base_url", flat=True)) == [
        "http://10.0.0.5:5010"
    ]
    assert RouterSession.objects.get(session_id=7).auth_key == "rotated"


def test_sync_router_pools_leaves_staff_aliases_alone(settings, db) -> None:  # noqa: ANN001
    staff_pool = RouterPool.objects.create(name="staff-pool")
    ModelAlias.objects.create(alias="staff-model", pool=staff_pool)
    sync(settings, ONE_ALIAS)
    staff = ModelAlias.objects.get(alias="staff-model")
    assert (staff.enabled, staff.env_managed, staff.pool_id) == (True, False, staff_pool.pk)


def test_sync_router_pools_with_no_env_does_nothing(settings, db) -> None:  # noqa: ANN001
    assert sync(settings, {}) == "no router pools in the environment; nothing to do\n"
    assert routing_rows() == {"pools": [], "endpoints": [], "sessions": [], "aliases": []}


@pytest.mark.django_db(transaction=True)
def test_sync_router_pools_reads_the_environment() -> None:
    first = manage("sync_router_pools", **TWO_ALIASES)
    assert (first.returncode, first.stderr) == (0, "")
    assert first.stdout == "router pools synced (oss-20b, gemma4): 10 created, 0 updated, 0 removed\n"
    rows = routing_rows()
    second = manage("sync_router_pools", **TWO_ALIASES)
    assert second.stdout == "router pools synced (oss-20b, gemma4): 0 created, 0 updated, 0 removed\n"
    assert routing_rows() == rows
    bad = manage("sync_router_pools", **{**TWO_ALIASES, "PORTAL_DEFAULT_MODEL": "llama"})
    assert bad.returncode != 0
    assert bad.stderr == "configuration error: PORTAL_DEFAULT_MODEL: 'llama' is not an alias in PORTAL_ROUTER_POOLS_JSON\n"
    assert routing_rows() == rows


# --- run_router_simulator ----------------------------------------------------------------------------


@pytest.mark.parametrize("door", [["manage.py", "run_router_simulator"], ["-m", "simulator"]], ids=["manage.py", "python-m"])
def test_run_router_simulator_serves_status(door: list[str]) -> None:
    # Two doors onto one program: the management command and the package's own `python -m simulator`.
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, *door, "--port", str(port), "--auth-key", "sim-key"],
        cwd=ROOT,
        env=command_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first_line: list[str] = []
        reader = threading.Thread(target=lambda: first_line.append(process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=30)
        assert first_line == [f"router simulator listening on http://127.0.0.1:{port}\n"], (
            process.stderr.read() if process.poll() is not None else ""
        )
        status = httpx.get(f"http://127.0.0.1:{port}/api/v1/status", timeout=5)
        assert status.status_code == 200
        body = status.json()
        assert (body["status"], body["simulator"], body["requests_total"]) == ("ok", True, 0)
        # The start-up flags are applied: the completion route wants the auth key.
        url = f"http://127.0.0.1:{port}/api/v3/completions/1"
        assert httpx.post(url, json={"prompt": "hi", "stream": False}, timeout=5).status_code == 401
        answer = httpx.post(url, json={"prompt": "hi", "stream": False}, headers={"authorization": "Bearer sim-key"}, timeout=5)
        assert answer.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_run_router_simulator_bad_flag_is_a_command_error() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "run_router_simulator", "--port", str(free_port()), "--fail-status", "42"],
        cwd=ROOT,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == "CommandError: fail_status must be an HTTP status code\n"
    assert "Traceback" not in result.stderr
