"""The project's reliance on other libraries' internals (portal_project/patches.py): each still fits, each check
notices when it stops fitting, each patch still does its job, and no new reliance appears outside the list."""

from __future__ import annotations

import ast
import asyncio
import inspect
from pathlib import Path

import pytest

from portal_project import patches

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("accounts", "apikeys", "billing", "gateway", "portal", "portal_project", "responsestore", "routerpools", "usage")


@pytest.mark.parametrize("patch", patches.PATCHES, ids=lambda p: p.name)
def test_every_patched_internal_still_has_the_shape_it_relies_on(patch: patches.Patch) -> None:
    assert patch.check() == [], f"{patch.name} ({patch.used_in}) relies on {patch.touches}, which moved"
    assert patch.why and patch.used_in


def test_the_checks_notice_a_moved_internal(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiohttp.streams import StreamReader
    from django.http.response import HttpResponseBase
    from twisted.web import http

    monkeypatch.delattr(StreamReader, "_read_nowait")
    monkeypatch.setattr(HttpResponseBase, "make_bytes", lambda value: None)
    monkeypatch.setattr(http, "_parseContentType", lambda header, default: None)
    moved = patches.problems()
    assert set(moved) == {"aiohttp-received-bytes", "django-asgi-handler", "twisted-content-type-cache"}, moved
    assert any("_read_nowait is gone" in problem for problem in moved["aiohttp-received-bytes"])
    assert any("make_bytes" in problem for problem in moved["django-asgi-handler"])


def test_the_content_type_parse_is_cached_and_answers_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.web import http

    original = getattr(http._parseContentType, "__wrapped__", http._parseContentType)
    monkeypatch.setattr(http, "_parseContentType", original)
    patches.cache_twisted_content_type_parse()
    cached = http._parseContentType
    assert hasattr(cached, "cache_info")
    line = b"application/json; charset=utf-8"
    assert cached(line) == original(line)
    cached(line)
    assert cached.cache_info().hits >= 1
    patches.cache_twisted_content_type_parse()  # twice: still one cache, not a cache of a cache
    assert http._parseContentType is cached


def test_bytes_received_before_a_broken_connection_are_recovered() -> None:
    from aiohttp import ClientPayloadError
    from aiohttp.streams import StreamReader

    class Protocol:
        _reading_paused = False

        def pause_reading(self) -> None: ...

        def resume_reading(self) -> None: ...

    async def scenario() -> tuple[bytes, bool]:
        reader = StreamReader(Protocol(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
        reader.feed_data(b'data: {"token": "Hello"}\n\n')
        reader.set_exception(ClientPayloadError("connection cut mid-body"))
        try:
            await reader.read(10)
            public_read_raised = False
        except ClientPayloadError:
            public_read_raised = True  # why the patch exists: the public read drops what was received
        return patches.received_not_read(reader), public_read_raised

    rest, public_read_raised = asyncio.run(scenario())
    assert public_read_raised
    assert rest == b'data: {"token": "Hello"}\n\n'
    assert patches.received_not_read(object()) == b""  # another aiohttp: nothing to recover, no crash


def test_the_stream_response_declares_its_abandon_hook() -> None:
    """The fast path calls `on_abandon` on the pipeline's own response class, not on an attribute pinned to Django's."""
    from gateway.asgi import GatewayApplication
    from gateway.pipeline import RelayResponse

    assert "on_abandon" in inspect.signature(RelayResponse.__init__).parameters
    assert "RelayResponse" in inspect.getsource(GatewayApplication._respond)


def test_no_library_internal_is_used_outside_the_list() -> None:
    """A private attribute of someone else's object belongs in patches.py (or the server overrides); Django's
    documented Model._meta and Model._default_manager and our own objects' internals are the only exceptions."""
    # Underscored by their libraries to stay clear of field names, but documented API: Model._meta and _default_manager, NamedTuple's.
    # DRF's Request._request is the HttpRequest it wraps, documented by DRF ("Standard HttpRequest attributes").
    DOCUMENTED = {"_meta", "_default_manager", "_asdict", "_replace", "_fields", "_make", "_request"}  # noqa: N806
    listed = {ROOT / "portal_project" / "patches.py", ROOT / "portal_project" / "twisted_tuning.py"}
    ours = {"source._checks"}  # gateway/limits/read.py reading its own Limiter
    found = []
    for top in PRODUCT:
        for path in sorted((ROOT / top).rglob("*.py")):
            if "migrations" in path.parts or path in listed:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                    continue
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                if node.attr in DOCUMENTED or ast.unparse(node) in ours:
                    continue
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert found == [], "list these in portal_project/patches.py: " + ", ".join(found)
