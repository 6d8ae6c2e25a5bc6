"""Log lines (gateway/logs.py): no secret from a URL, and one line per record whatever the client sent."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from django.urls import reverse

from gateway.logs import REDACTED, JsonFormatter, PlainFormatter, escape_controls, redact

PLAIN = "%(asctime)s %(levelname)s %(name)s %(message)s request_id=%(request_id)s"


@pytest.mark.parametrize(
    ("name", "kwargs", "secret"),
    [
        ("account_reset_password_from_key", {"uidb36": "4z", "key": "c4t-7f2d9e0a1b3c"}, "c4t-7f2d9e0a1b3c"),
        ("account_confirm_email", {"key": "MQ:1uQx:secret-confirm-key"}, "MQ:1uQx:secret-confirm-key"),
        ("portal:invitation", {"token": "inv_4a9f0c2e7d"}, "inv_4a9f0c2e7d"),
    ],
)
def test_every_url_that_carries_a_secret_is_redacted(name: str, kwargs: dict[str, str], secret: str) -> None:
    # Reversed from the URL configuration itself: a route that moves must move its pattern in SECRET_PATHS too.
    path = reverse(name, kwargs=kwargs)
    line = redact(f"GET {path} 200 1.20ms")
    assert secret not in line and REDACTED in line


def test_urls_without_a_secret_are_left_alone() -> None:
    for path in ("/accounts/password/reset/key/done/", "/accounts/confirm-email/", "/accounts/login/", "/v1/chat/completions"):
        assert redact(f"GET {path} 200") == f"GET {path} 200"


def record(message: str, *args: object, name: str = "access", exc_info: object = None) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.INFO, __file__, 1, message, args, exc_info)
    made.request_id = "req_0123"
    return made


def test_a_plain_record_is_one_line_whatever_its_text() -> None:
    text = PlainFormatter(fmt=PLAIN).format(record("%s %s", "GET", "/v1/x\r\n2030-01-01 INFO access forged\x1b[2J\x85\u2028"))
    assert "\n" not in text and "\r" not in text and "\x1b" not in text and "\u2028" not in text and "\x85" not in text
    assert text.endswith("GET /v1/x\\r\\n2030-01-01 INFO access forged\\x1b[2J\\x85\\u2028 request_id=req_0123")


def test_a_plain_traceback_is_indented_under_its_record() -> None:
    try:
        raise ValueError("client text\n2030-01-01 INFO forged /portal/invitations/inv_secret")
    except ValueError:
        text = PlainFormatter(fmt=PLAIN).format(
            record("failed on %s", "/accounts/confirm-email/key_secret/", name="gateway", exc_info=sys.exc_info())
        )
    first, *rest = text.split("\n")
    assert first.endswith("failed on /accounts/confirm-email/[redacted]/ request_id=req_0123")
    assert rest and all(line.startswith("    ") for line in rest)
    assert "inv_secret" not in text and "key_secret" not in text


def test_a_json_line_stays_one_valid_line() -> None:
    text = JsonFormatter().format(record("%s", "a\u2028b\x85c\nd /portal/invitations/inv_secret"))
    assert "\n" not in text and "\u2028" not in text and "\x85" not in text
    assert json.loads(text)["msg"] == f"a\u2028b\x85c\nd /portal/invitations/{REDACTED}"


def test_escaping_is_idempotent_and_leaves_plain_text_alone() -> None:
    assert escape_controls("plain text, ünïcode") == "plain text, ünïcode"
    once = escape_controls("a\nb\x00")
    assert once == "a\\nb\\x00" and escape_controls(once) == once
