"""The time zone a user chose (User.time_zone): IANA names as zoneinfo knows them, checked before use."""

from __future__ import annotations

import functools
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

TIME_ZONE_MAX_LENGTH = 64  # User.time_zone's column
_REFUSED = "not a time zone name of the IANA database, e.g. Europe/Berlin or UTC"


class BadTimeZone(ValueError):
    pass


@functools.cache
def _names() -> frozenset[str]:
    return frozenset(available_timezones()) | {"UTC"}


def time_zone_names() -> list[str]:
    return sorted(_names())


def time_zone_parse(name: str) -> ZoneInfo:
    """An IANA zone name ("Europe/Berlin", "UTC") as a ZoneInfo; BadTimeZone for anything else. Looked up in the list
    of zones first, so no client text reaches the file system (zoneinfo reads a file per name)."""
    if not name or len(name) > TIME_ZONE_MAX_LENGTH or name not in _names():
        raise BadTimeZone(_REFUSED)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadTimeZone(_REFUSED) from None


def user_time_zone(user: Any) -> ZoneInfo:
    """The zone a signed-in user chose, UTC for anyone else (an admin key, no user) or a name no longer known."""
    try:
        return time_zone_parse(getattr(user, "time_zone", "") or "UTC")
    except BadTimeZone:
        return ZoneInfo("UTC")
