"""A used-up request allowance is mailed (portal/limit_mail.py): one plain-text mail to each owner and admin per
allowance and window, never a second for the same window (also with checks running at once), again in the next
window; the usage writer wakes the check after its batch of refusals commits and never feels a failing mail."""

from __future__ import annotations

import smtplib
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.db import connection
from django.test import Client
from django.utils import timezone

import gateway.limits
from accounts.models import Organization, User
from billing.models import SpendAlert
from gateway.errors import QuotaExceeded, RateLimited
from portal import limit_mail, notifications
from portal.limit_mail import limit_mail_worker, limit_mails_check
from tests.support.live import wait_for
from tests.support.portal import Team, ensure_site_and_plans, make_team
from usage.models import UsageEvent
from usage.services import UsageRecord, usage_record_batch
from usage.signals import LIMIT_REFUSAL_CODES

# A Wednesday in the 12:00–15:00 window of the free plan's 3-hour allowance of 100 requests (1,000 a week).
NOW = datetime(2026, 3, 4, 13, 30, tzinfo=UTC)
WINDOW_START = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
NEXT_WINDOW = datetime(2026, 3, 4, 15, 0, tzinfo=UTC)
SUBJECT = "[Cortensor] Acme's 3-hour request allowance is used up"


@pytest.fixture(autouse=True)
def counted_from_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The limiter without Redis: allowances are counted from usage rows, which the tests write with their times."""
    monkeypatch.setattr(gateway.limits.limiter, "redis_url", None)


@pytest.fixture
def team(db) -> Team:  # noqa: ANN001
    ensure_site_and_plans()
    team = make_team()
    mail.outbox.clear()  # the team's new keys were announced to their owners: count the allowance mails only
    return team


def rows(org: Organization, start: datetime, count: int, *, refused: str = "") -> None:
    UsageEvent.objects.bulk_create(
        [
            UsageEvent(
                request_id=f"req_{uuid.uuid4().hex}",
                organization=org,
                alias="oss-20b",
                route="chat.completions",
                status="error" if refused else "ok",
                http_status=429 if refused else 200,
                error_code=refused,
                created_at=start + timedelta(seconds=i),
            )
            for i in range(count)
        ]
    )


def record(org: Organization, *, refused: bool) -> UsageRecord:
    return UsageRecord(
        request_id=f"req_{uuid.uuid4().hex}",
        organization_id=org.pk,
        api_key_id=None,
        alias="oss-20b",
        route="chat.completions",
        status="error" if refused else "ok",
        http_status=429 if refused else 200,
        error_code="insufficient_quota" if refused else "",
        created_at=datetime.now(UTC),
    )


def test_the_refusal_codes_usage_signals_are_the_limiters() -> None:
    assert frozenset({QuotaExceeded.openai_code, RateLimited.openai_code}) == LIMIT_REFUSAL_CODES


def test_a_used_up_window_is_mailed_once_to_owners_and_admins_and_again_in_the_next_window(team: Team) -> None:
    acme = team.acme
    rows(acme, WINDOW_START, 99)
    rows(acme, WINDOW_START + timedelta(minutes=30), 3, refused="rate_limit_exceeded")  # refused: never counted
    assert limit_mails_check(organization_ids=[acme.pk], now=NOW) == [] and mail.outbox == []

    rows(acme, WINDOW_START + timedelta(hours=1), 1)  # the 100th admitted request
    rows(acme, WINDOW_START + timedelta(hours=1, minutes=1), 5, refused="insufficient_quota")
    rows(team.globex, WINDOW_START, 100)  # another organization's use is its own
    sent = limit_mails_check(organization_ids=[acme.pk], now=NOW)
    assert [(a.kind, a.threshold, a.period_start, a.amount_micros, a.limit_micros, a.key_id) for a in sent] == [
        ("window", 100, WINDOW_START, 100, 100, 0)
    ]
    # One mail per address (they do not see each other's), the owner and the admin, never the member.
    assert sorted((m.subject, tuple(m.to)) for m in mail.outbox) == [
        (SUBJECT, ("admin@acme.test",)),
        (SUBJECT, ("owner@acme.test",)),
    ]
    body = mail.outbox[0].body
    assert "your 3-hour request allowance of 100 requests for Acme is used up (100 of 100 since 2026-03-04 12:00 UTC)" in body
    assert "Requests are refused with insufficient_quota until Wed 2026-03-04 15:00 UTC" in body
    assert "/portal/billing, or wait for the reset" in body
    assert getattr(mail.outbox[0], "alternatives", []) == [] and mail.outbox[0].content_subtype == "plain"
    assert SpendAlert.objects.get().email_status == "sent to 2"

    # More refusals in the same window, checked again (and later in it): nothing more.
    rows(acme, WINDOW_START + timedelta(hours=2), 5, refused="insufficient_quota")
    assert limit_mails_check(organization_ids=[acme.pk], now=NOW) == []
    assert limit_mails_check(organization_ids=[acme.pk], now=NEXT_WINDOW - timedelta(seconds=1)) == []
    assert len(mail.outbox) == 2

    # The next window starts from zero: not used up, no mail; used up again, mailed again.
    assert limit_mails_check(organization_ids=[acme.pk], now=NEXT_WINDOW) == []
    rows(acme, NEXT_WINDOW, 100)
    later = NEXT_WINDOW + timedelta(hours=1)
    assert [(a.kind, a.period_start) for a in limit_mails_check(organization_ids=[acme.pk], now=later)] == [
        ("window", NEXT_WINDOW)
    ]
    assert limit_mails_check(organization_ids=[acme.pk], now=later) == []
    assert len(mail.outbox) == 4 and "until Wed 2026-03-04 18:00 UTC" in mail.outbox[-1].body
    assert sorted(SpendAlert.objects.values_list("kind", "period_start")) == [("window", WINDOW_START), ("window", NEXT_WINDOW)]

    # Staff see them with the spend alerts, counted in requests (not as money).
    staff = Client()
    staff.force_login(User.objects.create_superuser(email="staff@example.com", password="not-used-here"))
    page = staff.get("/admin/billing/spendalert/").content.decode()
    assert "100 requests" in page and "Window request allowance used up" in page and "$0.0001" not in page


def test_the_weekly_allowance_is_mailed_in_its_own_right(team: Team) -> None:
    monday = datetime(2026, 3, 2, tzinfo=UTC)
    rows(team.acme, monday, 1000)  # all of the week's 1,000 on Monday: the week is used up, Wednesday's window is not
    sent = limit_mails_check(organization_ids=[team.acme.pk], now=NOW)
    assert [(a.kind, a.period_start, a.amount_micros, a.limit_micros) for a in sent] == [("weekly", monday, 1000, 1000)]
    assert {m.subject for m in mail.outbox} == {"[Cortensor] Acme's weekly request allowance is used up"}
    assert "until Mon 2026-03-09 00:00 UTC" in mail.outbox[0].body
    assert limit_mails_check(organization_ids=[team.acme.pk], now=NOW + timedelta(days=1)) == []


@pytest.mark.django_db(transaction=True)
def test_concurrent_checks_send_one_mail_per_address() -> None:
    ensure_site_and_plans()
    team = make_team()
    mail.outbox.clear()
    rows(team.acme, WINDOW_START, 100)
    barrier = threading.Barrier(4)
    sent: list[str] = []

    def check() -> None:
        try:
            barrier.wait()
            sent.extend(a.kind for a in limit_mails_check(organization_ids=[team.acme.pk], now=NOW))
        finally:
            connection.close()

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sent == ["window"]
    assert sorted(m.to[0] for m in mail.outbox) == ["admin@acme.test", "owner@acme.test"]
    assert SpendAlert.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_writer_wakes_the_check_after_commit_and_never_feels_a_failing_mail(
    settings,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.PORTAL_SPEND_ALERT_INTERVAL_S = 0.05
    ensure_site_and_plans()
    team = make_team()
    mail.outbox.clear()

    def mail_server_down(*args: object, **kwargs: object) -> int:
        raise smtplib.SMTPServerDisconnected("the mail server hung up")

    monkeypatch.setattr(notifications, "send_mail", mail_server_down)
    try:
        usage_record_batch(usage=[record(team.acme, refused=False) for _ in range(100)], logs=[])
        assert SpendAlert.objects.count() == 0  # admitted rows alone wake nothing
        started = time.monotonic()
        usage_record_batch(usage=[record(team.acme, refused=True) for _ in range(3)], logs=[])
        assert time.monotonic() - started < 1.0
        assert UsageEvent.objects.filter(organization=team.acme, error_code="insufficient_quota").count() == 3
        # The window is claimed and the failure recorded, off the writer's thread; nothing was delivered.
        wait_for(lambda: SpendAlert.objects.filter(kind="window").exclude(email_status="").exists(), timeout=10)
        alert = SpendAlert.objects.get(kind="window")
        assert (alert.email_status, alert.period_start <= timezone.now()) == ("sent to 0 of 2", True)
        assert mail.outbox == []

        # A check that blows up altogether is the worker's problem too: the writer carries on.
        def broken(**kwargs: object) -> list[SpendAlert]:
            raise ConnectionError("database away")

        monkeypatch.setattr(limit_mail, "limit_mails_check", broken)
        failures = limit_mail_worker.failures
        usage_record_batch(usage=[record(team.acme, refused=True)], logs=[])
        assert UsageEvent.objects.filter(organization=team.acme, error_code="insufficient_quota").count() == 4
        wait_for(lambda: limit_mail_worker.failures > failures, timeout=10)
    finally:
        monkeypatch.undo()
        with limit_mail_worker._lock:
            limit_mail_worker._dirty.clear()  # the failed round's organization: not for the next test's database
        wait_for(lambda: limit_mail_worker.idle, timeout=10)
