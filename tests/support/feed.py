"""A real WebSocket client (aiohttp's) for the live usage feed of a live daphne, driven from synchronous tests.

Also what a test needs around it the way the usage page does it: a signed-in session, the page's cursor, and the
socket opened with that cursor (`?after=`), whose first message ("ready") carries what happened since.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx
import pytest

from simulator.server import LoopThread

WAIT_S = 10.0  # every wait fails the test loudly after this long


class FeedSocket:
    """One open /portal/ws/usage socket, signed in by a session cookie, with its own event loop thread."""

    def __init__(self, base_url: str, session_key: str, *, org: int | None = None, after: str | None = None) -> None:
        self._loop_thread = LoopThread("feed-socket")

        async def nothing_to_boot() -> None:
            return None

        self._loop_thread.start(nothing_to_boot)
        query = [f"org={org}"] if org is not None else []
        if after is not None:
            query.append(f"after={quote(after, safe='')}")
        ws_url = base_url.replace("http://", "ws://") + "/portal/ws/usage" + ("?" + "&".join(query) if query else "")
        try:
            self.session, self.ws = self._run(self._open(ws_url, base_url, session_key))
        except BaseException:
            self._stop_loop()
            raise
        self.close_code: int | None = None
        self.cursor: str | None = after  # the newest cursor the server handed out ("ready", then "cursor" messages)

    def _run(self, coro: Any, timeout: float = WAIT_S) -> Any:
        return self._loop_thread.run(coro, timeout)

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

    def ready(self) -> dict[str, Any]:
        """The first message, which must be "ready"; its cursor becomes this socket's."""
        message = self.receive()
        assert message is not None and message["type"] == "ready", (message, self.close_code)
        self.cursor = message.get("cursor", self.cursor)
        return message

    def requests_until(self, wanted: Iterable[str], timeout: float = WAIT_S) -> list[str]:
        """Request ids of the live "request" messages, in order, duplicates kept, until every wanted id came;
        "cursor" messages on the way update `cursor`."""
        missing, got = set(wanted), []
        deadline = time.monotonic() + timeout
        while missing:
            message = self.receive(timeout=max(0.1, deadline - time.monotonic()))
            if message is None:
                pytest.fail(f"the feed closed ({self.close_code}) still missing {sorted(missing)}")
            if message["type"] == "cursor":
                self.cursor = message["cursor"]
            elif message["type"] == "request":
                got.append(message["request_id"])
                missing.discard(message["request_id"])
            else:
                pytest.fail(f"unexpected message {message}")
        return got

    def next_cursor(self, timeout: float = WAIT_S) -> str:
        """Wait for the next "cursor" message (requests on the way are skipped); its cursor."""
        while True:
            message = self.receive(timeout=timeout)
            assert message is not None, self.close_code
            if message["type"] == "cursor":
                self.cursor = message["cursor"]
                return self.cursor

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
        """Close the socket from this side (what a dropped connection is to the server); again is a no-op."""
        if self._loop_thread.loop is None:
            return

        async def shut() -> None:
            await self.ws.close()
            await self.session.close()

        try:
            self._run(shut())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop_thread.stop()


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


_CURSOR = re.compile(r'data-live-cursor="([^"]*)"')


def page_cursor(base_url: str, session_key: str) -> str:
    """Render the usage page (of the session's organization) as the browser does; the cursor it carries for its feed."""
    response = httpx.get(f"{base_url}/portal/usage", cookies={"sessionid": session_key}, timeout=WAIT_S)
    assert response.status_code == 200, response.text[:500]
    found = _CURSOR.search(response.text)
    assert found is not None, "the usage page has no live cursor"
    return found.group(1)


def signed_in_session(user: Any) -> str:
    """The session key of what a sign-in leaves in the session table, made directly (no form, no sign-in limit)."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "allauth.account.auth_backends.AuthenticationBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.create()
    return store.session_key
