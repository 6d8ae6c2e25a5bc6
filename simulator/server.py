"""aiohttp servers on a thread of their own (the simulator, and the test doubles that share this code)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Self

from aiohttp import web

from simulator.handlers import STATE_KEY, build_app, create_app


class LoopThread:
    """An asyncio event loop running in a daemon thread, driven from synchronous code (tests, the benchmark).

    start() runs a boot coroutine on the new loop and re-raises its failure in the caller's thread, so a port
    already taken fails the test that asked for it rather than a thread nobody watches.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, boot: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(boot())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self.loop = loop
        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            self.loop = None
            raise failure[0]

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 5) -> Any:
        """Run a coroutine on the loop and wait for its result."""
        if self.loop is None:
            coro.close()
            raise RuntimeError(f"{self.name} is not running")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn on the loop's thread, so state owned by the loop is never mutated concurrently; directly when
        the loop is not running."""
        if self.loop is None:
            return fn(*args)

        async def invoke() -> Any:
            return fn(*args)

        return self.run(invoke())

    def stop(self, cleanup: Callable[[], Coroutine[Any, Any, Any]] | None = None) -> None:
        """Run `cleanup` on the loop (its failure ignored), then stop the loop and join the thread; idempotent."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        if cleanup is not None and not loop.is_closed():
            # Stopping must not fail a test teardown, whatever state the server is in.
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(cleanup(), loop).result(timeout=5)
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        self.loop = self._thread = None


class BackgroundServer:
    """Serves the aiohttp app that make_app() builds on 127.0.0.1 (by default) from a LoopThread.

    make_app() is called on every start(): an Application binds to one event loop, so a restarted server needs a
    fresh one (around the same state). stop() then start() serves again on the same port, which lets a test take
    a server down and bring it back. handler_cancellation makes a client disconnect cancel the handler at once, so
    counters of aborted requests are exact; a short shutdown_timeout keeps stop() quick even while a request that
    hangs is still open.
    """

    thread_name = "aiohttp-server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._loop_thread = LoopThread(self.thread_name)
        self._runner: web.AppRunner | None = None

    def make_app(self) -> web.Application:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        async def boot() -> None:
            runner = web.AppRunner(self.make_app(), handler_cancellation=True, access_log=None, shutdown_timeout=0.2)
            await runner.setup()
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
            self._runner = runner
            self.port = runner.addresses[0][1]

        self._loop_thread.start(boot)
        return self

    def stop(self) -> None:
        runner = self._runner

        async def cleanup() -> None:
            if runner is not None:
                await runner.cleanup()

        self._loop_thread.stop(cleanup)
        self._runner = None

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn on the server's loop thread (directly when stopped), so its state is never mutated concurrently."""
        return self._loop_thread.call(fn, *args)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class SimulatorServer(BackgroundServer):
    """Runs the simulator in a background thread with its own event loop (for tests and the benchmark)."""

    thread_name = "router-simulator"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        super().__init__(host, port)
        # Built here so a bad knob fails the constructor; start() serves the same state from a fresh app.
        self.app = create_app(**config)
        self.state = self.app[STATE_KEY]

    def make_app(self) -> web.Application:
        self.app = build_app(self.state)
        return self.app

    def completions_url(self, session_id: int | str) -> str:
        return f"{self.base_url}/api/v3/completions/{session_id}"

    def configure(
        self,
        global_: Mapping[str, Any] | None = None,
        sessions: Mapping[Any, Mapping[str, Any] | None] | None = None,
        **global_fields: Any,
    ) -> dict[str, Any]:
        """Merge knobs (same semantics as POST /_sim/config); returns the whole config."""
        merged = {**(global_ or {}), **global_fields}
        return self.call(self.state.apply, merged, sessions)

    def reset(self) -> dict[str, Any]:
        return self.call(self._reset)

    def _reset(self) -> dict[str, Any]:
        self.state.reset()
        return self.state.config_snapshot()

    def stats(self) -> dict[str, Any]:
        return self.call(self.state.stats_snapshot)
