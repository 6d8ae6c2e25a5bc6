"""Several gateway processes behind nginx (issue 15): one, then two daphne processes on one port, and what each
request costs each part of the stack.

    python bench/scaling.py --duration 8                 # the table (make bench-scaling), ~2 minutes
    python bench/scaling.py --streams 1000               # plus 1,000 concurrent streams held against one process (RSS)
    python bench/scaling.py --soak 600                   # plus a 10-minute soak at 100 requests/s against it (RSS growth)
    python bench/scaling.py --pin none                   # nothing pinned (the processes spread over the cores)

The production setup of bench/bench.py (five plan limits, prepaid balance and spend caps, twelve aliases some with
dead routers, the router simulator's fixed 64-token answer), nginx configured by deploy/nginx/render.sh as
tests/test_topology.py renders it (no upstream keep-alive, JSON access log, SSE unbuffered), and the gateway
processes started as deploy/supervisord.conf starts them (`daphne -v 0 -b 127.0.0.1 -p PORT`).
Rows, each with wrk at 64 connections (`--connections`), non-stream and 64-token streams:
  1. one process, wrk straight to it (keep-alive): the reference, and what nginx's connection per request costs it;
  2. one process behind nginx;
  3. (pinned only) the control: one process behind nginx sharing its core with a busy loop, i.e. on half a core as
     each process of row 4 is, to tell what sharing a core costs from what a second process costs;
  4. two processes behind nginx (round robin).

On a 2-core machine the load generator cannot run "elsewhere": by default this process (wrk, the simulator's thread,
nginx, which inherit its affinity) is pinned to core 0 and the gateway processes to core 1 (`taskset`), so the two
processes of row 4 share one core and their measured throughput cannot double. The honest scaling figure is each
process's CPU per request, read from /proc as bench.bench.thread_cpu_s does, beside nginx's, Redis's and
PostgreSQL's (their pids found in /proc; Redis and PostgreSQL are not pinned, and Redis is shared with whatever else
uses it on the machine): if two processes' CPU per request stays what one process's is, two processes on two free
cores serve twice as much. The table also gives each core's busy share during the row.
Results: a table on stdout and bench/results/scaling.json (scaling-unpinned.json with `--pin none`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import bench as b  # noqa: E402

NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
FIRST_GATEWAY_PORT = b.PORT_BASE + 30  # bench.bench uses +0, +1, +10..., +20..., +40...; the processes take +30, +31
NGINX_PORT = b.PORT_BASE + 50
TICKS = os.sysconf("SC_CLK_TCK")


# --- CPU from /proc ----------------------------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a whole process so far, its exited threads included."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        out.append((int(entry.name), ppid, cmdline))
    return out


def redis_pids() -> list[int]:
    port = str(urlparse(b.REDIS_URL).port or 6379)
    return [pid for pid, _, cmd in processes() if cmd.startswith("redis-server") and f":{port}" in cmd]


def postgres_pids() -> tuple[list[int], list[int]]:
    """The backends of the bench's database, and PostgreSQL's shared processes (postmaster, writers, autovacuum
    launcher...: every database's work, other people's included)."""
    ours, shared = [], []
    for pid, _, cmd in processes():
        if not cmd.startswith("postgres") and "/postgres " not in cmd and not cmd.endswith("/postgres"):
            continue
        words = cmd.split()
        if b.DB_NAME in words:
            ours.append(pid)
        elif "127.0.0.1(" not in cmd and "[local]" not in cmd:  # not another database's backend
            shared.append(pid)
    return ours, shared


def involuntary_switches(pid: int) -> int:
    """How often the kernel took the core from this process's threads (another runnable process wanted it)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def core_busy() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies of each core so far."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *values = line.split()
            v = [int(x) for x in values]
            idle = v[3] + v[4]
            out[name] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


def redis_background(seconds: float = 1.0) -> float:
    """Redis's CPU milliseconds a second while this bench sends nothing: the others using the same server."""
    pids = redis_pids()
    before, started = sum(proc_cpu_s(pid) for pid in pids), time.perf_counter()
    time.sleep(seconds)
    return (sum(proc_cpu_s(pid) for pid in pids) - before) * 1000 / (time.perf_counter() - started)


