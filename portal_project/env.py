"""Reading the environment: typed getters that stop start-up with one line naming the bad variable."""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def fail(name: str, problem: str) -> NoReturn:
    # One line on stderr and a clean exit: a half-configured gateway must never start.
    print(f"configuration error: {name}: {problem}", file=sys.stderr)
    raise SystemExit(2)


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    fail(name, f"expected a boolean (1/0, true/false), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        fail(name, f"expected an integer, got {raw!r}")
    if minimum is not None and value < minimum:
        fail(name, f"must be at least {minimum}, got {value}")
    return value


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]
