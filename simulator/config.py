"""The simulator's behaviour knobs and their validation, shared by the control API, the CLI and SimulatorServer."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass
class SimConfig:
    """Behaviour knobs; a session's overrides are applied on top of the global ones."""

    auth_key: str | None = None
    token_delay_ms: float = 0.0
    first_byte_delay_ms: float = 0.0
    omit_usage: bool = False
    usage_only_at_end: bool = True
    interleave_miners: bool = False
    fail_status: int | None = None
    hang: bool = False
    disconnect_after_tokens: int | None = None
    split_writes: bool = False
    status_fail: bool = False
    # A fixed answer length (benchmarks): this many tokens whatever the prompt, capped by max_tokens.
    answer_tokens: int | None = None


_FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(SimConfig)}
_BOOL_FIELDS = {
    "omit_usage",
    "usage_only_at_end",
    "interleave_miners",
    "hang",
    "split_writes",
    "status_fail",
}
_FLOAT_FIELDS = {"token_delay_ms", "first_byte_delay_ms"}
_OPTIONAL_INT_FIELDS = {"fail_status", "disconnect_after_tokens", "answer_tokens"}


def validated_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """Check knob names and types, so a typo in a test fails loudly instead of being ignored."""
    if not isinstance(values, Mapping):
        raise TypeError("config must be a JSON object")
    clean: dict[str, Any] = {}
    for name, value in values.items():
        if name not in _FIELDS:
            raise ValueError(f"unknown config field: {name}")
        if name in _BOOL_FIELDS:
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a boolean")
        elif name in _FLOAT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a non-negative number")
            value = float(value)
        elif name in _OPTIONAL_INT_FIELDS:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be an integer or null")
            if name == "fail_status" and value is not None and not 100 <= value <= 599:
                raise ValueError("fail_status must be an HTTP status code")
            if name == "disconnect_after_tokens" and value is not None and value < 0:
                raise ValueError("disconnect_after_tokens must be >= 0")
        elif name == "auth_key":
            if value is not None and not isinstance(value, str):
                raise ValueError("auth_key must be a string or null")
            # An empty key would make the router accept "Bearer " with nothing.
            value = value or None
        clean[name] = value
    return clean
