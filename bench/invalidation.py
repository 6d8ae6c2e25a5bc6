"""Targeted cache invalidation under a sign-up burst, and how fast a revoked key is refused everywhere.

    python bench/invalidation.py --signups 200 --trials 20

Two gateway daphne processes on a database of their own (`portal_bench_inval`), Redis, the router simulator.
Steady load on organization A's key against both processes while this script signs up N users through the
services (user, personal organization on the free plan with its subscription, an API key, the playground key);
then the statements the two processes ran on the /v1 path during the burst (`gateway_db_queries_v1` on
/metrics: organization A's requests only, expected 0). Then, over several trials, the time from a key's revocation
(apikey_revoke, committed) until both processes refuse it: over Redis pub/sub, and with pub/sub unheard (two more
processes on a channel nobody publishes to) where the poll (PORTAL_CACHE_POLL_MS, 250 by default) is the fallback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench import stop  # noqa: E402  (the main bench's: terminate, then kill after 30 s)

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_NAME = "portal_bench_inval"
DB_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
TOKEN = "bench-metrics-token-not-secret"
PORTS = (18201, 18202, 18203, 18204)
CLIENTS = {port: httpx.Client(timeout=10) for port in PORTS}  # one keep-alive connection per process
CHAT = {"model": "oss-20b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

SETUP = """
from accounts.models import Organization
from billing.models import Plan
plan, _ = Plan.objects.update_or_create(slug="bench", defaults={"name": "Bench", "requests_per_minute": 1_000_000_000,
    "tokens_per_minute": None, "concurrent_requests": None, "window_requests": None, "weekly_requests": None})
