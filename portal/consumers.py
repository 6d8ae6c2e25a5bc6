"""The live usage feed: the usage page's WebSocket, one channel-layer group per organization.

The gateway's usage writer publishes each batch after it is in the database (usage.live, below the gateway); each
organization's open usage pages, joined to its group here, get their new rows a moment later.

Nothing is lost between the page's render and the socket's subscription, nor across a reconnect: the page renders
with a cursor (usage.selectors.FeedCursor: which rows it holds, by id), the socket is opened with it (`?after=`),
joins its groups, and only then reads what the cursor does not hold from the database, the source of truth. Its
first message ("ready") carries those rows and a new cursor; live rows follow, those already sent dropped. While
open it hands out newer cursors ("cursor" messages), each one refresh after it was taken, when every row it covers
has long been delivered live: the page reconnects with the newest it has and catches up again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from accounts.models import Membership, User
from apikeys.models import ApiKey
from portal.context import SESSION_ORG_KEY
from portal.live import CLOSE_NOT_A_MEMBER, CLOSE_SIGNED_OUT, SocketAccess, session_group, socket_access, user_group
from usage.live import event_payload, usage_group
from usage.selectors import BadCursor, FeedCursor, usage_feed_cursor, usage_feed_since

log = logging.getLogger("usage.live")

CLOSE_BAD_CURSOR = 4400  # `after` is not a cursor the page was given: the page reopens without one
CLOSE_TRY_AGAIN = 1013  # the catch-up could not be read (database away): the page reopens later with the same cursor


class UsageFeedConsumer(AsyncJsonWebsocketConsumer):
    """Authenticated by the portal session; `?org=<id>` picks one of the user's organizations.

    The socket stays open only while the session that opened it is signed in and the user is still a member: it
    re-checks both every PORTAL_LIVE_SESSION_CHECK_MS and whenever portal.live pushes a recheck to its user's or
    its session's group (sign-out, password change, removal...), and closes with 4401 (signed out) or 4403 (no longer
    a member).
    """

    joined: tuple[str, ...] = ()
    access: SocketAccess | None = None
    watcher: asyncio.Task[None] | None = None
    refresher: asyncio.Task[None] | None = None
    closing = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.caught_up: set[str] = set()  # request ids the catch-up sent whose live copy has not come yet

    async def connect(self) -> None:
        user = self.scope.get("user")
        session = self.scope.get("session")
        session_key = session.session_key if session is not None else None
        if user is None or not user.is_authenticated or not session_key:
            await self.close(code=CLOSE_SIGNED_OUT)
            return
        organization_id = await database_sync_to_async(self._organization_id)(user)
        if organization_id is None:
            await self.close(code=CLOSE_NOT_A_MEMBER)
            return
        try:
            after = self._cursor()
        except BadCursor:
            # Accepted first, so that the page reads the code (a refused handshake reaches it as 1006).
            self.closing = True
            await self.accept()
            await self.close(code=CLOSE_BAD_CURSOR)
            return
        self.organization_id = organization_id
        self.access = SocketAccess(user_id=user.pk, session_key=session_key, organization_id=organization_id)
        self.key_labels = await database_sync_to_async(self._key_labels)()
        self.joined = (usage_group(organization_id), user_group(user.pk), session_group(session_key))
        for group in self.joined:
            await self.channel_layer.group_add(group, self.channel_name)
        # Access may have ended while the groups were being joined, before any push could reach this socket.
        if await self._access_ended():
            return
        await self.accept()
        # Only now, with the group joined, what the page's cursor does not hold: a row committed from here on is
        # published to this socket too (and dropped as a copy in usage_events), one committed before is read here.
        try:
            catch_up = await database_sync_to_async(usage_feed_since)(organization_id=organization_id, cursor=after)
        except Exception as exc:
            log.warning("live usage feed could not read its catch-up: %s", exc.__class__.__name__)
            self.closing = True
            await self.close(code=CLOSE_TRY_AGAIN)
            return
        events = await self._events([event_payload(row) for row in catch_up.rows])
        self.caught_up = {event["request_id"] for event in events}
        await self.send_json(
            {
                "type": "ready",
                "organization_id": organization_id,
                "cursor": str(catch_up.cursor),
                "events": events,
                "truncated": catch_up.truncated,
            }
        )
        self.watcher = asyncio.create_task(self._watch())
        self.refresher = asyncio.create_task(self._refresh_cursor(catch_up.cursor))

    def _query(self, name: str) -> str:
        query = parse_qs(self.scope.get("query_string", b"").decode(errors="replace"))
        return (query.get(name) or [""])[0]

    def _cursor(self) -> FeedCursor | None:
        """The page's cursor (`?after=`), None when it has none; BadCursor for one the server never wrote."""
        text = self._query("after")
        return FeedCursor.parse(text) if text else None

    def _organization_id(self, user: User) -> int | None:
        wanted = self._query("org")
        memberships = Membership.objects.filter(user=user)
        if wanted:
            if not wanted.isdigit():
                return None
            return memberships.filter(organization_id=int(wanted)).values_list("organization_id", flat=True).first()
        session = self.scope.get("session")
        chosen = session.get(SESSION_ORG_KEY) if session is not None else None
        ids = list(memberships.order_by("created_at", "id").values_list("organization_id", flat=True))
        return chosen if chosen in ids else (ids[0] if ids else None)

    def _key_labels(self) -> dict[int, dict[str, str]]:
        keys = ApiKey.objects.filter(organization_id=self.organization_id).only("id", "name", "prefix", "last_four")
        return {key.pk: {"name": key.name, "masked": key.masked} for key in keys}

    async def _watch(self) -> None:
        interval = settings.PORTAL_LIVE_SESSION_CHECK_S
        while not self.closing:
            await asyncio.sleep(interval)
            await self._access_ended()

    async def _access_ended(self) -> bool:
        """Check the socket's access now; close it when it ended. A check the database cannot answer keeps it open:
        nothing is published while the database is away, and the next check runs an interval later."""
        if self.closing or self.access is None:
            return self.closing
        try:
            code = await database_sync_to_async(socket_access)(self.access)
        except Exception as exc:
            log.warning("live usage feed could not check its session: %s", exc.__class__.__name__)
            return False
        if code is None or self.closing:
            return self.closing
        self.closing = True
        await self.close(code=code)
        return True

    async def _refresh_cursor(self, sent: FeedCursor) -> None:
        """Every PORTAL_LIVE_CURSOR_REFRESH_MS, hand the page the cursor taken one refresh earlier (when it moved): by
        then every row it covers reached this socket live, so a reconnect resends only what is newer."""
        interval = settings.PORTAL_LIVE_CURSOR_REFRESH_S
        taken: FeedCursor | None = None
        while not self.closing:
            await asyncio.sleep(interval)
            if taken is not None and taken != sent and not self.closing:
                await self.send_json({"type": "cursor", "cursor": str(taken)})
                sent = taken
            try:
                taken = await database_sync_to_async(usage_feed_cursor)()
            except Exception as exc:
                log.warning("live usage feed could not take a cursor: %s", exc.__class__.__name__)
                taken = None

    async def access_recheck(self, message: dict[str, Any]) -> None:
        await self._access_ended()

    async def disconnect(self, code: int) -> None:
        self.closing = True
        for task in (self.watcher, self.refresher):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        for group in self.joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        pass  # the feed only speaks; anything sent to it is ignored

    async def _events(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Events as the page takes them: a "request" with its key's name."""
        if any(e.get("api_key_id") is not None and e["api_key_id"] not in self.key_labels for e in events):
            self.key_labels = await database_sync_to_async(self._key_labels)()  # a key made after the page opened
        return [{"type": "request", **event, "key": self.key_labels.get(event.get("api_key_id"))} for event in events]

    async def usage_events(self, message: dict[str, Any]) -> None:
        if self.closing:
            return
        fresh = []
        for event in message["events"]:
            if event["request_id"] in self.caught_up:
                self.caught_up.discard(event["request_id"])  # its one live copy: the catch-up already sent it
            else:
                fresh.append(event)
        for event in await self._events(fresh):
            await self.send_json(event)
