"""TLS to PostgreSQL: `require` by default for Supabase's hosts, PORTAL_DB_SSLMODE and PORTAL_DB_SSLROOTCERT settable,
an sslmode in the URL kept; what the settings say reaches the driver."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.live import ROOT
from tests.test_config import SUPABASE_POOLER, _databases, base_env, manage_check

SUPABASE_DIRECT = "postgresql://postgres:s3cret@db.abcdefghijklmnop.supabase.co:5432/postgres"
SUPABASE_SESSION_POOLER = "postgresql://postgres.abcdefgh:s3cret@aws-0-eu-central-1.pooler.supabase.com:5432/postgres"


@pytest.mark.parametrize("url", [SUPABASE_DIRECT, SUPABASE_POOLER, SUPABASE_SESSION_POOLER])
def test_a_supabase_host_gets_require_by_default(url: str) -> None:
    assert _databases(base_env(DATABASE_URL=url))["OPTIONS"]["sslmode"] == "require"
    assert _databases(base_env(DATABASE_URL=None, PORTAL_SUPABASE_DB_URL=url))["OPTIONS"]["sslmode"] == "require"


def test_another_host_keeps_what_its_url_says() -> None:
    assert "sslmode" not in _databases(base_env(DATABASE_URL="postgres://app@db.internal:5432/portal"))["OPTIONS"]
    url = "postgres://app@db.internal:5432/portal?sslmode=verify-full&sslrootcert=/etc/ssl/certs/ca-certificates.crt"
    options = _databases(base_env(DATABASE_URL=url))["OPTIONS"]
    assert (options["sslmode"], options["sslrootcert"]) == ("verify-full", "/etc/ssl/certs/ca-certificates.crt")


def test_an_sslmode_in_the_url_wins_over_the_supabase_default() -> None:
    assert (
        _databases(base_env(DATABASE_URL=f"{SUPABASE_DIRECT}?sslmode=verify-ca&sslrootcert=system"))["OPTIONS"]["sslmode"]
        == "verify-ca"
    )


def test_the_variables_set_the_mode_and_the_ca_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "supabase-ca.crt"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    options = _databases(
        base_env(DATABASE_URL=SUPABASE_DIRECT, PORTAL_DB_SSLMODE="verify-full", PORTAL_DB_SSLROOTCERT=str(bundle))
    )["OPTIONS"]
    assert (options["sslmode"], options["sslrootcert"]) == ("verify-full", str(bundle))
    # The variable is the operator's explicit choice: it wins over the URL's.
    options = _databases(base_env(DATABASE_URL="postgres://app@db.internal/portal?sslmode=disable", PORTAL_DB_SSLMODE="require"))[
        "OPTIONS"
    ]
    assert options["sslmode"] == "require"


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            {"PORTAL_DB_SSLMODE": "on"},
            "PORTAL_DB_SSLMODE: sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full; got 'on'",
        ),
        ({"DATABASE_URL": "postgres://app@db.internal/portal?sslmode=yes"}, "DATABASE_URL: sslmode must be one of"),
        (
            {"PORTAL_DB_SSLMODE": "verify-full"},
            "PORTAL_DB_SSLMODE: verify-full checks the server's certificate: set PORTAL_DB_SSLROOTCERT",
        ),
        ({"PORTAL_DB_SSLROOTCERT": "/nonexistent/ca.crt"}, "PORTAL_DB_SSLROOTCERT: no such file: /nonexistent/ca.crt"),
    ],
)
def test_a_bad_tls_setting_stops_start_up_with_one_line(overrides: dict[str, str], line: str) -> None:
    result = manage_check(base_env(**overrides))
    assert result.returncode == 2 and result.stderr.startswith(f"configuration error: {line}"), result.stderr
    assert len(result.stderr.splitlines()) == 1


def _connect(**env: str) -> subprocess.CompletedProcess[str]:
    script = (
        "import django; django.setup()\n"
        "from django.db import connection\n"
        "try:\n"
        "    connection.ensure_connection(); print('connected')\n"
        "except Exception as exc:\n"
        "    print('refused:', exc)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=base_env(**env), capture_output=True, text=True, timeout=60
    )


def test_the_mode_reaches_the_driver() -> None:
    """The local server speaks no TLS: `require` must refuse it (no silent fallback to plain text), `disable` connect."""
    local = "postgres://postgres@127.0.0.1:5432/postgres"
    assert _connect(DATABASE_URL=local, PORTAL_DB_SSLMODE="disable").stdout.strip() == "connected"
    refused = _connect(DATABASE_URL=local, PORTAL_DB_SSLMODE="require")
    assert refused.stdout.startswith("refused:"), refused.stdout
    # Through the pool the caller sees a timeout; the pool's log line says why (the server does not support SSL).
    assert "SSL" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
