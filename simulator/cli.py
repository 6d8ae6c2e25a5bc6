"""The simulator as a program: its command-line flags (shared with `manage.py run_router_simulator`) and serve()."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from simulator.config import SimConfig, validated_fields
from simulator.handlers import create_app


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI flags shared by `python -m simulator` and the management command."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5010)
    parser.add_argument("--auth-key", default=None, help="require 'Authorization: Bearer KEY'")
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--first-byte-delay-ms", type=float, default=0.0)
    parser.add_argument("--no-usage", action="store_true", help="answer without usage")
    parser.add_argument("--usage-every-chunk", action="store_true", help="running usage on every chunk")
    parser.add_argument("--interleave-miners", action="store_true")
    parser.add_argument("--fail-status", type=int, default=None)
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--disconnect-after-tokens", type=int, default=None)
    parser.add_argument("--split-writes", action="store_true")
    parser.add_argument("--status-fail", action="store_true")
    parser.add_argument("--answer-tokens", type=int, default=None, help="a fixed answer length (benchmarks)")


def config_from_options(options: Mapping[str, Any] | argparse.Namespace) -> SimConfig:
    """Turn parsed CLI options into a SimConfig."""
    values = vars(options) if isinstance(options, argparse.Namespace) else dict(options)
    return SimConfig(
        **validated_fields(
            {
                "auth_key": values.get("auth_key"),
                "token_delay_ms": values.get("token_delay_ms") or 0.0,
                "first_byte_delay_ms": values.get("first_byte_delay_ms") or 0.0,
                "omit_usage": bool(values.get("no_usage")),
                "usage_only_at_end": not values.get("usage_every_chunk"),
                "interleave_miners": bool(values.get("interleave_miners")),
                "fail_status": values.get("fail_status"),
                "hang": bool(values.get("hang")),
                "disconnect_after_tokens": values.get("disconnect_after_tokens"),
                "split_writes": bool(values.get("split_writes")),
                "status_fail": bool(values.get("status_fail")),
                "answer_tokens": values.get("answer_tokens"),
            }
        )
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket up front so the real port is known before serving."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, socktype, proto, _, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    return sock


def serve(
    config: SimConfig,
    host: str,
    port: int,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Run the simulator in the foreground until interrupted."""
    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
    line = f"router simulator listening on http://{host}:{bound_port}"

    def print_ready(_message: str = "") -> None:
        if announce is not None:
            announce(line)
        else:
            print(line, flush=True)

    web.run_app(
        create_app(config),
        sock=sock,
        print=print_ready,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=1.0,
    )


def main(argv: Iterable[str] | None = None) -> None:
    """`python -m simulator [flags]`."""
    parser = argparse.ArgumentParser(description="Cortensor router simulator")
    add_cli_arguments(parser)
    options = parser.parse_args(None if argv is None else list(argv))
    try:
        config = config_from_options(options)
    except ValueError as exc:
        parser.error(str(exc))
    serve(config, options.host, options.port)