org = Organization.objects.get(slug="bench-a"); org.plan = plan; org.save()
"""


def sh(*args: str, env: dict[str, str]) -> str:
    return subprocess.run(args, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout.strip()


def gateway_env(sim_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": DB_URL,
            "REDIS_URL": REDIS_URL,
            "SECRET_KEY": "bench-secret",
            "PORTAL_API_KEY_PEPPER": "bench-pepper",
            "PORTAL_METRICS_TOKEN": TOKEN,
            "PORTAL_ROUTER_POOLS_JSON": json.dumps({"oss-20b": sim_url}),
            "PORTAL_ROUTER_MODEL_SESSIONS_JSON": json.dumps({"oss-20b": [101]}),
            "PORTAL_DEFAULT_MODEL": "oss-20b",
            "PORTAL_LIMITS_PREFIX": f"lim-bench-inval-{uuid.uuid4().hex[:8]}",
            "LOG_LEVEL": "WARNING",
        }
    )
    return env


def prepare_database(env: dict[str, str]) -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    sh(sys.executable, "manage.py", "migrate", "--noinput", env=env)
    sh(sys.executable, "manage.py", "sync_router_pools", env=env)
    sh(sys.executable, "manage.py", "create_org", "--slug", "bench-a", "--name", "Bench A", "--plan", "pro", env=env)
    sh(sys.executable, "manage.py", "shell", "-c", SETUP, env=env)
    return sh(sys.executable, "manage.py", "issue_key", "--org", "bench-a", "--name", "bench", env=env)


def start(env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port), "portal_project.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"daphne on {port} did not start")


def chat(client: httpx.Client, port: int, raw: str) -> int:
    return client.post(
        f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {raw}"}
    ).status_code


def operator(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", headers={"authorization": f"Bearer {TOKEN}"}, timeout=5)


def v1_statements(port: int) -> int:
    found = re.search(r"^gateway_db_queries_v1 ([0-9.e+]+)$", operator(port, "/metrics").text, re.M)
    assert found, "gateway_db_queries_v1 missing"
    return int(float(found.group(1)))


def wait_caught_up(ports: tuple[int, ...], timeout: float = 30.0) -> float:
    from gateway.invalidation import read_position

    target = read_position()
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if all(operator(port, "/health").json().get("cache_epoch") == target for port in ports):
            return time.monotonic() - started
        time.sleep(0.01)
    raise SystemExit(f"gateways did not reach cache change {target} in {timeout}s")


def refused_everywhere(ports: tuple[int, ...], raw: str, since: float, limit: float = 10.0) -> float:
    """Seconds from `since` until every process answers 401 for `raw` (each asked in a loop of its own)."""
    times: dict[int, float] = {}

    def ask(port: int) -> None:
        client = CLIENTS[port]  # made up front: a new httpx.Client costs ~100 ms of TLS set-up on this machine
        while time.monotonic() - since < limit:
            if chat(client, port, raw) == 401:
                times[port] = time.monotonic() - since
                return

    threads = [threading.Thread(target=ask, args=(port,)) for port in ports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if len(times) != len(ports):
        raise SystemExit(f"revoked key still accepted after {limit}s by {set(ports) - set(times)}")
    return max(times.values())


def warm(port: int, raw: str, limit: float = 5.0) -> None:
    """Until the process serves the key (a process just started may still be loading its tables or probing)."""
    deadline = time.monotonic() + limit
    while True:
        response = CLIENTS[port].post(
            f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {raw}"}
        )
        if response.status_code == 200:
            return
        print(
            f"  (process on {port} answered {response.status_code} to a new key: {response.text[:200]}; asking again)",
            file=sys.stderr,
        )
        if time.monotonic() > deadline:
            raise SystemExit(f"process on {port} does not serve a new key: {response.status_code} {response.text[:300]}")
        time.sleep(0.05)


def revocation_trials(ports: tuple[int, ...], trials: int) -> list[float]:
    from apikeys.services import apikey_create, apikey_revoke
    from billing.services import organization_create

    org = organization_create(slug=f"rev-{uuid.uuid4().hex[:8]}", name="Revoked", plan_slug="pro")
    results = []
    for _ in range(trials):
        created = apikey_create(organization=org, name="to revoke", actor_label="bench")
        for port in ports:
            warm(port, created.raw)  # cached by both processes
        since = time.monotonic()  # from the call: the revocation's own transaction (~10 ms) is counted in
        apikey_revoke(api_key=created.api_key, actor_label="bench")  # committed (and published) on return
        results.append(refused_everywhere(ports, created.raw, since))
    return results


def summary(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return f"p50 {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms over {len(ms)} trials"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--signups", type=int, default=200)
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()

    from simulator import SimulatorServer

    sim = SimulatorServer(port=0, answer_tokens=4).start()
    env = gateway_env(sim.base_url)
    raw_a = prepare_database(env)
    os.environ.update({**env, "DJANGO_SETTINGS_MODULE": "portal_project.settings"})  # this process writes like the portal
    import django

    django.setup()
    from accounts.services import user_get_or_create
    from apikeys.services import apikey_create, apikey_get_or_create_playground
    from portal.services import personal_organization_create

    pair = PORTS[:2]
    procs = [start(env, port) for port in pair]
    try:
        with httpx.Client(timeout=10) as client:
            for port in pair:
                assert chat(client, port, raw_a) == 200, "org A's key is not served"
        wait_caught_up(pair)
        before = {port: v1_statements(port) for port in pair}

        statuses: Counter[int] = Counter()
        done = threading.Event()

        def steady(port: int) -> None:
            with httpx.Client(timeout=10) as client:
                while not done.is_set():
                    statuses[chat(client, port, raw_a)] += 1

        load = [threading.Thread(target=steady, args=(port,)) for port in pair]
        for thread in load:
            thread.start()
        started = time.monotonic()
        for n in range(args.signups):
            user, _ = user_get_or_create(email=f"burst-{n}-{uuid.uuid4().hex[:6]}@example.com")
            org = personal_organization_create(user=user)
            apikey_create(organization=org, name="first key", actor_label="bench")
            apikey_get_or_create_playground(organization=org)
        burst_s = time.monotonic() - started
        caught_up_s = wait_caught_up(pair)
        done.set()
        for thread in load:
            thread.join()
        after = {port: v1_statements(port) for port in pair}
        from gateway.models import CacheChange

        print(
            f"burst: {args.signups} sign-ups (user, organization, subscription, key, playground key) in {burst_s:.2f}s "
            f"({args.signups / burst_s:.0f}/s), {CacheChange.objects.count()} cache changes logged; both processes "
            f"caught up {caught_up_s * 1000:.0f} ms after the last"
        )
        print(f"org A's requests during the burst: {dict(statuses)} (both processes)")
        print(f"statements on the /v1 path during the burst: {[after[p] - before[p] for p in pair]} (per process; expected 0)")
        print(f"revoked key refused by both processes, pub/sub: {summary(revocation_trials(pair, args.trials))}")
    finally:
        for proc in procs:
            stop(proc)

    unheard = {**env, "PORTAL_CACHE_CHANNEL": f"nobody-publishes-here-{uuid.uuid4().hex[:8]}"}
    fallback = PORTS[2:]
    procs = [start(unheard, port) for port in fallback]
    try:
        poll_ms = int(env.get("PORTAL_CACHE_POLL_MS", "250"))
        print(
            f"revoked key refused by both processes, poll only ({poll_ms} ms): {summary(revocation_trials(fallback, args.trials))}"
        )
    finally:
        for proc in procs:
            stop(proc)
        sim.stop()


if __name__ == "__main__":
    main()
