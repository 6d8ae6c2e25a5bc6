"""An asyncio TCP proxy that hands each new connection to the next backend in turn: one port, several gateways."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from simulator.server import LoopThread


class RoundRobinProxy:
    """Listens on 127.0.0.1:<port>; connection n goes to backends[n % len(backends)]. `picks` says which, in order."""

    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self.backends = backends
        self.picks: list[int] = []
        self.port = 0
        self._turn = itertools.cycle(range(len(backends)))
        self._server: asyncio.Server | None = None
        self._loop_thread = LoopThread("round-robin-proxy")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RoundRobinProxy:
        async def boot() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self._loop_thread.start(boot)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        self._loop_thread.stop(close)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        index = next(self._turn)  # picked on accept: the order of connections is the order of picks
        self.picks.append(index)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.backends[index])
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(self._pump(client_reader, upstream_writer), self._pump(upstream_reader, client_writer))

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
