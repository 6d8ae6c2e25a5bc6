"""Configuration: a malformed value stops start-up with one line naming the variable; the valid formats parse.

The start-up checks run `manage.py check` in a subprocess with a bad environment, exactly as an
operator would meet them. The parser of the router maps is also tested directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from routerpools.config import EnvAlias, RouterConfigError, parse_router_env
from tests.support.live import ROOT

POOLS = "PORTAL_ROUTER_POOLS_JSON"
SESSIONS = "PORTAL_ROUTER_MODEL_SESSIONS_JSON"
MODEL_KEYS = "PORTAL_ROUTER_MODEL_AUTH_KEYS_JSON"
SESSION_KEYS = "PORTAL_ROUTER_SESSION_AUTH_KEYS_JSON"
DEFAULT_MODEL = "PORTAL_DEFAULT_MODEL"

# Everything the product reads, so the parent's environment cannot leak into a subprocess.
_PRODUCT_VARS = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "DJANGO_SETTINGS_MODULE")

VALID_ROUTER_ENV = {
    POOLS: json.dumps({"oss-20b": ["http://10.0.0.5:5010", "http://10.0.0.6:5010"], "gemma4": "http://10.0.0.7:5010"}),
    SESSIONS: json.dumps({"oss-20b": [101, 102], "gemma4": 7}),
    MODEL_KEYS: json.dumps({"oss-20b": "router-secret"}),
    SESSION_KEYS: json.dumps({"7": "session-7-secret"}),
    DEFAULT_MODEL: "oss-20b",
}


def base_env(**overrides: str | None) -> dict[str, str]:
    """A valid production-like environment (DEBUG off), with overrides; None removes a variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "PORTAL_")) and k not in _PRODUCT_VARS}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "portal_project.settings",
            "SECRET_KEY": "config-test-secret-key",
            "PORTAL_API_KEY_PEPPER": "config-test-pepper",
            "PORTAL_METRICS_TOKEN": "config-test-metrics-token",
            "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/portal",
            "REDIS_URL": "redis://127.0.0.1:6379/15",
            **VALID_ROUTER_ENV,
        }
    )
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def manage_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_the_valid_base_environment_passes_the_check() -> None:
    result = manage_check(base_env())
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


