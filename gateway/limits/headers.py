"""The rate-limit response headers: OpenAI's `x-ratelimit-*` and Anthropic's `anthropic-ratelimit-*`."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING

# --- Header formats -----------------------------------------------------------------------------------


if TYPE_CHECKING:
    from gateway.limits.checks import Admission


def format_duration(seconds: int) -> str:
    """OpenAI's reset format: `1s`, `6m0s`, `1h2m3s`."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(math.ceil(epoch), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def openai_headers(admission: Admission) -> dict[str, str]:
    headers: dict[str, str] = {}
    for suffix, state in (("requests", admission.requests), ("tokens", admission.tokens)):
        if state is not None:
            headers[f"x-ratelimit-limit-{suffix}"] = str(state.limit)
            headers[f"x-ratelimit-remaining-{suffix}"] = str(state.remaining)
            headers[f"x-ratelimit-reset-{suffix}"] = format_duration(state.reset_seconds)
    return headers


def anthropic_headers(admission: Admission) -> dict[str, str]:
    headers: dict[str, str] = {}
    for part, state in (("requests", admission.requests), ("tokens", admission.tokens)):
        if state is not None:
            headers[f"anthropic-ratelimit-{part}-limit"] = str(state.limit)
            headers[f"anthropic-ratelimit-{part}-remaining"] = str(state.remaining)
            headers[f"anthropic-ratelimit-{part}-reset"] = rfc3339(state.reset_at)
    return headers
