"""Restart the gateway's daphne processes one at a time, through supervisord, without dropping a request.

Each process in turn gets SIGTERM (supervisord's stop: the process stops listening, so nginx sends new requests to
the others, and finishes what it has in flight), is started again, and must answer its readiness probe (`/ready`:
database, cache, pool and state loaded) before the next one goes: a restart during a database outage stops at the
first process rather than bringing up, one after the other, processes that have nothing cached to serve from. Standard library and supervisor only, so it runs inside the image:

    python deploy/rolling_restart.py                      # PORTAL_RUN_DIR as deploy/entrypoint.sh set it
    docker compose exec gateway python deploy/rolling_restart.py

One JSON line per process (name, seconds to stop, seconds until it answered again), then a summary line.
Exits 1, naming the process, when one does not come back: the remaining ones are left running untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

GROUP = "daphne"  # [program:daphne] in deploy/supervisord.conf; process names are daphne-<port>


def default_socket() -> str:
    run_dir = os.environ.get("PORTAL_RUN_DIR") or os.path.join(os.environ.get("TMPDIR") or "/tmp", "portal-gateway")
    return os.path.join(run_dir, "supervisor.sock")


def supervisor(socket_path: str) -> Any:
    transport = SupervisorTransport(None, None, serverurl=f"unix://{socket_path}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def port_of(name: str) -> int:
    try:
        return int(name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        raise SystemExit(f"rolling restart: cannot read a port in process name {name!r} (expected daphne-<port>)") from None


def probe_host() -> str:
    bind = os.environ.get("PORTAL_BIND", "127.0.0.1")
    return "127.0.0.1" if bind in ("", "0.0.0.0", "::") else bind


def answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (our own process)
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until_answers(url: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if answers(url):
            return time.monotonic() - started
        time.sleep(0.1)
    raise TimeoutError(url)


def restart_all(server: Any, *, probe_path: str, timeout: float, out: Any = sys.stdout) -> list[dict[str, Any]]:
    names = sorted(info["name"] for info in server.supervisor.getAllProcessInfo() if info["group"] == GROUP)
    if not names:
        raise SystemExit(f"rolling restart: supervisord runs no {GROUP} process")
    host = probe_host()
    done: list[dict[str, Any]] = []
    for name in names:
        url = f"http://{host}:{port_of(name)}{probe_path}"
        started = time.monotonic()
        state = server.supervisor.getProcessInfo(f"{GROUP}:{name}")["statename"]
        if state == "RUNNING":
            # Blocks until the process exited: its drain (PORTAL_SHUTDOWN_GRACE_S at most), or SIGKILL at stopwaitsecs.
            server.supervisor.stopProcess(f"{GROUP}:{name}", True)
        stopped = time.monotonic()
        server.supervisor.startProcess(f"{GROUP}:{name}", True)
        try:
            wait_until_answers(url, timeout)
        except TimeoutError:
            raise SystemExit(f"rolling restart: {name} did not answer {url} within {timeout:.0f}s; stopping here") from None
        line = {
            "process": name,
            "stop_s": round(stopped - started, 2),
            "back_s": round(time.monotonic() - stopped, 2),
            "total_s": round(time.monotonic() - started, 2),
        }
        done.append(line)
        print(json.dumps(line), file=out, flush=True)
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default=default_socket(), help="supervisord's unix socket (default: %(default)s)")
    parser.add_argument("--probe", default="/ready", help="path each restarted process must answer 200 on")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a restarted process has to answer")
    args = parser.parse_args(argv)
    started = time.monotonic()
    done = restart_all(supervisor(args.socket), probe_path=args.probe, timeout=args.timeout)
    print(json.dumps({"restarted": len(done), "seconds": round(time.monotonic() - started, 2)}), flush=True)


if __name__ == "__main__":
    main()
