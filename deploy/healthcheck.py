"""Exit 0 when every daphne process of this host answers /health with 200, else 1 naming the ones that do not.

The container's health (docker-compose.yml): PORTAL_PROCESSES processes on PORTAL_FIRST_PORT and up. Liveness, not
readiness: a database outage leaves /health at 200 (`degraded`), so the orchestrator does not restart or pull
containers that are serving from their caches.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    first = int(os.environ.get("PORTAL_FIRST_PORT", "8001"))
    count = int(os.environ.get("PORTAL_PROCESSES") or os.cpu_count() or 2)
    path = os.environ.get("PORTAL_HEALTHCHECK_PATH", "/health")
    down = []
    for port in range(first, first + count):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:  # noqa: S310
                if response.status != 200:
                    down.append(f"{port}: {response.status}")
        except (urllib.error.URLError, OSError) as exc:
            down.append(f"{port}: {exc}")
    if down:
        print("unhealthy: " + "; ".join(down), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
