"""The production topology on this machine, started from deploy/ as the image starts it: nginx (Debian's, with the
config deploy/nginx/render.sh writes), daphne processes under supervisord through deploy/entrypoint.sh, PostgreSQL
behind a relay the test can cut, Redis, and the router simulator."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.live import ROOT
from tests.support.relay import CuttableRelay

NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
START_S = 60.0  # a process, nginx or the whole topology must be up within this, or the test fails saying which
CLIENT_ADDRESS = "127.0.0.2"  # the test client's own loopback address, so that it differs from nginx's 127.0.0.1


def nginx_missing() -> str | None:
    """Why the topology cannot run here, or None."""
    if not os.access(NGINX, os.X_OK):
        return f"nginx is not installed at {NGINX} (.ci/run installs Debian's)"
    if shutil.which("envsubst") is None:
        return "envsubst (Debian's gettext-base, a dependency of nginx's image) is missing"
    return None


def free_port_run(count: int) -> int:
    """The first of `count` consecutive free ports on 127.0.0.1 (the processes take PORTAL_FIRST_PORT and up)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count > 65000:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")


def client_transport(**kwargs: Any) -> httpx.HTTPTransport:
    """Connections that leave from CLIENT_ADDRESS (every 127.x address is the loopback on Linux)."""
    return httpx.HTTPTransport(local_address=CLIENT_ADDRESS, **kwargs)


