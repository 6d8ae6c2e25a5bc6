"""Window arithmetic: the ISO week a moment falls in, and how a short window is named."""

from __future__ import annotations

MINUTE_S = 60
WEEK_S = 7 * 86400
MONDAY_OFFSET_S = 4 * 86400  # 1970-01-01 was a Thursday; the first Monday is 1970-01-05


def week_start(now: float) -> float:
    """Monday 00:00 UTC of the ISO week holding `now`."""
    return (now - MONDAY_OFFSET_S) // WEEK_S * WEEK_S + MONDAY_OFFSET_S


def window_label(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}-hour"
    if seconds % 60 == 0:
        return f"{seconds // 60}-minute"
    return f"{seconds}-second"
