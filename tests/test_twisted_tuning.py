"""The changes to daphne and Twisted (portal_project/twisted_tuning.py) still fit the code they change.

Each override depends on a method, a signature or a piece of state of daphne or Twisted. A release that
moves one must fail here (and the server must refuse to start), never silently drop the body cap or the
read deadline. What the overrides do is tested against a live daphne in tests/hostile/test_edges.py.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from twisted.web import http

from portal_project import twisted_tuning
from tests.support.live import ROOT


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter: importing daphne.server installs its reactor, which this test process must not."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_every_overridden_thing_has_the_shape_the_overrides_expect() -> None:
    result = run_python(
        """
        import daphne.server
        from portal_project import twisted_tuning
        print(twisted_tuning.shape_problems())
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        (http.HTTPChannel, "dataReceived"),
        (http.HTTPChannel, "allHeadersReceived"),
        (http.HTTPChannel, "allContentReceived"),
        (http.HTTPChannel, "connectionLost"),
        (http.HTTPChannel, "loseConnection"),
        (http.Request, "handleContentChunk"),
        (http.Request, "__init__"),
        ("daphne.http_protocol.HTTPFactory", "__init__"),
        ("daphne.http_protocol.HTTPFactory", "buildProtocol"),
    ],
)
def test_an_overridden_method_that_changes_its_signature_is_reported(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str
) -> None:
    if isinstance(owner, str):
        from daphne import http_protocol

        owner = http_protocol.HTTPFactory
    assert twisted_tuning.shape_problems() == []

    def changed(self, *args, extra_argument):  # noqa: ANN001, ANN002, ANN202 - a stand-in with another signature
        return None

    monkeypatch.setattr(owner, name, changed)
    assert any(name in problem for problem in twisted_tuning.shape_problems())


def test_an_overridden_method_that_disappears_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(http.Request, "handleContentChunk")
    assert "Request.handleContentChunk is gone" in twisted_tuning.shape_problems()


def test_state_read_from_the_channel_is_still_set_by_twisted(monkeypatch: pytest.MonkeyPatch) -> None:
    def line_received(self, line):  # noqa: ANN001, ANN202 - a parser that no longer records the request line
        return None

    monkeypatch.setattr(http.HTTPChannel, "lineReceived", line_received)
    problems = twisted_tuning.shape_problems()
    assert "HTTPChannel.lineReceived no longer sets _command" in problems
    assert "HTTPChannel.lineReceived no longer sets _path" in problems


def test_the_form_parsing_switch_is_still_consulted(monkeypatch: pytest.MonkeyPatch) -> None:
    def request_received(self, command, path, version):  # noqa: ANN001, ANN202
        self.process()

    monkeypatch.setattr(http.Request, "requestReceived", request_received)
    assert "Request.requestReceived no longer consults parsePOSTFormSubmission" in twisted_tuning.shape_problems()


def test_daphne_must_still_build_its_factory_by_the_name_that_is_replaced() -> None:
    result = run_python(
        """
        import daphne.server
        from portal_project import twisted_tuning
        daphne.server.Server.run = lambda self: self.factory_built_some_other_way()
        del daphne.server.Server.__init__
        print(twisted_tuning.shape_problems())
        """
    )
    assert result.returncode == 0, result.stderr
    assert "daphne's Server.run no longer builds HTTPFactory" in result.stdout
    assert "daphne's Server no longer has proxy_forwarded_address_header" in result.stdout


def test_install_refuses_to_start_on_a_daphne_it_does_not_fit() -> None:
    result = run_python(
        """
        import daphne.server
        from twisted.web import http
        from portal_project import twisted_tuning
        del http.HTTPChannel.allHeadersReceived
        twisted_tuning.install(max_body_bytes=1024, read_timeout_s=30, keepalive_s=75)
        """
    )
    assert result.returncode != 0
    assert "cannot install on this daphne/Twisted: HTTPChannel.allHeadersReceived is gone" in result.stderr


def test_install_replaces_daphnes_factory_with_the_bounded_one() -> None:
    result = run_python(
        """
        import os, django
        os.environ["DJANGO_SETTINGS_MODULE"] = "portal_project.test_settings"
        django.setup()
        import daphne.server, daphne.http_protocol
        from portal_project import twisted_tuning
        twisted_tuning.install(max_body_bytes=1024, read_timeout_s=30, keepalive_s=75)
        factory = daphne.server.HTTPFactory
        print(factory is not daphne.http_protocol.HTTPFactory, issubclass(factory, daphne.http_protocol.HTTPFactory))
        print(twisted_tuning.shape_problems())
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["True True", "[]"]


def test_the_content_type_parse_is_cached_and_still_takes_one_header_value() -> None:
    parse = http._parseContentType
    assert parse(b"application/json; charset=utf-8") == b"application/json"
    twisted_tuning.install(max_body_bytes=1024, read_timeout_s=30, keepalive_s=75)  # outside daphne: only the cache
    assert hasattr(http._parseContentType, "cache_info")
    assert http._parseContentType(b"application/json; charset=utf-8") == b"application/json"