def wait_until(what: str, predicate: Any, timeout: float = START_S, interval: float = 0.1, log: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = f"\n--- log ---\n{log()[-4000:]}" if log is not None else ""
            pytest.fail(f"{what}: not within {timeout:.0f}s{tail}")
        time.sleep(interval)


def answers_200(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Topology:
    """nginx on `nginx_port` in front of `processes` daphne processes on `first_port` and up."""

    gateway_env: dict[str, str]  # the gateway's environment, DATABASE_URL excepted (it points at the relay)
    database: dict[str, Any]  # settings.DATABASES["default"] of the test run
    processes: int = 2
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="topology-")))
    first_port: int = 0
    nginx_port: int = 0
    relay: CuttableRelay | None = None
    supervisord: subprocess.Popen | None = None
    nginx: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    @property
    def ports(self) -> list[int]:
        return [self.first_port + i for i in range(self.processes)]

    def process_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports[index]}"

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def gateway_log_path(self) -> Path:
        return self.dir / "gateway.log"

    @property
    def access_log_path(self) -> Path:
        return self.dir / "nginx" / "access.log"

    def gateway_log(self) -> str:
        return self.gateway_log_path.read_text(errors="replace") if self.gateway_log_path.exists() else ""

    def nginx_log(self) -> str:
        path = self.dir / "nginx" / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def env(self) -> dict[str, str]:
        """What deploy/entrypoint.sh gets: the gateway's environment plus the deploy settings."""
        assert self.relay is not None
        db = self.database
        user = db.get("USER") or "postgres"
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        return {
            **self.gateway_env,
            "DATABASE_URL": f"postgres://{user}{password}@127.0.0.1:{self.relay.port}/{db['NAME']}",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PORTAL_PROCESSES": str(self.processes),
            "PORTAL_FIRST_PORT": str(self.first_port),
            "PORTAL_BIND": "127.0.0.1",
            "PORTAL_RUN_DIR": str(self.run_dir),
        }

    # --- start and stop ----------------------------------------------------------------------------------------------

    def start(self) -> Topology:
        self.dir.chmod(0o755)  # nginx's workers (nobody) walk into it
        db = self.database
        self.relay = CuttableRelay((db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432))).start()
        self.first_port = free_port_run(self.processes)
        self.start_gateway()
        self.start_nginx()
        return self

    def start_gateway(self) -> None:
        """deploy/entrypoint.sh, as the image's ENTRYPOINT runs it: migrate under the lock, then supervisord."""
        log = open(self.gateway_log_path, "ab")  # noqa: SIM115 (held by the child; closed with it)
        self.supervisord = subprocess.Popen(
            [str(ROOT / "deploy" / "entrypoint.sh")],
            cwd=ROOT,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        for port in self.ports:
            wait_until(
                f"daphne on {port} answering /health 200",
                lambda port=port: self._alive() and answers_200(f"http://127.0.0.1:{port}/health"),
                log=self.gateway_log,
            )

    def _alive(self) -> bool:
        if self.supervisord is not None and self.supervisord.poll() is not None:
            pytest.fail(f"deploy/entrypoint.sh exited with {self.supervisord.returncode}:\n{self.gateway_log()[-4000:]}")
        return True

    def render_nginx(self) -> Path:
        conf_dir = self.dir / "nginx"
        conf_dir.mkdir(exist_ok=True)
        conf_dir.chmod(0o755)
        self.nginx_port = self.nginx_port or free_port_run(1)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PORTAL_NGINX_MAIN": str(conf_dir),
            "PORTAL_GATEWAY_HOST": "127.0.0.1",
            "PORTAL_PROCESSES": str(self.processes),
            "PORTAL_FIRST_PORT": str(self.first_port),
            "NGINX_LISTEN": f"127.0.0.1:{self.nginx_port}",
            "NGINX_ACCESS_LOG": str(self.access_log_path),
            "NGINX_ERROR_LOG": str(conf_dir / "error.log"),
            "NGINX_CACHE_DIR": str(conf_dir / "cache"),
        }
        # The limits nginx mirrors: from the gateway's own environment, the one source of both.
        for name in ("PORTAL_MAX_BODY_BYTES", "PORTAL_UPSTREAM_TIMEOUT_S", "PORTAL_REQUEST_READ_TIMEOUT_S"):
            if name in self.gateway_env:
                env[name] = self.gateway_env[name]
        done = subprocess.run(
            ["sh", str(ROOT / "deploy" / "nginx" / "render.sh")], env=env, capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, f"render.sh failed:\n{done.stdout}\n{done.stderr}"
        return conf_dir

    def start_nginx(self) -> None:
        conf_dir = self.render_nginx()
        command = [NGINX, "-p", str(conf_dir), "-c", str(conf_dir / "nginx.conf")]
        checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30, check=False)
        assert checked.returncode == 0, f"nginx -t refused the rendered config:\n{checked.stderr}"
        self.nginx = subprocess.Popen(
            [*command, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_until(
            "nginx answering /health 200", lambda: self._nginx_alive() and answers_200(f"{self.url}/health"), log=self.nginx_log
        )

    def _nginx_alive(self) -> bool:
        if self.nginx is not None and self.nginx.poll() is not None:
            pytest.fail(f"nginx exited with {self.nginx.returncode}:\n{self.nginx_log()[-4000:]}")
        return True

    def stop(self) -> None:
        """Everything this started, each by its own pid; waits for the processes' own drain first."""
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)  # graceful: finishes what it has in flight
            try:
                self.nginx.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.nginx.pid, signal.SIGKILL)
                self.nginx.wait(5)
        if self.supervisord is not None and self.supervisord.poll() is None:
            self.supervisord.send_signal(signal.SIGTERM)  # supervisord stops the processes (each drains), then exits
            try:
                self.supervisord.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.supervisord.pid, signal.SIGKILL)
                self.supervisord.wait(5)
        if self.relay is not None:
            self.relay.cut()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- supervisord -------------------------------------------------------------------------------------------------

    def supervisor(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, serverurl=f"unix://{self.run_dir / 'supervisor.sock'}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def pids(self) -> dict[str, int]:
        return {info["name"]: info["pid"] for info in self.supervisor().supervisor.getAllProcessInfo()}

    def rolling_restart(self, timeout: float = 180) -> list[dict[str, Any]]:
        """deploy/rolling_restart.py as an operator runs it; its JSON lines (one per process, then a summary)."""
        done = subprocess.run(
            [sys.executable, str(ROOT / "deploy" / "rolling_restart.py")],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"rolling restart failed:\n{done.stdout}\n{done.stderr}\n{self.gateway_log()[-4000:]}"
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    # --- logs --------------------------------------------------------------------------------------------------------

    def gateway_access_lines(self) -> list[dict[str, Any]]:
        """The gateway's JSON access lines (logger "access"), as supervisord passed them on from every process."""
        lines = []
        for line in self.gateway_log().splitlines():
            if line.startswith("{") and '"access"' in line:
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(line))
        return lines

    def nginx_upstream_errors(self) -> dict[str, int]:
        """How often nginx met a process that was going away, so far: a connection refused (nothing sent), or one
        that broke before any answer (sent, never read). Each was sent on to the next process."""
        log = self.nginx_log()
        return {
            "refused": log.count("(111: Connection refused) while connecting to upstream"),
            "broken": sum(
                log.count(text)
                for text in ("(104: Connection reset by peer) while reading response header", "prematurely closed connection")
            ),
        }

    def nginx_access_lines(self) -> list[dict[str, Any]]:
        if not self.access_log_path.exists():
            return []
        return [json.loads(line) for line in self.access_log_path.read_text().splitlines() if line.strip()]
