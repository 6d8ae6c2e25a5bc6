"""Proof that a client library stays on this machine: every name it looks up must be a loopback address."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_LOOPBACK_NAMES = frozenset({"localhost", "::1"})


def _is_loopback(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    return host is None or host in _LOOPBACK_NAMES or str(host).startswith("127.")


@contextmanager
def loopback_only() -> Iterator[list[str]]:
    """Refuse (and list) every look-up of a host other than loopback while the block runs.

    Every TCP connection in Python, httpx's, aiohttp's and urllib's alike, resolves its host with
    socket.getaddrinfo first, numeric addresses included: a library that tried to fetch anything from
    outside (a price list, a tokenizer, telemetry) fails loudly here instead of hanging without a network.
    """
    attempts: list[str] = []
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_loopback(host):
            attempts.append(str(host))
            raise socket.gaierror(socket.EAI_NONAME, f"tests.support.offline: no look-up of {host!r} outside loopback")
        return real(host, *args, **kwargs)

    socket.getaddrinfo = guarded  # type: ignore[assignment]
    try:
        yield attempts
    finally:
        socket.getaddrinfo = real  # type: ignore[assignment]
