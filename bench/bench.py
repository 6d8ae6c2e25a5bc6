"""Measure the gateway: direct-to-router vs the full gateway under daphne, with wrk, on 127.0.0.1.

Usage: python bench/bench.py [--duration 10] [--connections 1,32] [--transports aiohttp,httpx]
Starts its own router simulator, a PostgreSQL database `portal_bench`, and one daphne process per
configuration; prints a table and writes bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from routerpools.simulator import SimulatorServer  # noqa: E402

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
DB_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/portal_bench")
CHAT_BODY = {"model": "oss-20b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


def sh(*args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(args, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout.strip()


def base_env(sim_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": DB_URL,
            "SECRET_KEY": "bench-secret",
            "PORTAL_API_KEY_PEPPER": "bench-pepper",
            "PORTAL_ROUTER_POOLS_JSON": json.dumps({"oss-20b": sim_url}),
            "PORTAL_ROUTER_MODEL_SESSIONS_JSON": json.dumps({"oss-20b": [101]}),
            "PORTAL_DEFAULT_MODEL": "oss-20b",
            "LOG_LEVEL": "WARNING",
        }
    )
    return env


def prepare_database(env: dict[str, str]) -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS portal_bench WITH (FORCE)")
        conn.execute("CREATE DATABASE portal_bench")
    sh(sys.executable, "manage.py", "migrate", "--noinput", env=env)
    sh(sys.executable, "manage.py", "sync_router_pools", env=env)
    sh(sys.executable, "manage.py", "create_org", "--slug", "bench", "--name", "Bench", "--plan", "pro", env=env)
    return sh(sys.executable, "manage.py", "issue_key", "--org", "bench", "--name", "bench", env=env)


def wrk(url: str, *, connections: int, duration: int, body: dict, headers: dict[str, str]) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\n')
        script.write(f"wrk.body = {json.dumps(json.dumps(body))}\n")
        for name, value in headers.items():
            script.write(f'wrk.headers["{name}"] = "{value}"\n')
        script.write(
            "done = function(summary, latency, requests)\n"
            '  io.write(string.format("JSON {\\"p50\\": %d, \\"p99\\": %d, \\"requests\\": %d, \\"errors\\": %d}\\n",\n'
            "    latency:percentile(50), latency:percentile(99), summary.requests,\n"
            "    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))\n"
            "end\n"
        )
    out = sh("wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script.name, url)
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    stats = json.loads(out.split("JSON ", 1)[1].splitlines()[0])
    return {"rps": rps, "p50_ms": stats["p50"] / 1000, "p99_ms": stats["p99"] / 1000, "errors": stats["errors"]}


def start_daphne(env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "portal_project.asgi:application"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("daphne did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", default="1,32")
    parser.add_argument("--transports", default="aiohttp,httpx")
    args = parser.parse_args()
    conns = [int(c) for c in args.connections.split(",")]

    sim = SimulatorServer(port=0).start()
    env = base_env(sim.base_url)
    key = prepare_database(env)
    results: list[dict] = []
    direct_body = {"prompt": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "max_tokens": 16, "stream": False}
    for c in conns:
        r = wrk(f"{sim.base_url}/api/v3/completions/101", connections=c, duration=args.duration, body=direct_body,
                headers={"Content-Type": "application/json"})
        results.append({"target": "direct-to-router", "connections": c, **r})
    for transport in args.transports.split(","):
        port = 18000 + len(results)
        proc = start_daphne({**env, "PORTAL_UPSTREAM_TRANSPORT": transport}, port)
        try:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
            wrk(url, connections=4, duration=2, body=CHAT_BODY, headers=headers)  # warm-up
            for c in conns:
                r = wrk(url, connections=c, duration=args.duration, body=CHAT_BODY, headers=headers)
                results.append({"target": f"gateway ({transport} transport)", "connections": c, **r})
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    sim.stop()

    direct = {r["connections"]: r for r in results if r["target"] == "direct-to-router"}
    print(f"\n{'target':34} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'errors':>7}")
    for r in results:
        added = r["p50_ms"] - direct[r["connections"]]["p50_ms"]
        r["added_p50_ms"] = round(added, 3)
        print(f"{r['target']:34} {r['connections']:>5} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {added:>10.2f} {r['errors']:>7}")
    out = ROOT / "bench" / "results" / "latest.json"
    out.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results}, indent=2))
    print(f"\nwritten {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