BAD_VALUES = [
    pytest.param(POOLS, {POOLS: "{oss-20b: http://x}"}, id="pools-not-json"),
    pytest.param(POOLS, {POOLS: '["http://10.0.0.5:5010"]'}, id="pools-not-an-object"),
    pytest.param(POOLS, {POOLS: '"http://10.0.0.5:5010"'}, id="pools-a-string"),
    pytest.param(POOLS, {POOLS: '{"oss-20b": "ftp://10.0.0.5", "gemma4": "http://10.0.0.7:5010"}'}, id="pools-bad-scheme"),
    pytest.param(POOLS, {POOLS: '{"oss-20b": "10.0.0.5:5010", "gemma4": "http://10.0.0.7:5010"}'}, id="pools-no-scheme"),
    pytest.param(POOLS, {POOLS: '{"oss-20b": ["http://10.0.0.5:5010", 5010], "gemma4": "http://x"}'}, id="pools-url-not-string"),
    pytest.param(POOLS, {POOLS: '{"oss-20b": [], "gemma4": "http://10.0.0.7:5010"}'}, id="pools-empty-list"),
    pytest.param(
        POOLS,
        {POOLS: '{"oss 20b": "http://x", "gemma4": "http://y"}', SESSIONS: '{"oss 20b": 1, "gemma4": 7}'},
        id="pools-bad-alias",
    ),
    # An alias of the pools map missing from the sessions map, and the other way round.
    pytest.param(SESSIONS, {SESSIONS: '{"oss-20b": [101, 102]}'}, id="sessions-missing-a-pool-alias"),
    pytest.param(POOLS, {SESSIONS: '{"oss-20b": [101], "gemma4": 7, "llama": 9}'}, id="pools-missing-a-session-alias"),
    pytest.param(SESSIONS, {SESSIONS: '{"oss-20b": [101, "abc"], "gemma4": 7}'}, id="session-id-not-integer"),
    pytest.param(SESSIONS, {SESSIONS: '{"oss-20b": 1.5, "gemma4": 7}'}, id="session-id-float"),
    pytest.param(SESSIONS, {SESSIONS: '{"oss-20b": true, "gemma4": 7}'}, id="session-id-bool"),
    pytest.param(SESSIONS, {SESSIONS: '{"oss-20b": -1, "gemma4": 7}'}, id="session-id-negative"),
    pytest.param(SESSIONS, {SESSIONS: '{"oss-20b": "\\u00b2", "gemma4": 7}'}, id="session-id-superscript-digit"),
    pytest.param(SESSIONS, {SESSIONS: '{"oss-20b": [], "gemma4": 7}'}, id="sessions-empty-list"),
    pytest.param(SESSIONS, {SESSIONS: "[101, 102]"}, id="sessions-not-an-object"),
    pytest.param(SESSION_KEYS, {SESSION_KEYS: "{7: secret}"}, id="session-keys-not-json"),
    pytest.param(SESSION_KEYS, {SESSION_KEYS: '["secret"]'}, id="session-keys-not-an-object"),
    pytest.param(SESSION_KEYS, {SESSION_KEYS: '{"seven": "secret"}'}, id="session-keys-id-not-integer"),
    pytest.param(SESSION_KEYS, {SESSION_KEYS: '{"7": 12345}'}, id="session-keys-key-not-string"),
    pytest.param(SESSION_KEYS, {SESSION_KEYS: '{"7": ""}'}, id="session-keys-key-empty"),
    pytest.param(MODEL_KEYS, {MODEL_KEYS: '{"llama": "secret"}'}, id="model-keys-unknown-alias"),
    pytest.param(MODEL_KEYS, {MODEL_KEYS: '{"oss-20b": ["secret"]}'}, id="model-keys-key-not-string"),
    pytest.param(DEFAULT_MODEL, {DEFAULT_MODEL: "llama"}, id="default-model-not-an-alias"),
    pytest.param("PORTAL_KEY_ISSUER", {"PORTAL_KEY_ISSUER": "vault"}, id="key-issuer"),
    pytest.param("PORTAL_UNKEY_ROOT_KEY", {"PORTAL_KEY_ISSUER": "unkey"}, id="key-issuer-unkey-without-credentials"),
    pytest.param("PORTAL_UPSTREAM_TIMEOUT_S", {"PORTAL_UPSTREAM_TIMEOUT_S": "two minutes"}, id="timeout-not-int"),
    pytest.param("PORTAL_UPSTREAM_TIMEOUT_S", {"PORTAL_UPSTREAM_TIMEOUT_S": "1.5"}, id="timeout-float"),
    pytest.param("PORTAL_UPSTREAM_TIMEOUT_S", {"PORTAL_UPSTREAM_TIMEOUT_S": "0"}, id="timeout-zero"),
    pytest.param("PORTAL_MAX_BODY_BYTES", {"PORTAL_MAX_BODY_BYTES": "1MB"}, id="max-body-not-int"),
    pytest.param("REDIS_URL", {"REDIS_URL": "http://127.0.0.1:6379/0"}, id="redis-bad-scheme"),
    pytest.param("REDIS_URL", {"REDIS_URL": "127.0.0.1:6379"}, id="redis-no-scheme"),
    pytest.param("SECRET_KEY", {"SECRET_KEY": None}, id="secret-key-missing"),
    pytest.param("SECRET_KEY", {"SECRET_KEY": "   ", "DEBUG": "0"}, id="secret-key-blank-debug-0"),
    pytest.param("PORTAL_API_KEY_PEPPER", {"PORTAL_API_KEY_PEPPER": None}, id="pepper-missing-in-production"),
    pytest.param("PORTAL_METRICS_TOKEN", {"PORTAL_METRICS_TOKEN": None}, id="metrics-token-missing-in-production"),
    pytest.param("PORTAL_METRICS_TOKEN", {"PORTAL_METRICS_TOKEN": "metrics"}, id="metrics-token-short"),
    pytest.param("PORTAL_TRUSTED_PROXY_COUNT", {"PORTAL_TRUSTED_PROXY_COUNT": "-1"}, id="trusted-proxies-negative"),
    pytest.param("PORTAL_TRUSTED_PROXY_COUNT", {"PORTAL_TRUSTED_PROXY_COUNT": "all"}, id="trusted-proxies-not-int"),
    pytest.param("PORTAL_REQUEST_READ_TIMEOUT_S", {"PORTAL_REQUEST_READ_TIMEOUT_S": "0"}, id="read-timeout-zero"),
    pytest.param("PORTAL_KEEPALIVE_TIMEOUT_S", {"PORTAL_KEEPALIVE_TIMEOUT_S": "75s"}, id="keepalive-not-int"),
    pytest.param("DEBUG", {"DEBUG": "maybe"}, id="debug-not-bool"),
    pytest.param("DATABASE_URL", {"DATABASE_URL": "nosuchdb://x/y"}, id="database-url-scheme"),
    pytest.param("DATABASE_URL", {"DATABASE_URL": "postgres://127.0.0.1:notaport/portal"}, id="database-url-port"),
    pytest.param(
        "PORTAL_SUPABASE_DB_URL", {"DATABASE_URL": None, "PORTAL_SUPABASE_DB_URL": "nosuchdb://x/y"}, id="supabase-url-scheme"
    ),
]


