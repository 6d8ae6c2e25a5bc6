"""The simulator's mutable state: the knobs in force (start-up, global, per session) and the counters tests read."""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Mapping
from typing import Any

from simulator.config import SimConfig, validated_fields

LAST_BODIES_KEPT = 50


def _session_key(session_id: Any) -> str:
    """Normalise session ids (int or str) to the canonical string used as a dict key."""
    if isinstance(session_id, bool):
        raise TypeError(f"invalid session id: {session_id!r}")
    try:
        number = int(session_id)
    except (TypeError, ValueError):
        raise ValueError(f"invalid session id: {session_id!r}") from None
    if number < 0:
        raise ValueError(f"invalid session id: {session_id!r}")
    return str(number)


class SimState:
    """Mutable simulator state: start-up config, runtime overrides and counters.

    Only touched from the event loop's thread, which is what keeps it race-free
    without locks; `SimulatorServer` hops onto that loop to mutate it.
    """

    def __init__(self, startup: SimConfig) -> None:
        self.startup = dataclasses.replace(startup)
        self.global_config = dataclasses.replace(startup)
        self.session_overrides: dict[str, dict[str, Any]] = {}
        self._effective_cache: dict[str, SimConfig] = {}
        self.task_ids = itertools.count(100_000)
        self.reset_stats()

    def reset_stats(self) -> None:
        self.requests: collections.Counter[str] = collections.Counter()
        self.requests_total = 0
        self.requests_open = 0
        self.requests_aborted_by_client = 0
        self.streams_open = 0
        self.streams_completed = 0
        self.streams_aborted_by_client = 0
        self.streams_truncated_by_server = 0
        self.statuses: collections.Counter[str] = collections.Counter()
        self.last_request: dict[str, Any] | None = None
        self.last_bodies: collections.deque[Any] = collections.deque(maxlen=LAST_BODIES_KEPT)

    def reset(self) -> None:
        self.global_config = dataclasses.replace(self.startup)
        self.session_overrides = {}
        self._effective_cache = {}
        self.reset_stats()

    def apply(
        self,
        global_: Mapping[str, Any] | None = None,
        sessions: Mapping[Any, Mapping[str, Any] | None] | None = None,
    ) -> dict[str, Any]:
        """Merge knob values; a session mapped to None drops all its overrides."""
        # Validate everything before changing anything, so a bad request is all-or-nothing.
        new_global = validated_fields(global_ or {})
        new_sessions: dict[str, dict[str, Any] | None] = {}
        for sid, values in (sessions or {}).items():
            new_sessions[_session_key(sid)] = None if values is None else validated_fields(values)
        self.global_config = dataclasses.replace(self.global_config, **new_global)
        for key, values in new_sessions.items():
            if values is None:
                self.session_overrides.pop(key, None)
            else:
                self.session_overrides.setdefault(key, {}).update(values)
        self._effective_cache = {}
        return self.config_snapshot()

    def effective(self, session_key: str) -> SimConfig:
        cached = self._effective_cache.get(session_key)
        if cached is None:
            overrides = self.session_overrides.get(session_key)
            cached = dataclasses.replace(self.global_config, **overrides) if overrides else self.global_config
            self._effective_cache[session_key] = cached
        return cached

    def any_status_fail(self) -> bool:
        return self.global_config.status_fail or any(o.get("status_fail") for o in self.session_overrides.values())

    def config_snapshot(self) -> dict[str, Any]:
        return {
            "global": dataclasses.asdict(self.global_config),
            "sessions": {k: dict(v) for k, v in self.session_overrides.items()},
            "startup": dataclasses.asdict(self.startup),
        }

    def stats_snapshot(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "requests_total": self.requests_total,
            "requests_open": self.requests_open,
            "requests_aborted_by_client": self.requests_aborted_by_client,
            "streams_open": self.streams_open,
            "streams_completed": self.streams_completed,
            "streams_aborted_by_client": self.streams_aborted_by_client,
            "streams_truncated_by_server": self.streams_truncated_by_server,
            "statuses": dict(self.statuses),
            "last_request": None if self.last_request is None else dict(self.last_request),
            "last_bodies": list(self.last_bodies),
        }
