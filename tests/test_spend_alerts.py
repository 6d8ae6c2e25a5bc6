"""Spend alerts: at 50/80/100% of an organization's or a key's daily and monthly cap, and on a low prepaid balance,
an e-mail to owners and admins and a signed webhook, once per threshold and period (also across processes), again
in the next period; the usage writer triggers the check after its batch commits, and a failing webhook endpoint
never slows or breaks it."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.db import connection

from accounts.models import Organization
from apikeys.models import ApiKey
from billing.alerts import SIGNATURE_HEADER, sign, verify_signature
from billing.models import LedgerEntry, Plan, SpendAlert
from billing.services import organization_spend_settings_update
from tests.support.live import wait_for
from tests.support.portal import Team, ensure_site_and_plans, make_team
from tests.support.webhooks import Receiver
from usage.alerts import crossed_thresholds, period_starts, spend_alert_worker, spend_alerts_check
from usage.models import UsageEvent
from usage.services import UsageRecord, usage_record_batch

NOW = datetime(2026, 3, 4, 13, 30, tzinfo=UTC)
DAY = datetime(2026, 3, 4, tzinfo=UTC)
MONTH = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def receiver(settings) -> Iterator[Receiver]:  # noqa: ANN001
    settings.PORTAL_ALERT_WEBHOOK_ALLOW_INSECURE = True  # a local receiver over plain http
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture
def team(db) -> Team:  # noqa: ANN001
    ensure_site_and_plans()
    return make_team()


def debit(org: Organization, micros: int, when: datetime) -> None:
    LedgerEntry.objects.create(
        organization=org, kind="debit", amount_micros=-micros, request_id=f"req_{uuid.uuid4().hex}", created_at=when
    )


def key_usage(org: Organization, key_id: int, micros: int, when: datetime) -> None:
    UsageEvent.objects.create(
        request_id=f"req_{uuid.uuid4().hex}",
        organization=org,
        api_key_id=key_id,
        alias="oss-20b",
        route="chat.completions",
        status="ok",
        http_status=200,
        total_tokens=1,
        cost_micros=micros,
        created_at=when,
    )


def alerts() -> list[tuple[int, str, int, datetime, str]]:
    return [
        (a.key_id, a.kind, a.threshold, a.period_start, a.email_status)
        for a in SpendAlert.objects.order_by("period_start", "key_id", "kind", "threshold")
    ]


def set_caps(org: Organization, daily: int | None = None, monthly: int | None = None, url: str = "") -> None:
    organization_spend_settings_update(
        organization=org, spend_cap_daily_micros=daily, spend_cap_monthly_micros=monthly, alert_webhook_url=url
    )


def test_thresholds_are_integer_exact() -> None:
    assert crossed_thresholds(4_999_999, 10_000_000) == []
    assert crossed_thresholds(5_000_000, 10_000_000) == [50]
    assert crossed_thresholds(7_999_999, 10_000_000) == [50]
    assert crossed_thresholds(8_000_000, 10_000_000) == [50, 80]
    assert crossed_thresholds(10_000_000, 10_000_000) == [50, 80, 100]
    assert crossed_thresholds(0, 0) == [] and crossed_thresholds(1, 0) == [50, 80, 100]
    assert crossed_thresholds(10**18, None) == []
    assert period_starts(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == (
        datetime(2026, 12, 31, tzinfo=UTC),
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


def test_each_threshold_of_a_daily_cap_is_sent_once_to_owners_and_admins(team: Team) -> None:
    acme = team.acme
    set_caps(acme, daily=10_000_000)
    debit(acme, 4_999_999, DAY + timedelta(hours=1))
    assert spend_alerts_check(organization_ids=[acme.pk], now=NOW) == [] and mail.outbox == []
    debit(acme, 1, DAY + timedelta(hours=2))  # exactly 50%
    debit(team.globex, 99_000_000, DAY)  # another organization's spend counts for nothing here
    assert [a.threshold for a in spend_alerts_check(organization_ids=[acme.pk], now=NOW)] == [50]
    assert spend_alerts_check(organization_ids=[acme.pk], now=NOW) == []  # not again in the same day
    debit(acme, 3_000_000, DAY + timedelta(hours=3))
    assert [a.threshold for a in spend_alerts_check(organization_ids=[acme.pk], now=NOW)] == [80]
    debit(acme, 2_000_000, DAY + timedelta(hours=4))
    assert [a.threshold for a in spend_alerts_check(organization_ids=[acme.pk], now=NOW)] == [100]
    assert spend_alerts_check(organization_ids=[acme.pk], now=NOW) == []
    assert [(m.subject, sorted(m.to)) for m in mail.outbox] == [
        (f"[Cortensor] Acme has used {t}% of its daily spend cap", ["admin@acme.test", "owner@acme.test"]) for t in (50, 80)
    ] + [("[Cortensor] Acme has reached its daily spend cap", ["admin@acme.test", "owner@acme.test"])]
    assert "Spent $10.00 of the $10.00 cap (2026-03-04, UTC)" in mail.outbox[2].body
    assert alerts() == [(0, "daily", t, DAY, "sent to 2") for t in (50, 80, 100)]


def test_a_jump_past_several_thresholds_claims_them_all_and_sends_the_highest(team: Team) -> None:
    set_caps(team.acme, monthly=1_000_000)
    debit(team.acme, 2_500_000, MONTH + timedelta(days=1))
    sent = spend_alerts_check(organization_ids=[team.acme.pk], now=NOW)
    assert [(a.kind, a.threshold, a.amount_micros, a.limit_micros) for a in sent] == [("monthly", 100, 2_500_000, 1_000_000)]
    assert alerts() == [
        (0, "monthly", 50, MONTH, "superseded by 100%"),
        (0, "monthly", 80, MONTH, "superseded by 100%"),
        (0, "monthly", 100, MONTH, "sent to 2"),
    ]
    assert len(mail.outbox) == 1


def test_the_next_day_and_the_next_month_alert_again(team: Team) -> None:
    set_caps(team.acme, daily=1_000_000, monthly=100_000_000)
    debit(team.acme, 600_000, DAY + timedelta(hours=1))
    assert [a.threshold for a in spend_alerts_check(organization_ids=[team.acme.pk], now=NOW)] == [50]
    tomorrow = DAY + timedelta(days=1)
    assert spend_alerts_check(organization_ids=[team.acme.pk], now=tomorrow + timedelta(hours=1)) == []  # a new day, no spend
    debit(team.acme, 500_000, tomorrow + timedelta(minutes=5))
    sent = spend_alerts_check(organization_ids=[team.acme.pk], now=tomorrow + timedelta(hours=1))
    assert [(a.kind, a.threshold, a.period_start) for a in sent] == [("daily", 50, tomorrow)]
    # The month: 50% of $100 in March, and again in April.
    debit(team.acme, 49_000_000, DAY)
    sent = spend_alerts_check(organization_ids=[team.acme.pk], now=tomorrow + timedelta(hours=2))
    assert [(a.kind, a.threshold, a.period_start) for a in sent] == [("monthly", 50, MONTH)]
    april = datetime(2026, 4, 1, tzinfo=UTC)
    debit(team.acme, 50_000_000, april + timedelta(hours=1))
    sent = spend_alerts_check(organization_ids=[team.acme.pk], now=april + timedelta(hours=2))
    assert sorted((a.kind, a.threshold, a.period_start) for a in sent) == [("daily", 100, april), ("monthly", 50, april)]


def test_a_keys_own_caps_alert_from_its_usage_costs(team: Team) -> None:
    key = ApiKey.objects.get(pk=team.acme_key_id)
    key.spend_cap_daily_micros = 2_000_000
    key.spend_cap_monthly_micros = 10_000_000
    key.save()
    other = ApiKey.objects.get(pk=team.globex_key_id)
    key_usage(team.acme, key.pk, 1_600_000, DAY + timedelta(hours=1))
    key_usage(team.acme, key.pk, 3_400_000, MONTH)  # earlier this month: the month's, not the day's
    key_usage(team.globex, other.pk, 50_000_000, DAY)
    sent = spend_alerts_check(organization_ids=[team.acme.pk, team.globex.pk], now=NOW)
    assert sorted((a.key_id, a.kind, a.threshold, a.amount_micros) for a in sent) == [
        (key.pk, "daily", 80, 1_600_000),
        (key.pk, "monthly", 50, 5_000_000),
    ]
    subjects = sorted(m.subject for m in mail.outbox)
    assert subjects == [
        f"[Cortensor] key “acme backend” ({key.prefix}…) has used 50% of its monthly spend cap",
        f"[Cortensor] key “acme backend” ({key.prefix}…) has used 80% of its daily spend cap",
    ]
    # A revoked key spends nothing more: it is not checked.
    key.revoked_at = NOW
    key.save()
    key_usage(team.acme, key.pk, 1_000_000, DAY + timedelta(hours=2))
    assert spend_alerts_check(organization_ids=[team.acme.pk], now=NOW) == []


def test_a_low_prepaid_balance_alerts_once_per_top_up(team: Team, settings) -> None:  # noqa: ANN001
    settings.PORTAL_LOW_BALANCE_ALERT_PERCENT = 20
    acme = team.acme
    acme.plan = Plan.objects.create(slug="payg", name="Pay as you go", prepaid=True)
    acme.save()
    top_up = LedgerEntry.objects.create(organization=acme, kind="credit", amount_micros=10_000_000, created_at=DAY)
    debit(acme, 8_000_000, DAY + timedelta(hours=1))  # $2.00 left: 20%, not below it
    assert spend_alerts_check(organization_ids=[acme.pk], now=NOW) == []
    debit(acme, 1, DAY + timedelta(hours=2))
    sent = spend_alerts_check(organization_ids=[acme.pk], now=NOW)
    assert [(a.kind, a.threshold, a.amount_micros, a.limit_micros, a.period_start) for a in sent] == [
        ("low_balance", 20, 1_999_999, 10_000_000, top_up.created_at)
    ]
    assert mail.outbox[-1].subject == "[Cortensor] Acme's prepaid balance is low: $1.999999 left"
    debit(acme, 1_000_000, DAY + timedelta(hours=3))
    assert spend_alerts_check(organization_ids=[acme.pk], now=NOW) == []  # still low, already told
    later = LedgerEntry.objects.create(
        organization=acme, kind="credit", amount_micros=5_000_000, created_at=DAY + timedelta(hours=4)
    )
    assert spend_alerts_check(organization_ids=[acme.pk], now=NOW) == []  # $5.999999: above 20% of $5
    debit(acme, 5_000_000, DAY + timedelta(hours=5))
    sent = spend_alerts_check(organization_ids=[acme.pk], now=NOW)
    assert [(a.amount_micros, a.limit_micros, a.period_start) for a in sent] == [(999_999, 5_000_000, later.created_at)]


def test_organizations_without_caps_cost_two_queries(team: Team, django_assert_num_queries) -> None:  # noqa: ANN001
    debit(team.acme, 10_000_000, DAY)
    with django_assert_num_queries(2):
        assert spend_alerts_check(organization_ids=[team.acme.pk, team.globex.pk], now=NOW) == []


# --- the webhook ---------------------------------------------------------------------------------------------------


def test_the_webhook_is_signed_and_the_signature_verifies(team: Team, receiver: Receiver, caplog) -> None:  # noqa: ANN001
    caplog.set_level("DEBUG")
    set_caps(team.acme, daily=1_000_000, url=receiver.url)
    secret = Organization.objects.get(pk=team.acme.pk).alert_webhook_secret
    debit(team.acme, 800_000, DAY)
    (alert,) = spend_alerts_check(organization_ids=[team.acme.pk], now=NOW)
    assert alert.webhook_status == "delivered: HTTP 200"
    ((headers, body),) = receiver.requests
    assert json.loads(body) == {
        "id": f"alert_{alert.pk}",
        "type": "spend_cap.threshold_reached",
        "created": int(alert.created_at.timestamp()),
        "organization": {"id": team.acme.pk, "slug": "acme", "name": "Acme"},
        "data": {
            "period_start": "2026-03-04T00:00:00Z",
            "threshold_percent": 80,
            "scope": "organization",
            "period": "daily",
            "spent_micros": 800_000,
            "cap_micros": 1_000_000,
        },
    }
    assert headers["Content-Type"] == "application/json" and headers["X-Cortensor-Event-Id"] == f"alert_{alert.pk}"
    signature = headers[SIGNATURE_HEADER]
    # What the docs tell a receiver to do, written out independently of billing.alerts.
    parts = dict(part.split("=", 1) for part in signature.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected) and abs(time.time() - int(parts["t"])) < 60
    assert verify_signature(secret, body, signature)
    assert not verify_signature("whsec_wrong", body, signature)
    assert not verify_signature(secret, body.replace(b"800000", b"900000"), signature)
    assert not verify_signature(secret, body, sign(secret, body, int(time.time()) - 301))  # too old: a replay
    assert not verify_signature(secret, body, "garbage")
    # Neither the secret nor the URL (its token) reaches a log line.
    assert secret not in caplog.text and "url-secret-7" not in caplog.text


@pytest.mark.parametrize(("status", "delay", "outcome"), [(500, 0.0, "failed: HTTP 500"), (200, 3.0, "failed: ReadTimeout")])
def test_a_failing_endpoint_is_recorded_and_the_email_still_goes(
    team: Team,
    receiver: Receiver,
    settings,
    caplog,
    status: int,
    delay: float,
    outcome: str,  # noqa: ANN001
) -> None:
    settings.PORTAL_ALERT_WEBHOOK_TIMEOUT_S = 0.5
    receiver.status, receiver.delay = status, delay
    set_caps(team.acme, daily=1_000_000, url=receiver.url)
    debit(team.acme, 1_000_000, DAY)
    started = time.monotonic()
    (alert,) = spend_alerts_check(organization_ids=[team.acme.pk], now=NOW)
    assert time.monotonic() - started < 2.5
    assert (alert.email_status, alert.webhook_status) == ("sent to 2", outcome)
    assert len(mail.outbox) == 1
    assert Organization.objects.get(pk=team.acme.pk).alert_webhook_secret not in caplog.text


def test_a_url_on_a_private_address_is_refused_when_sending(team: Team, settings) -> None:  # noqa: ANN001
    Organization.objects.filter(pk=team.acme.pk).update(
        spend_cap_daily_micros=1_000_000, alert_webhook_url="https://127.0.0.1:9/hook", alert_webhook_secret="whsec_x"
    )
    settings.PORTAL_ALERT_WEBHOOK_ALLOW_INSECURE = False
    debit(team.acme, 1_000_000, DAY)
    (alert,) = spend_alerts_check(organization_ids=[team.acme.pk], now=NOW)
    assert alert.webhook_status == "refused: URL not allowed"


# --- across processes, and from the usage writer ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_checks_send_each_alert_once() -> None:
    """Four checks at once, over ten days whose spend jumps straight past 100%: one message a day, never one check
    sending 80% while another sends 100% of the same jump."""
    ensure_site_and_plans()
    team = make_team()
    set_caps(team.acme, daily=1_000_000)
    mail.outbox.clear()  # the team's keys were announced to their owners (portal/notifications.py): count alerts only
    for offset in range(10):
        day = DAY + timedelta(days=offset)
        debit(team.acme, 1_000_000, day)
        barrier = threading.Barrier(4)
        sent: list[int] = []

        def check(now: datetime, barrier: threading.Barrier, sent: list[int]) -> None:
            try:
                barrier.wait()
                sent.extend(a.threshold for a in spend_alerts_check(organization_ids=[team.acme.pk], now=now))
            finally:
                connection.close()

        threads = [threading.Thread(target=check, args=(day + timedelta(hours=1), barrier, sent)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sent == [100], f"day {offset}: {sent}"
    assert len(mail.outbox) == 10
    assert SpendAlert.objects.count() == 30  # 50, 80 and 100 a day, each claimed by exactly one of the four


def usage_record(org: Organization, key_id: int, cost: int) -> UsageRecord:
    return UsageRecord(
        request_id=f"req_{uuid.uuid4().hex}",
        organization_id=org.pk,
        api_key_id=key_id,
        alias="oss-20b",
        route="chat.completions",
        status="ok",
        http_status=200,
        created_at=datetime.now(UTC),
        prompt_tokens=10,
        completion_tokens=10,
        total_tokens=20,
        cost_micros=cost,
    )


@pytest.mark.django_db(transaction=True)
def test_the_usage_writer_triggers_the_check_after_commit_and_a_hanging_webhook_never_slows_it(settings) -> None:  # noqa: ANN001
    settings.PORTAL_ALERT_WEBHOOK_ALLOW_INSECURE = True
    settings.PORTAL_ALERT_WEBHOOK_TIMEOUT_S = 1.0
    settings.PORTAL_SPEND_ALERT_INTERVAL_S = 0.05
    hanging = Receiver()
    hanging.delay = 5.0
    try:
        ensure_site_and_plans()
        team = make_team()
        key = ApiKey.objects.get(pk=team.acme_key_id)
        key.spend_cap_daily_micros = 1_000
        key.save()
        set_caps(team.acme, url=hanging.url)
        started = time.monotonic()
        usage_record_batch(usage=[usage_record(team.acme, key.pk, 600)], logs=[])
        usage_record_batch(usage=[usage_record(team.acme, key.pk, 500)], logs=[])
        assert time.monotonic() - started < 1.0  # the writer never waits for the check, let alone the webhook
        assert UsageEvent.objects.filter(organization=team.acme).count() == 2
        # 60% then 110% of the key's cap: 100% is sent (its webhook timing out), 50% sent or superseded, 80% superseded
        # or sent, depending on whether the worker saw the two batches in one round or two.
        wait_for(lambda: SpendAlert.objects.filter(threshold=100).exclude(webhook_status="").exists(), timeout=10)
        assert SpendAlert.objects.get(threshold=100).webhook_status == "failed: ReadTimeout"
        assert sorted(SpendAlert.objects.values_list("key_id", "kind", "threshold")) == [
            (key.pk, "daily", t) for t in (50, 80, 100)
        ]
        # More usage keeps being written while alerts are failing.
        usage_record_batch(usage=[usage_record(team.acme, key.pk, 1)], logs=[])
        assert UsageEvent.objects.filter(organization=team.acme).count() == 3
        wait_for(lambda: spend_alert_worker.idle, timeout=10)
    finally:
        hanging.stop()


def test_the_cron_command_checks_every_capped_or_prepaid_organization(team: Team) -> None:
    from io import StringIO

    from django.core.management import call_command

    set_caps(team.acme, daily=1_000_000)
    debit(team.acme, 1_000_000, datetime.now(UTC))
    out = StringIO()
    call_command("check_spend_alerts", stdout=out)
    assert out.getvalue().strip() == "1 alert(s) sent"
    call_command("check_spend_alerts", stdout=out)
    assert out.getvalue().strip().splitlines()[-1] == "0 alert(s) sent"
    assert len(mail.outbox) == 1


def test_the_readmes_verification_snippet_verifies_a_real_signature() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("```python\nimport hashlib")
    snippet = readme[start + len("```python\n") : readme.index("```", start + 10)]
    namespace: dict[str, object] = {}
    exec(snippet, namespace)  # noqa: S102
    verify = namespace["verify"]
    body = b'{"id":"alert_1"}'
    assert verify("whsec_abc", body, sign("whsec_abc", body, int(time.time())))  # type: ignore[operator]
    assert not verify("whsec_abd", body, sign("whsec_abc", body, int(time.time())))  # type: ignore[operator]
    assert not verify("whsec_abc", body, sign("whsec_abc", body, int(time.time()) - 600))  # type: ignore[operator]


def test_staff_see_each_alert_and_its_deliveries_in_the_admin(team: Team) -> None:
    from django.test import Client

    from accounts.models import User

    set_caps(team.acme, daily=1_000_000)
    debit(team.acme, 1_234_567, DAY)
    spend_alerts_check(organization_ids=[team.acme.pk], now=NOW)
    staff = Client()
    staff.force_login(User.objects.create_superuser(email="staff@example.com", password="not-used-here"))
    page = staff.get("/admin/billing/spendalert/").content.decode()
    assert "$1.234567" in page and "$1.00" in page and "sent to 2" in page and "superseded by 100%" in page
    assert staff.get("/admin/billing/spendalert/add/").status_code == 403


def test_a_failed_round_keeps_its_organizations_for_the_next(monkeypatch: pytest.MonkeyPatch, caplog) -> None:  # noqa: ANN001
    from usage import alerts as alerts_module

    worker = alerts_module.SpendAlertWorker()
    calls: list[set[int]] = []

    def failing(*, organization_ids: set[int]) -> list[SpendAlert]:
        calls.append(set(organization_ids))
        if len(calls) == 1:
            raise ConnectionError("database away")
        return []

    monkeypatch.setattr(alerts_module, "spend_alerts_check", failing)
    worker._dirty = {1, 2}
    worker.run_once()
    assert worker.failures == 1 and not worker.idle and "kept for the round the next batch starts" in caplog.text
    worker._dirty.add(3)
    worker.run_once()
    assert calls == [{1, 2}, {1, 2, 3}] and worker.idle


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORTAL_LOW_BALANCE_ALERT_PERCENT", "101"),
        ("PORTAL_LOW_BALANCE_ALERT_PERCENT", "-1"),
        ("PORTAL_ALERT_WEBHOOK_TIMEOUT_MS", "30001"),
        ("PORTAL_SPEND_ALERT_INTERVAL_MS", "soon"),
        ("PORTAL_ALERT_WEBHOOK_ALLOW_INSECURE", "maybe"),
    ],
)
def test_a_malformed_alert_setting_stops_start_up_naming_it(variable: str, value: str) -> None:
    import os
    import subprocess
    import sys

    from tests.support.live import ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(DEBUG="1", **{variable: value})
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"configuration error: {variable}: ")