class Meter:
    """CPU seconds of every part of the stack between two snapshots."""

    def __init__(self, gateways: dict[str, int], nginx: subprocess.Popen | None) -> None:
        self.gateways, self.nginx = gateways, nginx

    def snapshot(self) -> dict[str, Any]:
        pg_ours, pg_shared = postgres_pids()
        nginx = []
        if self.nginx is not None:
            nginx = [self.nginx.pid] + [pid for pid, ppid, _ in processes() if ppid == self.nginx.pid]
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "t": time.perf_counter(),
            "gateway": {name: proc_cpu_s(pid) for name, pid in self.gateways.items()},
            "event_loop": {name: b.thread_cpu_s(pid).get("event loop", 0.0) for name, pid in self.gateways.items()},
            "preempted": {name: involuntary_switches(pid) for name, pid in self.gateways.items()},
            "nginx": {pid: proc_cpu_s(pid) for pid in nginx},
            "redis": {pid: proc_cpu_s(pid) for pid in redis_pids()},
            "pg": {pid: proc_cpu_s(pid) for pid in pg_ours},
            "pg_shared": {pid: proc_cpu_s(pid) for pid in pg_shared},
            # This process: the simulator's thread (and this script's, waiting for wrk).
            "bench": proc_cpu_s(os.getpid()),
            # wrk: the children reaped so far (wrk is the only one that ends inside a measured window).
            "wrk": children.ru_utime + children.ru_stime,
            "cores": core_busy(),
            "load": os.getloadavg(),
        }

    @staticmethod
    def delta(before: dict[str, Any], after: dict[str, Any], requests: float) -> dict[str, Any]:
        def per_request(seconds: float) -> float:
            return round(seconds * 1000 / max(requests, 1), 3)

        def pids(part: str) -> float:
            # A pid seen only at the end started inside the window (an nginx worker, a new backend): all of its CPU.
            return sum(after[part][pid] - before[part].get(pid, 0.0) for pid in after[part])

        gateway = {name: per_request(after["gateway"][name] - before["gateway"][name]) for name in after["gateway"]}
        loop = {name: per_request(after["event_loop"][name] - before["event_loop"][name]) for name in after["event_loop"]}
        preempted = sum(after["preempted"][name] - before["preempted"][name] for name in after["preempted"])
        seconds = after["t"] - before["t"]
        cores = {
            name: round(
                100
                * (after["cores"][name][0] - before["cores"][name][0])
                / max(1, after["cores"][name][1] - before["cores"][name][1])
            )
            for name in after["cores"]
        }
        return {
            "seconds": round(seconds, 2),
            "cpu_ms_per_request": {
                "gateway_processes": gateway,
                "gateway_event_loops": loop,
                "gateway_total": round(sum(gateway.values()), 3),
                "nginx": per_request(pids("nginx")),
                "redis": per_request(pids("redis")),
                "postgres_bench_db": per_request(pids("pg")),
                "postgres_shared": per_request(pids("pg_shared")),
                "simulator_and_bench": per_request(after["bench"] - before["bench"]),
                "wrk": per_request(after["wrk"] - before["wrk"]),
            },
            "gateway_preemptions_per_request": round(preempted / max(requests, 1), 3),
            "core_busy_percent": cores,
            "load_average": [round(x, 2) for x in after["load"]],
        }


# --- the processes -----------------------------------------------------------------------------------------------------


