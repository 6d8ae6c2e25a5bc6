"""deploy/, the Dockerfile and docker-compose.yml agree with each other and with the settings the gateway reads.

No container runtime runs here: what the image runs (deploy/entrypoint.sh) is exercised by tests/test_topology.py;
this checks, fast, that the image and the compose file run that same script with the same names, ports and limits.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.live import ROOT

DEPLOY = ROOT / "deploy"
ENTRYPOINT = "deploy/entrypoint.sh"


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def instructions(name: str) -> list[str]:
    return [args for instruction, args in dockerfile() if instruction == name]


def names_the_code_reads() -> set[str]:
    """Every environment name the settings, the router config and deploy/'s scripts read."""
    names: set[str] = set()
    for path in [ROOT / "portal_project" / "settings.py", ROOT / "routerpools" / "config.py", *DEPLOY.rglob("*")]:
        if path.is_file() and path.suffix in {".py", ".sh", ".conf", ".template", ""}:
            text = path.read_text()
            names |= set(re.findall(r"""["']((?:PORTAL|NGINX)_[A-Z0-9_]+)["']""", text))
            names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", text))
            names |= set(re.findall(r"%\(ENV_([A-Z][A-Z0-9_]+)\)s", text))
    return names


def service_env(name: str) -> dict[str, str]:
    return {key: str(value) for key, value in compose()["services"][name]["environment"].items()}


# --- the image ----------------------------------------------------------------------------------------------------------


def test_the_image_is_slim_python_311_non_root_and_starts_the_entry_script() -> None:
    assert instructions("FROM") == ["python:3.11-slim"]
    (user,) = instructions("USER")
    assert user not in {"root", "0"}
    (entrypoint,) = instructions("ENTRYPOINT")
    assert entrypoint == f'["/app/{ENTRYPOINT}"]' and instructions("WORKDIR") == ["/app"]
    assert os.access(ROOT / ENTRYPOINT, os.X_OK), "the entry script must be executable (git keeps the bit)"
    assert any("pip install -r requirements.txt" in run for run in instructions("RUN"))
    # The topology test starts the processes through this very script.
    assert f'"{ENTRYPOINT.split("/")[1]}"' in (ROOT / "tests" / "support" / "topology.py").read_text()


