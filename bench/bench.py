"""The benchmark suite: direct-to-router, the bare ASGI passthrough, the bare Django floor and the full gateway,
side by side, with wrk; every gateway figure also as a ratio to the passthrough.

    python bench/bench.py                     # the table (make bench)
    python bench/bench.py --streams 1000      # plus 1,000 concurrent SSE streams held open (peak RSS, errors)
    python bench/bench.py --soak 600          # plus a 10-minute soak at a steady rate (RSS growth, rows == requests)
    python bench/bench.py --unkey             # instead: Unkey mode against a fake Unkey 20-40 ms away, cache off and on

Everything runs on 127.0.0.1: a router simulator with a fixed answer (so the gateway is what
is measured), a PostgreSQL database (`BENCH_DB_NAME`, default `portal_bench`), Redis (`BENCH_REDIS_URL`,
default db 14), one daphne process per target on ports from `BENCH_PORT_BASE` (default 18090; the run
uses the 60 ports from there). The gateway runs as production does: a plan with all five limits set
(never binding, each doing its Redis work) and a routing table of a dozen aliases, some of whose routers
are down, hanging or dropping connections; the benched alias is healthy.
Results: a table on stdout, bench/results/latest.json and bench/results/latest.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator import SimulatorServer  # noqa: E402

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_NAME = os.environ.get("BENCH_DB_NAME", "portal_bench")
PORT_BASE = int(os.environ.get("BENCH_PORT_BASE", "18090"))
FLOOR_PORT, PASSTHROUGH_PORT, GATEWAY_PORT, UNKEY_PORT, BAD_ROUTER_PORT = (PORT_BASE + n for n in (0, 1, 10, 20, 40))
DB_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
PROMPT = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
CHAT = {"model": "oss-20b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
STREAM_TOKENS = 64  # the simulator's fixed answer (answer_tokens=64), all of it within CHAT_STREAM's max_tokens
CHAT_STREAM = {**CHAT, "max_tokens": STREAM_TOKENS, "stream": True}
DIRECT = {"prompt": PROMPT, "max_tokens": 16, "stream": False}
DIRECT_STREAM = {"prompt": PROMPT, "max_tokens": 64, "stream": True}

# All five limits set, as a paying customer's plan has them, far above what a run sends: each does its Redis work
# on every request (admission and settlement), none refuses.
BENCH_SETUP = """
from accounts.models import Organization
from billing.models import Plan
from billing.services import ledger_entry_add
plan, _ = Plan.objects.update_or_create(slug="bench", defaults={"name": "Bench", "requests_per_minute": 1_000_000_000,
    "tokens_per_minute": 2_000_000_000, "concurrent_requests": 100_000, "window_requests": 2_000_000_000,
    "window_seconds": 3600, "weekly_requests": 2_000_000_000, "prepaid": True})
org = Organization.objects.get(slug="bench"); org.plan = plan
org.spend_cap_daily_micros = 10**15; org.spend_cap_monthly_micros = 10**16; org.save()
ledger_entry_add(organization=org, kind="credit", amount_micros=10**15, memo="bench balance")
"""
# The money checks too (issue 13): a prepaid plan whose balance pays for every request of a run, and spend caps per
# UTC day and month on the organization and on the key (KEY_CAPS, after issue_key), far above what a run spends, so
# the admission script reserves and settles money on every request and never refuses.
KEY_CAPS = """
from apikeys.models import ApiKey
ApiKey.objects.filter(organization__slug="bench").update(spend_cap_daily_micros=10**15, spend_cap_monthly_micros=10**16)
"""
# `--setup minimal`, the setup of the runs before issue 15: one alias, a plan with requests per minute only.
MINIMAL_SETUP = """
from accounts.models import Organization
from billing.models import Plan
plan, _ = Plan.objects.update_or_create(slug="bench", defaults={"name": "Bench", "requests_per_minute": 1_000_000_000,
    "tokens_per_minute": None, "concurrent_requests": None, "window_requests": None, "weekly_requests": None})
