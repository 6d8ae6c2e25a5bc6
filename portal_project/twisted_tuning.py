"""One per-request cost of daphne's HTTP layer (Twisted), removed.

Twisted parses every request's Content-Type header with the standard library's email
package (`twisted.web.http._parseContentType`: an EmailMessage, a header registry, a
policy) to decide whether to parse a form body. On the gateway's hot path that was about
5% of the event loop's time per request (py-spy, see bench/README.md). The function is
pure (header bytes in, media type bytes out) and clients send a handful of distinct
values, so a small LRU cache in front of it gives the same answers for a dictionary
lookup. If a Twisted release renames the function, nothing is patched.
"""

from __future__ import annotations

import functools


def install() -> None:
    try:
        from twisted.web import http
    except ImportError:  # not served by daphne (tests calling the ASGI app in-process)
        return
    parse = getattr(http, "_parseContentType", None)
    if parse is None or hasattr(parse, "cache_info"):
        return
    http._parseContentType = functools.lru_cache(maxsize=256)(parse)
