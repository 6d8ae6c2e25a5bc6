"""A real WebSocket client (aiohttp's) for the live usage feed of a live daphne, driven from synchronous tests."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import aiohttp
import pytest

WAIT_S = 10.0  # every wait fails the test loudly after this long


class FeedSocket:
    """One open /portal/ws/usage socket, signed in by a session cookie, with its own event loop thread."""

    def __init__(self, base_url: str, session_key: str, *, org: int | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        ws_url = base_url.replace("http://", "ws://") + "/portal/ws/usage" + (f"?org={org}" if org is not None else "")
        try:
            self.session, self.ws = self._run(self._open(ws_url, base_url, session_key))
        except BaseException:
            self._stop_loop()
            raise
        self.close_code: int | None = None

    def _run(self, coro: Any, timeout: float = WAIT_S) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _open(self, ws_url: str, origin: str, session_key: str) -> tuple[aiohttp.ClientSession, Any]:
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(
                ws_url, headers={"Cookie": f"sessionid={session_key}", "Origin": origin}, autoclose=True
            )
        except BaseException:
            await session.close()
            raise
        return session, ws

    def receive(self, timeout: float = WAIT_S) -> dict[str, Any] | None:
        """The next JSON message, or None when the server closed the socket (its code in close_code)."""
        try:
            msg = self._run(asyncio.wait_for(self.ws.receive(), timeout), timeout + 1)
        except TimeoutError:
            pytest.fail(f"the feed sent nothing and stayed open for {timeout}s")
        if msg.type == aiohttp.WSMsgType.TEXT:
            return json.loads(msg.data)
        self.close_code = self.ws.close_code
        return None

    def wait_closed(self, timeout: float = WAIT_S) -> int:
        """Wait for the server to close the socket (messages meanwhile are skipped); its close code."""
        while True:
            try:
                msg = self._run(asyncio.wait_for(self.ws.receive(), timeout), timeout + 1)
            except TimeoutError:
                pytest.fail(f"the feed was still open after {timeout}s")
            if msg.type != aiohttp.WSMsgType.TEXT:
                self.close_code = self.ws.close_code
                assert self.close_code is not None, msg
                return self.close_code

    def close(self) -> None:
        async def shut() -> None:
            await self.ws.close()
            await self.session.close()

        try:
            self._run(shut())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


def feed_refused(base_url: str, session_key: str, *, org: int | None = None) -> bool:
    """True when the handshake itself is refused (what a signed-out or foreign session gets)."""
    try:
        socket = FeedSocket(base_url, session_key, org=org)
    except aiohttp.WSServerHandshakeError:
        return True
    try:
        message = socket.receive()
        return message is None
    finally:
        socket.close()