@pytest.mark.parametrize(("variable", "overrides"), BAD_VALUES)
def test_a_malformed_value_stops_start_up_with_one_line_naming_the_variable(variable: str, overrides: dict) -> None:
    result = manage_check(base_env(**overrides))
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stderr == lines[0] + "\n"
    assert lines[0].startswith(f"configuration error: {variable}: "), lines[0]
    assert len(lines[0]) > len(f"configuration error: {variable}: ") + 5  # says what is wrong
    assert "Traceback" not in result.stderr


def test_the_error_line_says_what_is_wrong() -> None:
    result = manage_check(base_env(**{SESSIONS: '{"oss-20b": [101, "abc"], "gemma4": 7}'}))
    assert result.stderr == f"configuration error: {SESSIONS}: oss-20b: session id 'abc' is not an integer\n"
    result = manage_check(base_env(PORTAL_UPSTREAM_TIMEOUT_S="two minutes"))
    assert result.stderr == "configuration error: PORTAL_UPSTREAM_TIMEOUT_S: expected an integer, got 'two minutes'\n"
    result = manage_check(base_env(**{DEFAULT_MODEL: "llama"}))
    assert result.stderr == f"configuration error: {DEFAULT_MODEL}: 'llama' is not an alias in {POOLS}\n"


def test_debug_on_allows_the_dev_secret() -> None:
    result = manage_check(base_env(SECRET_KEY=None, PORTAL_API_KEY_PEPPER=None, PORTAL_METRICS_TOKEN=None, DEBUG="1"))
    assert result.returncode == 0, result.stderr


def test_makemigrations_runs_without_the_production_secret_and_other_commands_do_not() -> None:
    env = base_env(SECRET_KEY=None, PORTAL_API_KEY_PEPPER=None)
    migrations = subprocess.run(
        [sys.executable, "manage.py", "makemigrations", "--check", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrations.returncode == 0, migrations.stdout + migrations.stderr
    assert "No changes detected" in migrations.stdout
    refused = manage_check(env)
    assert refused.returncode == 2 and "SECRET_KEY" in refused.stderr, refused.stderr


# --- parse_router_env: the valid formats of docs/configuration.md ---------------------------------


def test_the_config_md_example_parses() -> None:
    config = parse_router_env(VALID_ROUTER_ENV)
    assert config.default_model == "oss-20b"
    assert config.is_empty is False
    assert config.aliases == (
        EnvAlias(
            alias="oss-20b",
            urls=("http://10.0.0.5:5010", "http://10.0.0.6:5010"),
            sessions=(101, 102),
            session_keys={},
            alias_key="router-secret",
        ),
        EnvAlias(
            alias="gemma4", urls=("http://10.0.0.7:5010",), sessions=(7,), session_keys={7: "session-7-secret"}, alias_key=""
        ),
    )


def test_a_url_may_be_a_string_or_a_list_and_is_normalised() -> None:
    config = parse_router_env(
        {
            POOLS: json.dumps({"a": " https://router.example.com/ ", "b": ["http://h1:1/", "http://h2:2", "http://h1:1"]}),
            SESSIONS: json.dumps({"a": 1, "b": 2}),
        }
    )
    a, b = config.aliases
    assert a.urls == ("https://router.example.com",)
    assert b.urls == ("http://h1:1", "http://h2:2")  # trailing slash dropped, duplicates once, order kept


def test_session_ids_may_be_int_list_or_numeric_string() -> None:
    config = parse_router_env(
        {
            POOLS: json.dumps({"a": "http://h:1", "b": "http://h:2", "c": "http://h:3", "d": "http://h:4"}),
            SESSIONS: json.dumps({"a": 7, "b": [1, 2, 1], "c": "42", "d": ["5", 6, " 8 "]}),
        }
    )
    assert {x.alias: x.sessions for x in config.aliases} == {"a": (7,), "b": (1, 2), "c": (42,), "d": (5, 6, 8)}


def test_session_keys_apply_to_their_session_and_the_alias_key_to_the_alias() -> None:
    config = parse_router_env(
        {
            POOLS: json.dumps({"a": "http://h:1", "b": "http://h:2"}),
            SESSIONS: json.dumps({"a": [1, 2], "b": "3"}),
            MODEL_KEYS: json.dumps({"a": "alias-a-key", "b": "alias-b-key"}),
            SESSION_KEYS: json.dumps({"2": "session-2-key", "3": "session-3-key", "99": "unused"}),
        }
    )
    a, b = config.aliases
    assert (a.alias_key, a.session_keys) == ("alias-a-key", {2: "session-2-key"})
    assert (b.alias_key, b.session_keys) == ("alias-b-key", {3: "session-3-key"})


def test_empty_variables_mean_no_env_pools() -> None:
    config = parse_router_env({POOLS: "", SESSIONS: "  ", MODEL_KEYS: "", SESSION_KEYS: "", DEFAULT_MODEL: ""})
    assert config.is_empty is True
    assert config.aliases == ()
    assert config.default_model == ""
    assert parse_router_env({}).is_empty is True


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({POOLS: "{", SESSIONS: "{}"}, POOLS),
        ({POOLS: '{"a": "http://h"}'}, SESSIONS),
        ({SESSIONS: '{"a": 1}'}, POOLS),
        ({POOLS: '{"a": "http://h"}', SESSIONS: '{"a": "1x"}'}, SESSIONS),
        ({POOLS: '{"a": "http://h"}', SESSIONS: '{"a": "\\u00b2"}'}, SESSIONS),
        ({POOLS: '{"a": "http://h"}', SESSIONS: '{"a": 1}', SESSION_KEYS: '{"x": "k"}'}, SESSION_KEYS),
        ({POOLS: '{"a": "http://h"}', SESSIONS: '{"a": 1}', DEFAULT_MODEL: "b"}, DEFAULT_MODEL),
    ],
)
def test_parse_errors_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(RouterConfigError) as info:
        parse_router_env(env)
    assert info.value.variable == variable
    assert str(info.value).startswith(f"{variable}: ")


