"""Live connections that end with access: the check a signed-in socket repeats, and the push that makes it repeat now.

A portal WebSocket (the usage feed) is authenticated once, at its handshake. Every way that access ends afterwards
(sign-out, "sign out everywhere else", a password change, expiry, the account deleted or deactivated, the membership
gone) must close it: each socket re-runs `socket_access` every PORTAL_LIVE_SESSION_CHECK_MS, and the places that end
access send `access.recheck` to the user's and the session's channel-layer groups once their change commits, so the
usual cases close at once and the rest within one interval.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.base import SessionBase
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.db import transaction
from django.db.models import Exists, OuterRef, Subquery
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from accounts.models import Membership, User

log = logging.getLogger("portal.live")

RECHECK_MESSAGE = "access.recheck"  # handled by a consumer's `access_recheck`
PUSH_TIMEOUT_S = 1.0
CLOSE_SIGNED_OUT = 4401  # the session ended: signing in again is the way back
CLOSE_NOT_A_MEMBER = 4403  # the session is fine, the organization is no longer the user's


def user_group(user_id: int) -> str:
    return f"access.user.{user_id}"


def session_group(session_key: str) -> str:
    # A digest, not the key: group names are Redis keys, and a session key is a bearer credential.
    return f"access.session.{hashlib.sha256(session_key.encode()).hexdigest()[:40]}"


@dataclass(frozen=True, slots=True)
class SocketAccess:
    """What a socket was let in with: whose session, and which organization it watches."""

    user_id: int
    session_key: str
    organization_id: int


def _session_store_class() -> type[SessionBase]:
    return import_module(settings.SESSION_ENGINE).SessionStore


def _signed_in(data: dict[str, Any], user: User) -> bool:
    """django.contrib.auth.get_user's verdict on a session's data, for a user already read (active, with password)."""
    if str(data.get(SESSION_KEY)) != str(user.pk) or data.get(BACKEND_SESSION_KEY) not in settings.AUTHENTICATION_BACKENDS:
        return False
    session_hash = data.get(HASH_SESSION_KEY)
    if not session_hash:
        return False
    if constant_time_compare(session_hash, user.get_session_auth_hash()):
        return True
    return any(constant_time_compare(session_hash, fallback) for fallback in user.get_session_auth_fallback_hash())


def socket_access(access: SocketAccess) -> int | None:
    """None while the socket may stay open, else the code to close it with. One query on database sessions."""
    store_class = _session_store_class()
    users = User.objects.filter(pk=access.user_id, is_active=True).annotate(
        member=Exists(Membership.objects.filter(user=OuterRef("pk"), organization_id=access.organization_id))
    )
    if issubclass(store_class, DatabaseSessionStore):  # db and cached_db: the row is the truth, read in the same query
        live = store_class.get_model_class().objects.filter(session_key=access.session_key, expire_date__gt=timezone.now())
        row = (
            users.annotate(session_data=Subquery(live.values("session_data")[:1]))
            .values_list("password", "member", "session_data")
            .first()
        )
        if row is None or row[2] is None:
            return CLOSE_SIGNED_OUT
        password, member, data = row[0], row[1], store_class().decode(row[2])
    else:
        pair = users.values_list("password", "member").first()
        if pair is None:
            return CLOSE_SIGNED_OUT
        password, member = pair
        data = store_class(access.session_key).load()  # {} once the session is gone or expired
    if not _signed_in(data, User(pk=access.user_id, password=password)):
        return CLOSE_SIGNED_OUT
    return None if member else CLOSE_NOT_A_MEMBER


# --- The push -----------------------------------------------------------------------------------------------


def push_recheck(groups: list[str]) -> None:
    """Once the current transaction commits, ask every socket in these groups to check its access now.

    A push that cannot be delivered is logged and dropped: the sockets' own interval check still closes them.
    """
    if groups:
        transaction.on_commit(lambda: _deliver(groups))


def _deliver(groups: list[str]) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:  # called from async code: never block its loop
        loop.create_task(_send(layer, groups))
        return
    from asgiref.sync import async_to_sync

    async_to_sync(_send)(layer, groups)


async def _send(layer: Any, groups: list[str]) -> None:
    for group in groups:
        try:
            await asyncio.wait_for(layer.group_send(group, {"type": RECHECK_MESSAGE}), timeout=PUSH_TIMEOUT_S)
        except Exception as exc:
            log.warning("access recheck not pushed to %s: %s", group.rsplit(".", 1)[0], exc.__class__.__name__)


# --- Where access ends (connected in portal.apps) -------------------------------------------------------------

_ACCESS_FIELDS = frozenset({"password", "is_active"})


def on_user_saved(
    sender: type, instance: User, created: bool, update_fields: frozenset[str] | None = None, **kwargs: Any
) -> None:
    # A new password changes every session's auth hash; deactivation ends every session. A sign-in's last_login is neither.
    if created or (update_fields is not None and not (_ACCESS_FIELDS & set(update_fields))):
        return
    push_recheck([user_group(instance.pk)])


def on_user_deleted(sender: type, instance: User, **kwargs: Any) -> None:
    push_recheck([user_group(instance.pk)])


def on_membership_deleted(sender: type, instance: Membership, **kwargs: Any) -> None:
    push_recheck([user_group(instance.user_id)])


def on_session_deleted(sender: type, instance: Any, **kwargs: Any) -> None:
    # Sign-out, "sign out everywhere else" and a cycled key all delete the row. A row deleted because it had expired
    # (clearsessions) is skipped: the interval check already closed its sockets, and that command deletes thousands.
    if instance.expire_date > timezone.now():
        push_recheck([session_group(instance.session_key)])


def connect_signals() -> None:
    from django.contrib.sessions.models import Session
    from django.db.models.signals import post_delete, post_save

    post_save.connect(on_user_saved, sender=User, dispatch_uid="portal.live.user_saved")
    post_delete.connect(on_user_deleted, sender=User, dispatch_uid="portal.live.user_deleted")
    post_delete.connect(on_membership_deleted, sender=Membership, dispatch_uid="portal.live.membership_deleted")
    store_class = _session_store_class()
    model = store_class.get_model_class() if issubclass(store_class, DatabaseSessionStore) else Session
    post_delete.connect(on_session_deleted, sender=model, dispatch_uid="portal.live.session_deleted")