def test_collectstatic_runs_at_build_with_only_the_environment_the_dockerfile_gives_it(tmp_path: Path) -> None:
    (run,) = [run for run in instructions("RUN") if "collectstatic" in run]
    words = shlex.split(run.split("&&")[0])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    while "=" in words[0]:
        name, value = words.pop(0).split("=", 1)
        env[name] = value.replace("/tmp/collectstatic.sqlite3", str(tmp_path / "build.sqlite3"))
    assert words[:3] == ["python", "manage.py", "collectstatic"] and "--noinput" in words
    # Nothing else from this machine (no DATABASE_URL, SECRET_KEY...): the build must import the settings without it.
    done = subprocess.run(
        [sys.executable, *words[1:], "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_dockerignore_keeps_the_virtualenv_and_git_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "staticfiles"} <= set(ignored)


# --- supervisord --------------------------------------------------------------------------------------------------------


def test_supervisord_runs_daphne_quiet_without_proxy_headers_and_drains_on_sigterm() -> None:
    parser = configparser.RawConfigParser()
    parser.read(DEPLOY / "supervisord.conf")
    program = dict(parser.items("program:daphne"))
    command = program["command"].split()
    assert command[:3] == ["daphne", "-v", "0"] and "--proxy-headers" not in command
    assert "%(process_num)d" in program["command"] and "%(process_num)d" in program["process_name"]
    assert program["numprocs"] == "%(ENV_PORTAL_PROCESSES)s" and program["numprocs_start"] == "%(ENV_PORTAL_FIRST_PORT)s"
    assert program["stopsignal"] == "TERM" and program["stopwaitsecs"] == "%(ENV_PORTAL_STOP_WAIT_S)s"
    assert program["stdout_logfile"] == "/dev/stdout" and program["redirect_stderr"] == "true"
    assert parser.get("supervisord", "nodaemon") == "true"


def test_the_entry_script_waits_longer_than_the_drain_and_refuses_otherwise(tmp_path: Path) -> None:
    text = (DEPLOY / "entrypoint.sh").read_text()
    assert "PORTAL_STOP_WAIT_S:=$((PORTAL_SHUTDOWN_GRACE_S + 15))" in text
    assert "exec supervisord -c deploy/supervisord.conf" in text
    done = subprocess.run(
        ["sh", str(DEPLOY / "entrypoint.sh")],
        env={
            "PATH": os.environ["PATH"],
            "PORTAL_SHUTDOWN_GRACE_S": "30",
            "PORTAL_STOP_WAIT_S": "30",
            "PORTAL_RUN_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "PORTAL_STOP_WAIT_S: must be above PORTAL_SHUTDOWN_GRACE_S" in done.stderr


# --- docker-compose.yml -------------------------------------------------------------------------------------------------


def test_compose_has_the_whole_topology_and_the_gateway_runs_the_image_entry_script() -> None:
    services = compose()["services"]
    assert set(services) == {"nginx", "gateway", "postgres", "redis", "router-simulator"}
    gateway = services["gateway"]
    assert gateway["build"] == "." and "entrypoint" not in gateway and "command" not in gateway
    env = service_env("gateway")
    assert env["PORTAL_PROCESSES"] == "2" and env["PORTAL_TRUSTED_PROXY_COUNT"] == "1" and env["PORTAL_BIND"] == "0.0.0.0"
    ports = [int(env["PORTAL_FIRST_PORT"]) + i for i in range(int(env["PORTAL_PROCESSES"]))]
    assert [int(port) for port in gateway["expose"]] == ports
    assert instructions("EXPOSE") == [" ".join(str(port) for port in ports)]
    assert services["router-simulator"]["entrypoint"][:3] == ["python", "manage.py", "run_router_simulator"]
    assert "localhost" in env["ALLOWED_HOSTS"]


def test_docker_waits_for_the_drain_before_it_kills_the_gateway() -> None:
    env = service_env("gateway")
    grace = int(env.get("PORTAL_SHUTDOWN_GRACE_S") or int(env["PORTAL_UPSTREAM_TIMEOUT_S"]) + 10)  # entrypoint.sh's default
    stop_wait = grace + 15
    declared = compose()["services"]["gateway"]["stop_grace_period"]
    assert declared.endswith("s") and int(declared[:-1]) > stop_wait


def test_nginx_and_the_gateway_share_ports_and_limits() -> None:
    gateway, nginx = service_env("gateway"), service_env("nginx")
    for name in (
        "PORTAL_PROCESSES",
        "PORTAL_FIRST_PORT",
        "PORTAL_MAX_BODY_BYTES",
        "PORTAL_UPSTREAM_TIMEOUT_S",
        "PORTAL_REQUEST_READ_TIMEOUT_S",
    ):
        assert nginx[name] == gateway[name], name
    assert nginx["PORTAL_GATEWAY_HOST"] == "gateway"
    volumes = compose()["services"]["nginx"]["volumes"]
    assert "./deploy/nginx/render.sh:/docker-entrypoint.d/40-portal-render.sh:ro" in volumes
    assert f"./deploy/nginx:{nginx['PORTAL_NGINX_TEMPLATES']}:ro" in volumes


def test_every_portal_name_in_compose_is_one_the_code_reads() -> None:
    known = names_the_code_reads()
    used = {name for service in ("gateway", "nginx", "router-simulator") for name in service_env(service)}
    unknown = sorted(name for name in used if name.startswith(("PORTAL_", "NGINX_")) and name not in known)
    assert unknown == [], f"misspelt or unused: {unknown}"


# --- nginx --------------------------------------------------------------------------------------------------------------


def render(tmp_path: Path, **env: str) -> str:
    out = tmp_path / "portal.conf"
    done = subprocess.run(
        ["sh", str(DEPLOY / "nginx" / "render.sh")],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PORTAL_NGINX_SITE": str(out), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return out.read_text()


def directive(conf: str, name: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^\s*{name}\s+([^;{{]*);", conf, re.MULTILINE)]


def location(conf: str, prefix: str) -> str:
    start = conf.index(f"location {prefix} {{")
    return conf[start : conf.index("\n    }", start)]


def test_the_rendered_nginx_config_matches_the_gateways_limits_and_trusts_one_proxy(tmp_path: Path) -> None:
    env = {k: v for k, v in service_env("nginx").items() if not k.startswith("PORTAL_NGINX")}
    conf = render(tmp_path, **env)
    assert "${" not in conf
    assert directive(conf, "client_max_body_size") == [env["PORTAL_MAX_BODY_BYTES"]]
    server_read_timeout = directive(conf, "proxy_read_timeout")[0]  # the server's; the WebSocket location has its own
    assert int(server_read_timeout.rstrip("s")) > int(env["PORTAL_UPSTREAM_TIMEOUT_S"])
    assert directive(conf, "server") == ["gateway:8001 max_fails=0", "gateway:8002 max_fails=0"]
    assert "X-Forwarded-For $proxy_add_x_forwarded_for" in directive(conf, "proxy_set_header")
    assert "X-Forwarded-Proto $scheme" in directive(conf, "proxy_set_header")
    assert directive(location(conf, "/v1"), "proxy_buffering") == ["off"]
    # The WebSocket location sets headers of its own, so it must set the forwarded ones again (nginx inherits none).
    ws = location(conf, "/portal/ws/")
    assert {
        "Upgrade $http_upgrade",
        "X-Forwarded-For $proxy_add_x_forwarded_for",
        "X-Forwarded-Proto $scheme",
        "Host $http_host",
    } <= set(directive(ws, "proxy_set_header"))
    # Retried on another process only when nothing came back; never after a timeout (the request was being served).
    assert directive(conf, "proxy_next_upstream") == ["error non_idempotent"]
    assert not re.search(r"^\s*keepalive\s+\d", conf, re.MULTILINE), "no kept-alive upstream connections (deploy/README.md)"


@pytest.mark.skipif(not os.access("/usr/sbin/nginx", os.X_OK), reason="nginx is not installed")
def test_nginx_accepts_the_rendered_config(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    render(
        tmp_path,
        PORTAL_NGINX_MAIN=str(tmp_path),
        NGINX_LISTEN="127.0.0.1:18080",
        NGINX_CACHE_DIR=str(tmp_path / "cache"),
        NGINX_ERROR_LOG=str(tmp_path / "error.log"),
        NGINX_ACCESS_LOG=str(tmp_path / "access.log"),
    )
    done = subprocess.run(
        ["/usr/sbin/nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# --- start-up migrations ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_gateways_starting_at_once_both_migrate_a_fresh_database() -> None:
    """deploy/migrate.py under its advisory lock: the second waits, then finds nothing to do (two containers at once)."""
    import uuid

    import psycopg
    from django.conf import settings

    db = settings.DATABASES["default"]
    if not db["ENGINE"].endswith("postgresql"):
        pytest.skip("the lock is PostgreSQL's")
    server = {"host": db.get("HOST") or "127.0.0.1", "port": int(db.get("PORT") or 5432), "user": db.get("USER") or "postgres"}
    if db.get("PASSWORD"):
        server["password"] = db["PASSWORD"]
    name = f"deploy_migrate_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dbname="postgres", autocommit=True, **server) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        password = f":{server['password']}" if "password" in server else ""
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST")},
            "DJANGO_SETTINGS_MODULE": "portal_project.settings",
            "DATABASE_URL": f"postgres://{server['user']}{password}@{server['host']}:{server['port']}/{name}",
        }
        runs = [
            subprocess.Popen(
                [sys.executable, str(DEPLOY / "migrate.py")],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [run.communicate(timeout=500)[0] for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outputs
        # One of them applied everything, the other nothing.
        applied = sorted(output.count(" OK") for output in outputs)
        assert applied[0] == 0 and applied[1] > 10, outputs
        with psycopg.connect(dbname=name, **server) as conn:
            doubled = conn.execute("SELECT app, name FROM django_migrations GROUP BY 1, 2 HAVING count(*) > 1").fetchall()
        assert doubled == []
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True, **server) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