@pytest.mark.django_db
def test_routing_table_session_key_wins_over_alias_key() -> None:
    from routerpools.selectors import routing_table
    from routerpools.services import router_pools_sync

    config = parse_router_env(
        {
            POOLS: json.dumps({"oss-20b": ["http://h1:5010", "http://h2:5010"]}),
            SESSIONS: json.dumps({"oss-20b": [101, "102"]}),
            MODEL_KEYS: json.dumps({"oss-20b": "router-secret"}),
            SESSION_KEYS: json.dumps({"102": "session-102-secret"}),
            DEFAULT_MODEL: "oss-20b",
        }
    )
    router_pools_sync(config=config)
    route = routing_table()["oss-20b"]
    assert sorted((u.base_url, u.session_id, u.auth_key) for u in route.upstreams) == [
        ("http://h1:5010", 101, "router-secret"),
        ("http://h1:5010", 102, "session-102-secret"),
        ("http://h2:5010", 101, "router-secret"),
        ("http://h2:5010", 102, "session-102-secret"),
    ]


# --- Supabase -------------------------------------------------------------------------------------

SUPABASE_POOLER = "postgresql://postgres.abcdefgh:s3cret@aws-0-eu-central-1.pooler.supabase.com:6543/postgres"

_PRINT_DATABASES = (
    "import json; from django.conf import settings; print(json.dumps(settings.DATABASES['default'], default=str, sort_keys=True))"
)


def _databases(env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _PRINT_DATABASES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_supabase_pooler_url_is_used_without_database_url_and_is_pooler_safe() -> None:
    db = _databases(base_env(DATABASE_URL=None, PORTAL_SUPABASE_DB_URL=SUPABASE_POOLER))
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["HOST"], db["PORT"], db["NAME"], db["USER"], db["PASSWORD"]) == (
        "aws-0-eu-central-1.pooler.supabase.com",
        6543,
        "postgres",
        "postgres.abcdefgh",
        "s3cret",
    )
    # Transaction-mode pooling: no server-side prepared statements, no server-side cursors.
    assert "prepare_threshold" in db["OPTIONS"]
    assert db["OPTIONS"]["prepare_threshold"] is None
    assert db["DISABLE_SERVER_SIDE_CURSORS"] is True


def test_database_url_wins_over_supabase() -> None:
    db = _databases(base_env(DATABASE_URL="postgres://app@db.internal:5432/portal", PORTAL_SUPABASE_DB_URL=SUPABASE_POOLER))
    assert (db["HOST"], db["PORT"], db["NAME"], db["USER"]) == ("db.internal", 5432, "portal", "app")
    assert db.get("DISABLE_SERVER_SIDE_CURSORS", False) is False


def test_the_pooler_settings_reach_the_driver() -> None:
    """The settings built from a pooler URL, pointed at the local server, give a connection that never prepares."""
    script = (
        "from django.conf import settings; import django; django.setup()\n"
        "db = settings.DATABASES['default']\n"
        "assert db['PORT'] == 6543 and db['DISABLE_SERVER_SIDE_CURSORS'] is True\n"
        "db.update(HOST='127.0.0.1', PORT=5432, USER='postgres', PASSWORD='', NAME='postgres')\n"
        "from django.db import connection\n"
        "connection.ensure_connection()\n"
        "print(connection.connection.prepare_threshold)\n"
        "connection.close()\n"
    )
    # Pointed at the local server, which speaks no TLS: the Supabase default (require) is turned off.
    env = base_env(DATABASE_URL=None, PORTAL_SUPABASE_DB_URL=SUPABASE_POOLER, PORTAL_DB_SSLMODE="disable")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"