class Nginx:
    """nginx with deploy/nginx's configuration, rendered by render.sh into a directory of its own."""

    def __init__(self, directory: Path, port: int) -> None:
        self.dir, self.port = directory, port
        self.proc: subprocess.Popen | None = None

    @property
    def access_log(self) -> Path:
        return self.dir / "access.log"

    def start(self, processes: int, first_port: int, env: dict[str, str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)  # nginx's workers (nobody) walk into it
        render_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PORTAL_NGINX_MAIN": str(self.dir),
            "PORTAL_GATEWAY_HOST": "127.0.0.1",
            "PORTAL_PROCESSES": str(processes),
            "PORTAL_FIRST_PORT": str(first_port),
            "NGINX_LISTEN": f"127.0.0.1:{self.port}",
            "NGINX_ACCESS_LOG": str(self.access_log),
            "NGINX_ERROR_LOG": str(self.dir / "error.log"),
            "NGINX_CACHE_DIR": str(self.dir / "cache"),
        }
        for name in ("PORTAL_MAX_BODY_BYTES", "PORTAL_UPSTREAM_TIMEOUT_S", "PORTAL_REQUEST_READ_TIMEOUT_S"):
            if name in env:
                render_env[name] = env[name]
        b.sh("sh", str(ROOT / "deploy" / "nginx" / "render.sh"), env=render_env)
        command = [NGINX, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")]
        b.sh(*command, "-t")
        self.proc = subprocess.Popen(
            [*command, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise SystemExit(f"nginx did not answer /health; its error log:\n{(self.dir / 'error.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def upstream_counts(self, offset: int) -> dict[str, int]:
        """Requests per gateway process (the upstream that answered) in the access log after `offset`."""
        counts: dict[str, int] = {}
        with open(self.access_log, "rb") as log:
            log.seek(offset)
            for line in log:
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if entry["uri"].startswith("/v1/"):
                        upstream = entry["upstream"].split(", ")[-1]
                        counts[upstream] = counts.get(upstream, 0) + 1
        return counts

    def log_offset(self) -> int:
        return self.access_log.stat().st_size if self.access_log.exists() else 0


# --- the run -----------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds of each wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--streams", type=int, default=0, help="then hold this many SSE streams against one process")
    parser.add_argument("--soak", type=int, default=0, help="then this many seconds at --soak-rate against one process (RSS)")
    parser.add_argument("--soak-rate", type=int, default=100)
    parser.add_argument(
        "--token-delay-ms",
        type=int,
        default=0,
        help="the simulator's pause between a stream's tokens in the wrk rows (0, as bench.bench: the 64 chunks come as"
        " fast as it writes them, and how many arrive in one read depends on who is faster)",
    )
    parser.add_argument(
        "--pin",
        choices=("shared", "none"),
        default="shared",
        help="shared: this process, wrk, the simulator and nginx on core 0, every gateway process on core 1; none: pin nothing",
    )
    parser.add_argument(
        "--out", help="the JSON results (default bench/results/scaling.json, scaling-unpinned.json with --pin none)"
    )
    parser.add_argument("--nginx-dir", default="/tmp/scaling_nginx", help="nginx's config, pid, logs and temp files")
    args = parser.parse_args()
    for tool in ("wrk", "envsubst", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"scaling: {tool} is not installed")
    if not os.access(NGINX, os.X_OK):
        raise SystemExit(f"scaling: nginx is not at {NGINX} (NGINX=...)")
    pin = args.pin == "shared" and (os.cpu_count() or 1) >= 2
    gateway_cpus = None
    if pin:
        # Before any thread or child exists: the simulator's thread, wrk and nginx inherit core 0.
        os.sched_setaffinity(0, {0})
        gateway_cpus = "1"
    started_load = os.getloadavg()
    print(
        f"scaling: {os.cpu_count()} cores, load average {started_load[0]:.2f} {started_load[1]:.2f} {started_load[2]:.2f}; "
        + ("wrk, the simulator and nginx on core 0, the gateway processes on core 1" if pin else "nothing pinned"),
        flush=True,
    )

    sim = b.SimulatorServer(port=0, answer_tokens=64).start()
    bad = b.BadRouters(b.BAD_ROUTER_PORT).start()
    # Behind nginx, as deploy/ runs it: the one proxy of ours in X-Forwarded-For.
    env = {**b.base_env(sim.base_url, bad), "PORTAL_TRUSTED_PROXY_COUNT": "1"}
    key = b.prepare_database(env)
    auth = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    nginx = Nginx(Path(args.nginx_dir), NGINX_PORT)
    ports = [FIRST_GATEWAY_PORT, FIRST_GATEWAY_PORT + 1]
    procs: list[subprocess.Popen] = []
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    c = args.connections

    def measure(label: str, processes: int, port: int, via_nginx: bool) -> None:
        gateways = {f"process {n + 1}": procs[n].pid for n in range(processes)}
        meter = Meter(gateways, nginx.proc if via_nginx else None)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        b.wrk(url, connections=c, duration=2, body=b.CHAT, headers=auth)  # warm-up
        for kind, body in (("non-stream", b.CHAT), ("stream-64", b.CHAT_STREAM)):
            offset = nginx.log_offset()
            background = redis_background()
            before = meter.snapshot()
            r = b.wrk(url, connections=c, duration=args.duration, body=body, headers=auth)
            after = meter.snapshot()
            row = {"setup": label, "processes": processes, "via_nginx": via_nginx, "kind": kind, "connections": c, **r}
            row.update(Meter.delta(before, after, r["requests"]))
            # Redis is shared: less what it spent a second for the others just before (they may change meanwhile).
            cpu = row["cpu_ms_per_request"]
            row["redis_background_ms_per_s"] = round(background, 1)
            cpu["redis_net"] = round(max(0.0, cpu["redis"] - background * row["seconds"] / max(1, r["requests"])), 3)
            if via_nginx:
                counts = nginx.upstream_counts(offset)
                row["requests_per_process"] = {name: counts.get(f"127.0.0.1:{ports[n]}", 0) for n, name in enumerate(gateways)}
                # Each process's CPU divided by the requests it served (not by all of them).
                row["cpu_ms_per_own_request"] = {
                    name: round(
                        (after["gateway"][name] - before["gateway"][name]) * 1000 / max(1, row["requests_per_process"][name]), 3
                    )
                    for name in gateways
                }
            rows.append(row)
            cpu = row["cpu_ms_per_request"]
            print(
                f"  {label:34} {kind:10} c={c:<3} {r['rps']:>6.0f}/s  p50 {r['p50_ms']:6.2f} ms  errors {r['errors']}  "
                f"gateway {cpu['gateway_total']:.2f} ms/req ({', '.join(f'{v:.2f}' for v in cpu['gateway_processes'].values())})  "
                f"nginx {cpu['nginx']:.2f}  redis {cpu['redis']:.2f} (net {cpu['redis_net']:.2f})  pg {cpu['postgres_bench_db']:.2f}  "
                f"cores {'/'.join(str(v) for v in row['core_busy_percent'].values())}%  load {row['load_average'][0]:.2f}",
                flush=True,
            )

    try:
        # Both processes from the start: the second is past its start-up work (first probes of the dead routers,
        # cache loads) when its rows come; meanwhile it idles (see idle_cpu_ms_per_s).
        procs.append(b.start_daphne(env, ports[0], cpus=gateway_cpus))
        procs.append(b.start_daphne(env, ports[1], cpus=gateway_cpus))
        sim.configure(global_={"token_delay_ms": args.token_delay_ms})
        nginx.start(1, ports[0], env)
        measure("1 process, direct (no nginx)", 1, ports[0], via_nginx=False)
        measure("1 process behind nginx", 1, NGINX_PORT, via_nginx=True)
        if pin:
            # The control for the row of two processes on core 1: one process given half of core 1 as each of the two
            # gets, by a busy loop beside it. If its CPU per request rises as the two processes' does, the rise comes
            # from sharing a core (fewer requests per wake-up of the event loop, caches), not from a second process,
            # and two processes on free cores would each cost what one does.
            burner = subprocess.Popen(["taskset", "-c", gateway_cpus or "1", sys.executable, "-c", "while True: pass"])
            try:
                measure("1 process + busy loop on its core", 1, NGINX_PORT, via_nginx=True)
            finally:
                burner.kill()
                burner.wait()
        nginx.stop()
        nginx.start(2, ports[0], env)
        # What a process costs doing nothing (the health prober polling the twelve aliases, the cache poll, the usage
        # writer's rounds): paid per process per second whatever the traffic, so two processes pay it twice.
        idle = Meter({f"process {n + 1}": p.pid for n, p in enumerate(procs)}, None)
        before = idle.snapshot()
        time.sleep(5)
        after = idle.snapshot()
        extra["idle_cpu_ms_per_s"] = {
            name: round((after["gateway"][name] - before["gateway"][name]) * 1000 / (after["t"] - before["t"]), 1)
            for name in after["gateway"]
        }
        print(f"  idle, each process's CPU: {extra['idle_cpu_ms_per_s']} ms a second", flush=True)
        measure("2 processes behind nginx", 2, NGINX_PORT, via_nginx=True)
        for row in rows:
            # The rows' gateway CPU less what the processes would have spent idle over the same seconds.
            idle_ms = sum(extra["idle_cpu_ms_per_s"][name] for name in row["cpu_ms_per_request"]["gateway_processes"])
            row["cpu_ms_per_request"]["gateway_less_idle"] = round(
                row["cpu_ms_per_request"]["gateway_total"] - idle_ms * row["seconds"] / max(1, row["requests"]), 3
            )
        if args.streams:
            extra["concurrent_streams"] = hold(sim, procs[0].pid, ports[0], key, args.streams)
        if args.soak:
            url = f"http://127.0.0.1:{ports[0]}/v1/chat/completions"
            result = asyncio.run(b.soak(url, key, args.soak, args.soak_rate, procs[0].pid))
            time.sleep(2)  # the last usage round
            ids = result.pop("request_ids")
            result["usage_rows_of_those_requests"] = b.count_usage_rows(ids)
            extra["soak"] = result
            print(
                f"  soak, {args.soak} s at {args.soak_rate}/s against one process: {result['sent']} sent, {result['ok']} answered"
                f" 200, {result['errors']} errors, {result['usage_rows_of_those_requests']} usage rows of {len(ids)} request"
                f" ids; RSS {result['rss_after_warmup_mb']} MB after warm-up, {result['rss_end_mb']} MB at the end"
                f" ({result['rss_growth_after_warmup_mb']:+.1f} MB)",
                flush=True,
            )
    finally:
        nginx.stop()
        for proc in procs:
            b.stop(proc)
        sim.stop()
        bad.stop()

    summary = summarize(rows)
    report(rows, summary, extra, pin)
    out = (
        Path(args.out)
        if args.out
        else ROOT / "bench" / "results" / ("scaling.json" if args.pin == "shared" else "scaling-unpinned.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "pinned": pin,
        "load_average_start": started_load,
        "load_average_end": os.getloadavg(),
        "duration_s": args.duration,
        "token_delay_ms": args.token_delay_ms,
        "rows": rows,
        "summary": summary,
        **extra,
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nwritten {out}")


def hold(sim: b.SimulatorServer, pid: int, port: int, key: str, count: int) -> dict[str, Any]:
    """`count` SSE streams open at once against one process (bench.bench.hold_streams: 64 tokens 20 ms apart)."""
    sim.configure(global_={"token_delay_ms": 20})
    try:
        result = asyncio.run(b.hold_streams(f"http://127.0.0.1:{port}/v1/chat/completions", key, count, pid))
    finally:
        sim.configure(global_={"token_delay_ms": 0})
    time.sleep(3)
    result["rss_after_mb"] = round(b.rss_mb(pid), 1)
    print(
        f"  {count} concurrent streams against one process: {result['completed']} completed, {result['errors']} errors in "
        f"{result['seconds']} s; RSS {result['rss_before_mb']} MB before, {result['peak_rss_mb']} MB peak, "
        f"{result['rss_after_mb']} MB 3 s after",
        flush=True,
    )
    return result


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind: the measured 2-process / 1-process ratio behind nginx, and the ratios the CPU per request implies."""
    out: dict[str, Any] = {}
    for kind in ("non-stream", "stream-64"):

        def row(setup: str, kind: str = kind) -> dict[str, Any]:
            return next(r for r in rows if r["setup"] == setup and r["kind"] == kind)

        direct, one, two = row("1 process, direct (no nginx)"), row("1 process behind nginx"), row("2 processes behind nginx")
        c1, c2 = one["cpu_ms_per_request"], two["cpu_ms_per_request"]
        shared1 = c1["nginx"] + c1["redis_net"] + c1["postgres_bench_db"]
        shared2 = c2["nginx"] + c2["redis_net"] + c2["postgres_bench_db"]
        # Two processes, each on a core of its own, the shared parts elsewhere: twice what one process serves, times
        # how much dearer a request became.
        own_cores = 2 * c1["gateway_total"] / c2["gateway_total"]
        own_cores_less_idle = 2 * c1["gateway_less_idle"] / c2["gateway_less_idle"]
        # Everything on two cores (nginx, Redis, PostgreSQL and the gateways; the load generator elsewhere): one process
        # is bound by its own core (or by the shared parts on the other), two by the whole stack's CPU over both cores.
        one_bound = min(1000 / c1["gateway_total"], 2000 / (c1["gateway_total"] + shared1))
        two_bound = 2000 / (c2["gateway_total"] + shared2)
        # The same if each process's cost stays one process's (what it is on a core of its own when the control row
        # says the rise is the sharing's).
        two_bound_flat = 2000 / (c1["gateway_total"] + shared2)
        control = next((r for r in rows if r["setup"] == "1 process + busy loop on its core" and r["kind"] == kind), None)
        out[kind] = {
            "rps_direct": direct["rps"],
            "rps_1_process_nginx": one["rps"],
            "rps_2_processes_nginx": two["rps"],
            "measured_ratio_2_over_1": round(two["rps"] / one["rps"], 2),
            "gateway_cpu_ms_per_request_direct": direct["cpu_ms_per_request"]["gateway_total"],
            "gateway_cpu_ms_per_request_1": c1["gateway_total"],
            "gateway_cpu_ms_per_request_2": c2["gateway_total"],
            "gateway_cpu_ms_per_request_1_sharing_its_core": control["cpu_ms_per_request"]["gateway_total"] if control else None,
            "shared_cpu_ms_per_request_1": round(shared1, 3),
            "shared_cpu_ms_per_request_2": round(shared2, 3),
            "nginx_cost_to_the_gateway_ms": round(c1["gateway_total"] - direct["cpu_ms_per_request"]["gateway_total"], 3),
            "gateway_cpu_ms_per_request_less_idle_1": c1["gateway_less_idle"],
            "gateway_cpu_ms_per_request_less_idle_2": c2["gateway_less_idle"],
            "projected_2_over_1_own_cores": round(own_cores, 2),
            "projected_2_over_1_own_cores_less_idle": round(own_cores_less_idle, 2),
            "projected_2_over_1_two_core_host": round(two_bound / one_bound, 2),
            "projected_rps_1_process": round(one_bound),
            "projected_rps_2_processes_two_core_host": round(two_bound),
            "projected_2_over_1_two_core_host_flat_cost": round(two_bound_flat / one_bound, 2),
        }
    return out


def report(rows: list[dict[str, Any]], summary: dict[str, Any], extra: dict[str, Any], pin: bool) -> None:
    print(
        f"\n{'setup':34} {'kind':10} {'req/s':>6} {'p50 ms':>7} {'err':>4} | CPU ms per request: {'gateway':>7} {'-idle':>5} "
        f"{'(per process, own requests)':>27} {'loop':>5} {'nginx':>6} {'redis (net)':>12} {'pg':>5} {'pg bg':>6} "
        f"{'sim':>5} {'wrk':>5} | {'preempt':>7} {'cores %':>8} {'load':>5}"
    )
    for r in rows:
        cpu = r["cpu_ms_per_request"]
        own = r.get("cpu_ms_per_own_request") or cpu["gateway_processes"]
        served = r.get("requests_per_process")
        per = " / ".join(f"{v:.2f}" for v in own.values())
        if served:
            per += " (" + "/".join(f"{round(100 * n / max(1, sum(served.values())))}" for n in served.values()) + "%)"
        print(
            f"{r['setup']:34} {r['kind']:10} {r['rps']:>6.0f} {r['p50_ms']:>7.2f} {r['errors']:>4} | {'':20}"
            f"{cpu['gateway_total']:>7.2f} {cpu['gateway_less_idle']:>5.2f} {per:>27} {sum(cpu['gateway_event_loops'].values()):>5.2f} {cpu['nginx']:>6.2f} "
            f"{cpu['redis']:>5.2f} ({cpu['redis_net']:.2f}) {cpu['postgres_bench_db']:>5.2f} {cpu['postgres_shared']:>6.2f} "
            f"{cpu['simulator_and_bench']:>5.2f} {cpu['wrk']:>5.2f} | {r['gateway_preemptions_per_request']:>7.2f} {'/'.join(str(v) for v in r['core_busy_percent'].values()):>8} "
            f"{r['load_average'][0]:>5.2f}"
        )
    print(
        "\n(gateway: all processes' CPU over all requests; -idle: less what they spend idle in as many seconds; per"
        " process: each one's CPU over the requests nginx sent it, and its share; loop: the event loops' part; pg: the"
        " bench database's backends; pg bg: PostgreSQL's shared processes, every database's; redis: the whole server,"
        " whoever else uses it, and in brackets less what it spent for the others in the second before; sim: this"
        " process, mostly the simulator's thread; preempt: the gateway processes' involuntary context switches per"
        " request; cores: each core's busy share, everyone's processes included)"
    )
    for kind, s in summary.items():
        print(
            f"\n{kind}: 2 processes / 1 behind nginx, measured {s['measured_ratio_2_over_1']:.2f}x"
            + (" (both processes share core 1: not a scaling figure)" if pin else "")
            + f"; gateway CPU per request {s['gateway_cpu_ms_per_request_1']:.2f} ms with one process,"
            f" {s['gateway_cpu_ms_per_request_2']:.2f} ms with two (direct, no nginx: {s['gateway_cpu_ms_per_request_direct']:.2f} ms;"
            f" nginx's connection per request costs the gateway {s['nginx_cost_to_the_gateway_ms']:+.2f} ms)"
            + (
                f"\n  one process sharing core 1 with a busy loop (half a core, as each of the two gets):"
                f" {s['gateway_cpu_ms_per_request_1_sharing_its_core']:.2f} ms a request: sharing the core adds"
                f" {s['gateway_cpu_ms_per_request_1_sharing_its_core'] - s['gateway_cpu_ms_per_request_1']:+.2f} ms,"
                f" a second process on it {s['gateway_cpu_ms_per_request_2'] - s['gateway_cpu_ms_per_request_1']:+.2f} ms"
                + (
                    " (no more: the rise is the sharing's, two processes on free cores cost what one does)"
                    if s["gateway_cpu_ms_per_request_2"] <= s["gateway_cpu_ms_per_request_1_sharing_its_core"]
                    else " (more than the sharing explains)"
                )
                if s["gateway_cpu_ms_per_request_1_sharing_its_core"] is not None
                else ""
            )
            + f"\n  => two processes on cores of their own: {s['projected_2_over_1_own_cores']:.2f}x one process"
            + (" (a floor: the two processes' cost includes sharing core 1)" if pin else "")
            + f" ({s['projected_2_over_1_own_cores_less_idle']:.2f}x from the CPU less the processes' idle cost:"
            f" {s['gateway_cpu_ms_per_request_less_idle_1']:.2f} / {s['gateway_cpu_ms_per_request_less_idle_2']:.2f} ms)"
            f"\n  => everything on a 2-core host (shared parts nginx + Redis + PostgreSQL {s['shared_cpu_ms_per_request_2']:.2f} ms a"
            f" request): {s['projected_rps_2_processes_two_core_host']} vs {s['projected_rps_1_process']} req/s,"
            f" {s['projected_2_over_1_two_core_host']:.2f}x; with each process at one process's cost"
            f" {s['projected_2_over_1_two_core_host_flat_cost']:.2f}x (target: 1.6x)"
        )
    if extra.get("idle_cpu_ms_per_s"):
        print(f"\nidle gateway processes: {extra['idle_cpu_ms_per_s']} ms of CPU a second each")


if __name__ == "__main__":
    main()
