"""Hold the bench's production setup up for profiling: the simulator, the dead routers, the database, one gateway
daphne and the passthrough, until interrupted. What each engineer of issue 15 measured a change with: run the parent
commit's gateway beside the changed one and compare CPU per request (`bench.bench.sequential`, `thread_cpu_s`) and
py-spy shares, which survive a loaded machine where throughput does not.

    BENCH_PORT_BASE=18200 BENCH_DB_NAME=portal_bench_me BENCH_REDIS_URL=redis://127.0.0.1:6379/7 \\
        HOLD_OUT=/tmp/hold.json python bench/hold.py &
    python bench/hold.py --load /tmp/hold.json plain 10          # wrk at $C connections (32), gw or pt
    py-spy record -p "$(jq .pid /tmp/hold.json)" -d 10 -r 250 -f raw --nonblocking -o /tmp/gw.txt

Stop it with kill (SIGTERM) or Ctrl-C. Writes HOLD_OUT (default /tmp/hold.json): the gateway's and the
passthrough's pid and port, the key, the bodies. py-spy is not a dependency: `pip install py-spy`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bench as b  # noqa: E402 (after the path)


def hold() -> None:
    sim = b.SimulatorServer(port=0, answer_tokens=64).start()
    bad = b.BadRouters(b.BAD_ROUTER_PORT).start()
    env = b.base_env(sim.base_url, bad)
    key = b.prepare_database(env)
    gateway = b.start_daphne(env, b.GATEWAY_PORT)
    passthrough = b.start_daphne(env, b.PASSTHROUGH_PORT, "bench.passthrough:application")
    described = {
        "pid": gateway.pid,
        "port": b.GATEWAY_PORT,
        "key": key,
        "pt_pid": passthrough.pid,
        "pt_port": b.PASSTHROUGH_PORT,
        "chat": b.CHAT,
        "chat_stream": b.CHAT_STREAM,
    }
    Path(os.environ.get("HOLD_OUT", "/tmp/hold.json")).write_text(json.dumps(described))
    print("ready", flush=True)
    # SIGTERM (kill) or SIGINT (Ctrl-C; a shell's `&` starts us with it ignored) end the hold and stop what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in (gateway, passthrough):
            b.stop(proc)
        sim.stop()
        bad.stop()


def load(held: str, kind: str, seconds: int, target: str = "gw") -> None:
    h = json.loads(Path(held).read_text())
    port = h["port"] if target == "gw" else h["pt_port"]
    body = h["chat_stream"] if kind == "stream" else h["chat"]
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {h['key']}"}
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    print(kind, target, b.wrk(url, connections=int(os.environ.get("C", "32")), duration=seconds, body=body, headers=headers))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        load(sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:6])
    else:
        hold()