org = Organization.objects.get(slug="bench"); org.plan = plan; org.save()
"""
SETUP = "production"


class BadRouters:
    """Routers as production sees them on a bad day, each on a port of its own: one that accepts connections and
    never answers (hanging), one that accepts and closes at once (dropping); and ports nobody listens on (down)."""

    def __init__(self, port: int) -> None:
        self.hang_port, self.drop_port = port, port + 1
        self.down_ports = (port + 2, port + 3)
        self._servers: list[socket.socket] = []
        self._held: list[socket.socket] = []

    def start(self) -> BadRouters:
        import threading

        for port, hold in ((self.hang_port, True), (self.drop_port, False)):
            server = socket.create_server(("127.0.0.1", port), backlog=256)
            self._servers.append(server)
            threading.Thread(target=self._serve, args=(server, hold), daemon=True).start()
        return self

    def _serve(self, server: socket.socket, hold: bool) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if hold:
                self._held.append(conn)
            else:
                conn.close()

    def stop(self) -> None:
        for sock in self._servers + self._held:
            sock.close()


def routing(sim_url: str, bad: BadRouters) -> tuple[dict[str, Any], dict[str, Any]]:
    """A production-sized routing table: the benched alias (healthy), four more healthy ones, and seven whose
    routers are down, hanging, dropping, or a mix; the health prober polls them all as it would in production."""
    down = [f"http://127.0.0.1:{p}" for p in bad.down_ports]
    hang, drop = f"http://127.0.0.1:{bad.hang_port}", f"http://127.0.0.1:{bad.drop_port}"
    pools: dict[str, Any] = {"oss-20b": sim_url}
    sessions: dict[str, Any] = {"oss-20b": [101]}
    for n, alias in enumerate(("llama-8b", "qwen-7b", "mistral-7b", "gemma-9b"), start=102):
        pools[alias], sessions[alias] = sim_url, [n]
    broken = {
        "phi-3": down[0],
        "yi-9b": down[1],
        "falcon-7b": hang,
        "olmo-7b": hang,
        "deepseek-7b": drop,
        "granite-8b": drop,
        "mixed-8b": [sim_url, down[0], hang, drop],
    }
    for n, (alias, url) in enumerate(broken.items(), start=201):
        pools[alias], sessions[alias] = url, [n]
    return pools, sessions


def sh(*args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(args, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout.strip()


def base_env(sim_url: str, bad: BadRouters) -> dict[str, str]:
    pools, sessions = routing(sim_url, bad) if SETUP == "production" else ({"oss-20b": sim_url}, {"oss-20b": [101]})
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": DB_URL,
            "REDIS_URL": REDIS_URL,
            "SECRET_KEY": "bench-secret",
            "PORTAL_API_KEY_PEPPER": "bench-pepper",
            "PORTAL_METRICS_TOKEN": "bench-metrics-token-not-secret",  # required with DEBUG off
            "PORTAL_ROUTER_POOLS_JSON": json.dumps(pools),
            "PORTAL_ROUTER_MODEL_SESSIONS_JSON": json.dumps(sessions),
            "PORTAL_DEFAULT_MODEL": "oss-20b",
            "PORTAL_LIMITS_PREFIX": f"lim-bench-{int(time.time())}",
            "LOG_LEVEL": "INFO",  # the gateway writes its JSON access line per request, as in production
            "FLOOR_UPSTREAM": f"{sim_url}/api/v3/completions/101",
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
    sh(sys.executable, "manage.py", "create_org", "--slug", "bench", "--name", "Bench", "--plan", "pro", env=env)
    sh(sys.executable, "manage.py", "shell", "-c", BENCH_SETUP if SETUP == "production" else MINIMAL_SETUP, env=env)
    key = sh(sys.executable, "manage.py", "issue_key", "--org", "bench", "--name", "bench", env=env)
    if SETUP == "production":
        sh(sys.executable, "manage.py", "shell", "-c", KEY_CAPS, env=env)
    return key


def count_usage_rows(request_ids: list[str]) -> int:
    """How many of these requests have their usage row (request ids are unique: a row is never doubled)."""
    import psycopg

    with psycopg.connect(DB_URL.replace("postgres://", "postgresql://")) as conn:
        return conn.execute("SELECT count(*) FROM usage_usageevent WHERE request_id = ANY(%s)", [request_ids]).fetchone()[0]


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
    return {
        "rps": round(rps, 1),
        "p50_ms": stats["p50"] / 1000,
        "p99_ms": stats["p99"] / 1000,
        "requests": stats["requests"],
        "errors": stats["errors"],
    }


def start_daphne(
    env: dict[str, str], port: int, app: str = "portal_project.asgi:application", *, cpus: str | None = None
) -> subprocess.Popen:
    """One daphne process as deploy/supervisord.conf runs it, pinned to `cpus` when given (taskset execs: the pid is
    daphne's); returned once it answers HTTP (any status: the passthrough and the floor have no /health)."""
    pin = ["taskset", "-c", cpus] if cpus else []
    proc = subprocess.Popen(
        [*pin, sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port), app],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"daphne ({app}) on {port} exited with {proc.returncode}")
        try:
            httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"daphne ({app}) on {port} did not answer within 30 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of each thread of a process, by thread name."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        label = "event loop" if task.name == str(pid) else f"worker threads ({name.rstrip('0123456789_')})"
        out[label] = out.get(label, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def sequential(
    port: int, path: str, body: dict, headers: dict[str, str], pid: int | None = None, count: int = 4000
) -> dict[str, Any]:
    """One keep-alive connection, one request at a time, from a plain socket client: latency percentiles
    that include every request (wrk's at one connection do not add up to its own request rate), and the
    server's CPU per request by thread, from /proc.

    A streamed body (`"stream": true`) is read to the end of its chunked framing; divide the CPU per request
    by the answer's tokens (STREAM_TOKENS for CHAT_STREAM) for the CPU per streamed token."""
    payload = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(payload)}\r\n{head}\r\n".encode() + payload
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def one() -> None:
        conn.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        header, rest = data.split(b"\r\n\r\n", 1)
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", header)
        if length is None and re.search(rb"(?i)\r\ntransfer-encoding: *chunked", header):
            # A stream: chunked framing, read to its last (empty) chunk. A chunk's own data ends with its
            # CRLF, so the empty chunk is the only place "\r\n0\r\n\r\n" can end the bytes read so far.
            while not (rest == b"0\r\n\r\n" or rest.endswith(b"\r\n0\r\n\r\n")):
                more = conn.recv(65536)
                if not more:
                    raise SystemExit("sequential: the server closed the connection mid-stream")
                rest += more
            return
        if length is None:
            raise SystemExit(f"sequential: an answer without Content-Length: {header[:200]!r}")
        while len(rest) < int(length.group(1)):
            rest += conn.recv(65536)

    for _ in range(200):
        one()
    cpu_before = thread_cpu_s(pid) if pid else {}
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        one()
        latencies.append((time.perf_counter() - started) * 1000)
    cpu_after = thread_cpu_s(pid) if pid else {}
    conn.close()
    latencies.sort()
    return {
        "requests": count,
        "p50_ms": round(latencies[count // 2], 3),
        "p90_ms": round(latencies[int(count * 0.9)], 3),
        "p99_ms": round(latencies[int(count * 0.99)], 3),
        "max_ms": round(latencies[-1], 2),
        **(
            {"cpu_ms_per_request": {k: round((cpu_after.get(k, 0.0) - v) * 1000 / count, 3) for k, v in cpu_before.items()}}
            if pid
            else {}
        ),
    }


async def hold_streams(url: str, key: str, count: int, pid: int) -> dict[str, Any]:
    """Open `count` SSE streams at once and read each to the end, sampling the server's RSS meanwhile."""
    import aiohttp

    peak = rss_mb(pid)
    before = peak
    ok = errors = 0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.05)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one() -> None:
            nonlocal ok, errors
            try:
                async with session.post(url, json=CHAT_STREAM, headers={"Authorization": f"Bearer {key}"}) as resp:
                    text = await resp.text()
                    if resp.status == 200 and text.rstrip().endswith("data: [DONE]"):
                        ok += 1
                    else:
                        errors += 1
            except Exception:
                errors += 1

        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        elapsed = time.perf_counter() - started
        done.set()
        await sampler
    return {
        "streams": count,
        "completed": ok,
        "errors": errors,
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(peak, 1),
        "seconds": round(elapsed, 2),
    }


async def soak(url: str, key: str, seconds: int, rate: int, pid: int) -> dict[str, Any]:
    """A steady `rate` requests/s for `seconds`; RSS sampled every 5 s."""
    import aiohttp

    sent = ok = errors = 0
    request_ids: list[str] = []
    samples: list[tuple[float, float]] = []
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one() -> None:
            nonlocal ok, errors
            try:
                async with session.post(url, json=CHAT, headers={"Authorization": f"Bearer {key}"}) as resp:
                    await resp.read()
                    if "x-request-id" in resp.headers:
                        request_ids.append(resp.headers["x-request-id"])
                    ok += resp.status == 200
                    errors += resp.status != 200
            except Exception:
                errors += 1

        tasks: set[asyncio.Task] = set()
        start = time.perf_counter()
        next_sample = start
        while (now := time.perf_counter()) - start < seconds:
            due = int((now - start) * rate)
            while sent < due:
                task = asyncio.create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            if now >= next_sample:
                samples.append((round(now - start, 1), round(rss_mb(pid), 1)))
                next_sample += 5
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)
    warm = [rss for t, rss in samples if t >= min(60, seconds / 5)] or [samples[-1][1]]
    return {
        "seconds": seconds,
        "rate": rate,
        "sent": sent,
        "ok": ok,
        "errors": errors,
        "request_ids": request_ids,
        "rss_samples": samples,
        "rss_after_warmup_mb": warm[0],
        "rss_end_mb": samples[-1][1],
        "rss_growth_after_warmup_mb": round(samples[-1][1] - warm[0], 1),
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib missing: no plot)")
        return
    labels = [f"{r['target']}\n{r['connections']} conn" for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5))
    ax1.barh(labels, [r["rps"] for r in results], color="#3b6ea8")
    ax1.set_xlabel("requests/s")
    ax1.invert_yaxis()
    ax2.barh(labels, [r["p50_ms"] for r in results], color="#d08c3a")
    ax2.set_xlabel("p50 latency (ms)")
    ax2.invert_yaxis()
    ax2.set_yticklabels([])
    fig.suptitle("Cortensor gateway, one daphne process, 127.0.0.1")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def unkey_bench(args: argparse.Namespace) -> None:
    """Unkey mode against a fake Unkey answering in 20-40 ms: the gateway with the verification cache off and on,
    side by side, by the sequential client (p50 of every request) and wrk at 32 connections; and, as the reference
    for "adds no Unkey latency", the same gateway in local mode with a locally issued key of the same organization.
    The fake runs in this process, beside the simulator: at 32 connections without the cache its own throughput
    (a few hundred verifications a second on a quiet machine) is what is measured, not Unkey's."""
    from tests.support.fake_unkey import FakeUnkeyServer

    root_key, api_id = "bench-unkey-root-key", "api_bench"
    fake = FakeUnkeyServer(root_key=root_key, api_id=api_id).start()
    fake.fake.configure(delay_s=0.020, delay_jitter_s=0.020, only=["verifyKey"])
    sim = SimulatorServer(port=0, answer_tokens=64).start()
    bad = BadRouters(BAD_ROUTER_PORT).start()
    unkey = {
        "PORTAL_KEY_ISSUER": "unkey",
        "PORTAL_UNKEY_ROOT_KEY": root_key,
        "PORTAL_UNKEY_API_ID": api_id,
        "PORTAL_UNKEY_BASE_URL": fake.base_url,
    }
    env = {**base_env(sim.base_url, bad), **unkey}
    key = prepare_database(env)
    local_env = {**env, "PORTAL_KEY_ISSUER": "local"}
    local_key = sh(sys.executable, "manage.py", "issue_key", "--org", "bench", "--name", "bench-local", env=local_env)
    rows: list[dict[str, Any]] = []
    count = 500
    for n, (label, overrides) in enumerate(
        (
            ("local key (reference)", {"PORTAL_KEY_ISSUER": "local"}),
            ("unkey, no cache", {"PORTAL_UNKEY_CACHE_TTL_MS": "0"}),
            ("unkey, cache 1 s", {"PORTAL_UNKEY_CACHE_TTL_MS": "1000"}),
        )
    ):
        port = UNKEY_PORT + n
        auth = {"Content-Type": "application/json", "Authorization": f"Bearer {local_key if n == 0 else key}"}
        proc = start_daphne({**env, **overrides}, port)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        try:
            wrk(url, connections=4, duration=2, body=CHAT, headers=auth)  # warm-up
            calls_before = len(fake.fake.recorded("verifyKey"))
            seq = sequential(port, "/v1/chat/completions", CHAT, auth, proc.pid, count=count)
            calls = len(fake.fake.recorded("verifyKey")) - calls_before
            w = wrk(url, connections=32, duration=args.duration, body=CHAT, headers=auth)
        finally:
            stop(proc)
        per_request = calls / (count + 200)  # sequential() sends 200 warm-up requests first
        rows.append({"target": label, "sequential": seq, "verify_calls_per_request": round(per_request, 3), "wrk_c32": w})
        print(
            f"  {label:24} sequential p50 {seq['p50_ms']:.2f} ms, p90 {seq['p90_ms']:.2f}, p99 {seq['p99_ms']:.2f}, "
            f"{per_request:.3f} verifyKey calls a request; c=32 {w['rps']:.0f} req/s, p50 {w['p50_ms']:.2f} ms, "
            f"{w['errors']} errors",
            flush=True,
        )
    sim.stop()
    bad.stop()
    fake.stop()
    local, off, on = (r["sequential"]["p50_ms"] for r in rows)
    print(
        f"\nUnkey 20-40 ms away, sequential p50: {off:.2f} ms without the cache, {on:.2f} ms with it, {local:.2f} ms checked locally "
        f"(the cache adds {on - local:+.2f} ms over the local check); c=32: "
        + ", ".join(f"{r['target']} {r['wrk_c32']['rps']:.0f} req/s" for r in rows)
    )
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "unkey.json").write_text(
        json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}, indent=2)
    )
    print("written bench/results/unkey.json")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", default="1,32")
    parser.add_argument("--transports", default="aiohttp", help="also 'httpx' to compare upstream transports")
    parser.add_argument("--streams", type=int, default=0, help="hold this many SSE streams open at once")
    parser.add_argument("--soak", type=int, default=0, help="soak seconds (600 for the 10-minute soak)")
    parser.add_argument("--soak-rate", type=int, default=100)
    parser.add_argument("--unkey", action="store_true", help="instead of the table: Unkey mode, verification cache off and on")
    parser.add_argument("--no-floor", action="store_true", help="skip the Django floor rows")
    parser.add_argument(
        "--setup",
        choices=("production", "minimal"),
        default="production",
        help="minimal: one alias and a requests-per-minute plan, as the runs before issue 15",
    )
    args = parser.parse_args()
    global SETUP
    SETUP = args.setup
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is not installed (Debian: apt-get install wrk; `make bench` installs it)")
    if args.unkey:
        return unkey_bench(args)
    conns = [int(c) for c in args.connections.split(",")]

    sim = SimulatorServer(port=0, answer_tokens=64).start()
    bad = BadRouters(BAD_ROUTER_PORT).start()
    env = base_env(sim.base_url, bad)
    key = prepare_database(env)
    auth = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    plain = {"Content-Type": "application/json"}
    results: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"sequential": {}}

    def run(target: str, url: str, body: dict, headers: dict[str, str], c: int, kind: str = "non-stream") -> None:
        r = wrk(url, connections=c, duration=args.duration, body=body, headers=headers)
        results.append({"target": target, "kind": kind, "connections": c, **r})
        print(
            f"  {target:28} {kind:10} c={c:<3} {r['rps']:>8.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms",
            flush=True,
        )

    def seq(name: str, port: int, path: str, body: dict, headers: dict[str, str], pid: int | None = None) -> None:
        streamed = bool(body.get("stream"))
        r = sequential(port, path, body, headers, pid, count=(1000 if streamed else 4000) if pid else 2000)
        extra["sequential"][name] = r
        cpu = f"; CPU per request {r['cpu_ms_per_request']}" if "cpu_ms_per_request" in r else ""
        if streamed and "cpu_ms_per_request" in r:
            # The figure for streams: the event loop's CPU per streamed token.
            r["event_loop_us_per_token"] = round(r["cpu_ms_per_request"].get("event loop", 0.0) * 1000 / STREAM_TOKENS, 2)
            cpu += f"; event loop per token {r['event_loop_us_per_token']} us"
        print(
            f"  sequential, one connection, {name}: p50 {r['p50_ms']} ms, p90 {r['p90_ms']}, p99 {r['p99_ms']}, max {r['max_ms']}{cpu}",
            flush=True,
        )

    direct_url = f"{sim.base_url}/api/v3/completions/101"
    for c in conns:
        run("direct-to-router", direct_url, DIRECT, plain, c)
    run("direct-to-router", direct_url, DIRECT_STREAM, plain, 32, "stream-64")
    seq("direct", sim.port, "/api/v3/completions/101", DIRECT, plain)

    passthrough = start_daphne(env, PASSTHROUGH_PORT, "bench.passthrough:application")
    try:
        url = f"http://127.0.0.1:{PASSTHROUGH_PORT}/v1/chat/completions"
        wrk(url, connections=4, duration=2, body=CHAT, headers=plain)  # warm-up
        for c in conns:
            run("asgi passthrough", url, CHAT, plain, c)
        run("asgi passthrough", url, CHAT_STREAM, plain, 32, "stream-64")
        seq("passthrough", PASSTHROUGH_PORT, "/v1/chat/completions", CHAT, plain, passthrough.pid)
        seq("passthrough stream-64", PASSTHROUGH_PORT, "/v1/chat/completions", CHAT_STREAM, plain, passthrough.pid)
    finally:
        stop(passthrough)

    if not args.no_floor:
        floor = start_daphne(env, FLOOR_PORT, "bench.floor:application")
        try:
            wrk(f"http://127.0.0.1:{FLOOR_PORT}/v1/chat/completions", connections=4, duration=2, body={}, headers=plain)
            for c in conns:
                run("django floor (bare view)", f"http://127.0.0.1:{FLOOR_PORT}/v1/chat/completions", {}, plain, c)
        finally:
            stop(floor)

    for n, transport in enumerate(args.transports.split(",")):
        port = GATEWAY_PORT + n
        proc = start_daphne({**env, "PORTAL_UPSTREAM_TRANSPORT": transport}, port)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        try:
            wrk(url, connections=4, duration=2, body=CHAT, headers=auth)  # warm-up
            for c in conns:
                run(f"gateway ({transport})", url, CHAT, auth, c)
            run(f"gateway ({transport})", url, CHAT_STREAM, auth, 32, "stream-64")
            if transport == "aiohttp":
                seq("gateway", port, "/v1/chat/completions", CHAT, auth, proc.pid)
                seq("gateway stream-64", port, "/v1/chat/completions", CHAT_STREAM, auth, proc.pid)
            if args.streams and transport == "aiohttp":
                sim.configure(global_={"token_delay_ms": 20})
                extra["concurrent_streams"] = asyncio.run(hold_streams(url, key, args.streams, proc.pid))
                sim.configure(global_={"token_delay_ms": 0})
                print(f"  concurrent streams: {extra['concurrent_streams']}", flush=True)
            if args.soak and transport == "aiohttp":
                result = asyncio.run(soak(url, key, args.soak, args.soak_rate, proc.pid))
                time.sleep(2)  # the last usage batch
                ids = result.pop("request_ids")
                result["answered_with_request_id"] = len(ids)
                result["usage_rows_of_those_requests"] = count_usage_rows(ids)
                extra["soak"] = result
                print(f"  soak: { {k: v for k, v in result.items() if k != 'rss_samples'} }", flush=True)
        finally:
            stop(proc)
    sim.stop()
    bad.stop()

    def base(r: dict[str, Any], target: str) -> dict[str, Any] | None:
        return next(
            (x for x in results if x["target"] == target and x["connections"] == r["connections"] and x["kind"] == r["kind"]),
            None,
        )

    print(
        f"\n{'target':28} {'kind':10} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'+p50 vs direct':>15} "
        f"{'+p50 vs pass':>13} {'x passthrough':>14} {'errors':>7}"
    )
    for r in results:
        direct = base(r, "direct-to-router")
        through = base(r, "asgi passthrough")
        r["added_p50_ms"] = round(r["p50_ms"] - direct["p50_ms"], 3) if direct else None
        r["added_p50_vs_passthrough_ms"] = round(r["p50_ms"] - through["p50_ms"], 3) if through else None
        r["ratio_to_passthrough"] = round(r["rps"] / through["rps"], 2) if through else None
        added = f"{r['added_p50_ms']:.2f}" if r["added_p50_ms"] is not None else "-"
        added_pass = f"{r['added_p50_vs_passthrough_ms']:.2f}" if r["added_p50_vs_passthrough_ms"] is not None else "-"
        ratio = f"{r['ratio_to_passthrough']:.2f}x" if r["ratio_to_passthrough"] is not None else "-"
        print(
            f"{r['target']:28} {r['kind']:10} {r['connections']:>5} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{added:>15} {added_pass:>13} {ratio:>14} {r['errors']:>7}"
        )

    # The figures the targets are stated in, each against the passthrough measured in this same run.
    gw = [r for r in results if r["target"] == "gateway (aiohttp)"]
    pt = [r for r in results if r["target"] == "asgi passthrough"]

    def pick(rows: list[dict[str, Any]], kind: str, c: int) -> dict[str, Any] | None:
        return next((r for r in rows if r["kind"] == kind and r["connections"] == c), None)

    ratios: dict[str, Any] = {}
    for label, kind, c in (("non-stream req/s, 32 conns", "non-stream", 32), ("stream-64 streams/s, 32 conns", "stream-64", 32)):
        g, p = pick(gw, kind, c), pick(pt, kind, c)
        if g and p:
            ratios[label] = {"passthrough": p["rps"], "gateway": g["rps"], "ratio": round(g["rps"] / p["rps"], 2)}
    g1, p1 = pick(gw, "non-stream", 1), pick(pt, "non-stream", 1)
    if g1 and p1:
        ratios["p50 one conn, wrk (ms)"] = {
            "passthrough": p1["p50_ms"],
            "gateway": g1["p50_ms"],
            "added": round(g1["p50_ms"] - p1["p50_ms"], 3),
        }
    sq = extra["sequential"]
    if "gateway" in sq and "passthrough" in sq:
        ratios["p50 one conn, sequential (ms)"] = {
            "passthrough": sq["passthrough"]["p50_ms"],
            "gateway": sq["gateway"]["p50_ms"],
            "added": round(sq["gateway"]["p50_ms"] - sq["passthrough"]["p50_ms"], 3),
        }
    if "gateway stream-64" in sq and "passthrough stream-64" in sq:
        ratios["event-loop CPU per streamed token (us)"] = {
            "passthrough": sq["passthrough stream-64"]["event_loop_us_per_token"],
            "gateway": sq["gateway stream-64"]["event_loop_us_per_token"],
            "added": round(
                sq["gateway stream-64"]["event_loop_us_per_token"] - sq["passthrough stream-64"]["event_loop_us_per_token"], 2
            ),
        }
    extra["vs_passthrough"] = ratios
    print(f"\n{'gateway vs the ASGI passthrough':34} {'passthrough':>12} {'gateway':>9} {'ratio / added':>14}")
    for label, v in ratios.items():
        unit = " us" if label.endswith("(us)") else " ms"
        last = f"{v['ratio']:.2f}x" if "ratio" in v else f"+{v['added']:.2f}{unit}"
        print(f"{label:34} {v['passthrough']:>12.2f} {v['gateway']:>9.2f} {last:>14}")
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "results": results,
        **extra,
    }
    (out_dir / "latest.json").write_text(json.dumps(payload, indent=2))
    plot(results, out_dir / "latest.png")
    print("\nwritten bench/results/latest.json and bench/results/latest.png")


if __name__ == "__main__":
    main()
