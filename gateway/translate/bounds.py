"""What one /v1 request may hold: every size a client chooses that the gateway walks or loops over, bounded in one place.

Each bound is refused with a 400 in the route's own shape naming the field, before any work that grows
with it. The body size itself (PORTAL_MAX_BODY_BYTES) is enforced where the body is read, and request
headers by Twisted (at most 500 headers, 16 KiB for the request line and headers together).
"""

from __future__ import annotations

import json

MAX_JSON_DEPTH = 64  # arrays and objects nested in a JSON body; the body object itself is the first level
MAX_MESSAGES = 2048  # entries of `messages`
MAX_CONTENT_PARTS = 256  # text parts of one message's `content`, or blocks of Anthropic's `system`
MAX_MODEL_CHARS = 256  # `model`
MAX_USER_CHARS = 256  # OpenAI's `user`, Anthropic's `metadata.user_id`
MAX_METADATA_KEYS = 16  # entries of `metadata` (OpenAI's own limits, applied to both surfaces)
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512  # a `metadata` value: a string, number, boolean or null, never an array or object
MAX_OPENAI_STOPS = 4  # entries of `stop` (OpenAI's own limit)
MAX_ANTHROPIC_STOPS = 32  # entries of `stop_sequences`
MAX_STOP_CHARS = 256  # one stop string
MAX_STOPS_TOTAL_CHARS = 2048  # all stop strings of one request together


class JSONTooDeep(ValueError):
    """A JSON document nested deeper than the limit; a ValueError, so it is refused wherever bad JSON is."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"nested deeper than {limit} levels")


def loads_bounded(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> object:
    """`json.loads`, refusing documents nested deeper than `max_depth` with JSONTooDeep.

    Past about a thousand levels the decoder itself raises RecursionError (not a ValueError); below
    that, the parsed value is measured, but only when the text holds enough opening brackets to be
    deep at all, which a counting pass in C settles for nearly every body.
    """
    try:
        value = json.loads(raw)
    except RecursionError:
        raise JSONTooDeep(max_depth) from None
    # Every array or object opens with one of these characters, in any of the encodings json.loads accepts.
    opens = raw.count(b"[") + raw.count(b"{") if isinstance(raw, bytes) else raw.count("[") + raw.count("{")
    if opens > max_depth and _deeper_than(value, max_depth):
        raise JSONTooDeep(max_depth)
    return value


def _deeper_than(value: object, limit: int) -> bool:
    # Level by level, without recursion: the work is one step per value inside an array or object.
    level = [value] if type(value) is list or type(value) is dict else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        inner = []
        for container in level:
            for item in container.values() if type(container) is dict else container:
                if type(item) is list or type(item) is dict:
                    inner.append(item)
        level = inner
    return False
