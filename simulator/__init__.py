"""A fast, faithful simulator of a Cortensor router node's HTTP API (pure aiohttp, no Django).

Modules, each importing only those above it: `config` (the knobs), `tokens` (the deterministic answers),
`state` (knobs in force and counters), `handlers` (the HTTP API as an aiohttp app), `server` (an app on a
thread of its own, for tests; the test doubles share it), `cli` (the program: `python -m simulator`,
`manage.py run_router_simulator`).
"""

from __future__ import annotations

from simulator.config import SimConfig
from simulator.handlers import create_app
from simulator.server import SimulatorServer
from simulator.tokens import VOCABULARY, estimate_prompt_tokens, simulated_tokens

__all__ = [
    "VOCABULARY",
    "SimConfig",
    "SimulatorServer",
    "create_app",
    "estimate_prompt_tokens",
    "simulated_tokens",
]
