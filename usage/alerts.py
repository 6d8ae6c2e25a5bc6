"""Spend alerts, off the hot path: after a usage batch commits, the organizations it billed are handed to a background
thread, which checks their spend against their caps (and a prepaid balance against its last top-up) and sends
each alert once per threshold and period (billing.alerts delivers, billing.SpendAlert's unique row decides who).

What counts as spend: an organization's caps, its ledger debits (what it was billed); a key's own caps, the cost on its
usage rows (UsageEvent.cost_micros: the ledger does not name keys, and each debit equals its row's cost). Periods
are the UTC day and the UTC calendar month, as the gateway enforces them.

The thread coalesces: a burst of batches for one organization is one check per PORTAL_SPEND_ALERT_INTERVAL_S, and
the usage writer only adds ids to a set. A check of an organization with no cap and no prepaid plan costs nothing
beyond one query for the whole round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.conf import settings
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.db.models import Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import Organization
from apikeys.models import ApiKey
from billing.alerts import AlertSubject, alert_deliver
from billing.models import LedgerEntry, SpendAlert
from billing.selectors import organization_balance
from usage.models import UsageEvent

log = logging.getLogger("usage.alerts")

THRESHOLDS = (50, 80, 100)  # percent of a cap


def crossed_thresholds(spent: int, cap: int | None) -> list[int]:
    """The thresholds `spent` has reached, in integer arithmetic; none without a cap or without any spend."""
    if cap is None or spent <= 0:
        return []
    return [threshold for threshold in THRESHOLDS if spent * 100 >= cap * threshold]


def period_starts(now: datetime) -> tuple[datetime, datetime, datetime]:
    """The UTC day's start, the UTC month's start and the next month's start around `now`."""
    utc = now.astimezone(UTC)
    day = utc.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    next_month = month.replace(year=month.year + 1, month=1) if month.month == 12 else month.replace(month=month.month + 1)
    return day, month, next_month


@dataclass(slots=True)
class Crossing:
    """Thresholds reached by one counter (an organization's or a key's cap in one period, or a balance)."""

    organization: Organization
    kind: str
    period_start: datetime
    amount_micros: int
    limit_micros: int
    thresholds: list[int]
    key_id: int = 0
    subject: AlertSubject = field(init=False)

    def __post_init__(self) -> None:
        self.subject = AlertSubject(self.organization)


def _claim(crossing: Crossing, threshold: int) -> SpendAlert | None:
    """The alert's row, inserted by this process; None when another one (or an earlier check) has it."""
    try:
        with transaction.atomic():
            return SpendAlert.objects.create(
                organization=crossing.organization,
                key_id=crossing.key_id,
                kind=crossing.kind,
                threshold=threshold,
                period_start=crossing.period_start,
                amount_micros=crossing.amount_micros,
                limit_micros=crossing.limit_micros,
            )
    except IntegrityError:
        return None


def spend_crossings(organization_ids: Iterable[int], *, now: datetime) -> list[Crossing]:
    """Every threshold reached now by the organizations' caps, their keys' caps and their prepaid balances, sent or
    not. Two queries for organizations without caps; a few more per organization with some."""
    ids = {i for i in organization_ids if i}
    if not ids:
        return []
    day_start, month_start, month_end = period_starts(now)
    keys = list(
        ApiKey.objects.filter(organization_id__in=ids, revoked_at__isnull=True)
        .filter(Q(spend_cap_daily_micros__isnull=False) | Q(spend_cap_monthly_micros__isnull=False))
        .values_list("pk", "organization_id", "name", "prefix", "spend_cap_daily_micros", "spend_cap_monthly_micros")
    )
    keyed = {org_id for _, org_id, *_ in keys}
    low_balance = settings.PORTAL_LOW_BALANCE_ALERT_PERCENT > 0
    wanted = Q(spend_cap_daily_micros__isnull=False) | Q(spend_cap_monthly_micros__isnull=False) | Q(pk__in=keyed)
    if low_balance:
        wanted |= Q(plan__prepaid=True)
    orgs = {org.pk: org for org in Organization.objects.filter(pk__in=ids).filter(wanted).select_related("plan")}
    crossings: list[Crossing] = []
    for org in orgs.values():
        if org.spend_cap_daily_micros is not None or org.spend_cap_monthly_micros is not None:
            spent = LedgerEntry.objects.filter(
                organization=org, kind=LedgerEntry.Kind.DEBIT, created_at__gte=month_start, created_at__lt=month_end
            ).aggregate(
                month=Coalesce(Sum("amount_micros"), 0),
                day=Coalesce(Sum("amount_micros", filter=Q(created_at__gte=day_start)), 0),
            )
            for kind, start, cap, amount in (
                (SpendAlert.Kind.DAILY, day_start, org.spend_cap_daily_micros, -spent["day"]),
                (SpendAlert.Kind.MONTHLY, month_start, org.spend_cap_monthly_micros, -spent["month"]),
            ):
                if cap is not None and (reached := crossed_thresholds(amount, cap)):
                    crossings.append(Crossing(org, kind, start, amount, cap, reached))
        if low_balance and org.plan is not None and org.plan.prepaid:
            crossings.extend(_low_balance(org))
    if keys:
        spent_by_key = {
            row["api_key_id"]: row
            for row in UsageEvent.objects.filter(
                api_key_id__in=[key[0] for key in keys], created_at__gte=month_start, created_at__lt=month_end
            )
            .values("api_key_id")
            .annotate(
                month=Coalesce(Sum("cost_micros"), 0), day=Coalesce(Sum("cost_micros", filter=Q(created_at__gte=day_start)), 0)
            )
        }
        for key_id, org_id, name, prefix, daily_cap, monthly_cap in keys:
            row = spent_by_key.get(key_id)
            if row is None or org_id not in orgs:
                continue
            for kind, start, cap, amount in (
                (SpendAlert.Kind.DAILY, day_start, daily_cap, row["day"]),
                (SpendAlert.Kind.MONTHLY, month_start, monthly_cap, row["month"]),
            ):
                if cap is not None and (reached := crossed_thresholds(amount, cap)):
                    crossing = Crossing(orgs[org_id], kind, start, amount, cap, reached, key_id=key_id)
                    crossing.subject = AlertSubject(orgs[org_id], key_name=name, key_prefix=prefix)
                    crossings.append(crossing)
    return crossings


def _low_balance(org: Organization) -> list[Crossing]:
    top_up = LedgerEntry.objects.filter(organization=org, kind=LedgerEntry.Kind.CREDIT).order_by("-created_at", "-id").first()
    if top_up is None:
        return []  # nothing was ever paid in: there is no "low" to measure against
    percent = settings.PORTAL_LOW_BALANCE_ALERT_PERCENT
    balance = organization_balance(org.pk)
    if balance * 100 >= top_up.amount_micros * percent:
        return []
    return [Crossing(org, SpendAlert.Kind.LOW_BALANCE, top_up.created_at, balance, top_up.amount_micros, [percent])]


def spend_alerts_check(*, organization_ids: Iterable[int], now: datetime | None = None) -> list[SpendAlert]:
    """Claim the alerts the organizations have newly earned and deliver them; returns the ones this call sent.

    A threshold is claimed once per period whoever checks (the unique row). When one check finds several thresholds
    of a counter newly reached (a jump from 40% to 100%), all are claimed and only the highest is sent: one message,
    not three at once.
    """
    sent: list[SpendAlert] = []
    for crossing in spend_crossings(organization_ids, now=now or timezone.now()):
        # One transaction, lowest threshold first: a concurrent check of the same counter waits on the first row
        # until this one commits and then finds all of them taken, so two processes never split one jump (each
        # sending "its" highest).
        with transaction.atomic():
            claimed = [alert for threshold in sorted(crossing.thresholds) if (alert := _claim(crossing, threshold)) is not None]
        if not claimed:
            continue
        top = max(claimed, key=lambda alert: alert.threshold)
        for alert in claimed:
            if alert is not top:
                alert.email_status = alert.webhook_status = f"superseded by {top.threshold}%"
                alert.save(update_fields=["email_status", "webhook_status"])
        alert_deliver(top, crossing.subject)
        sent.append(top)
    return sent


class SpendAlertWorker:
    """A daemon thread that checks the organizations it is told about, at most once per interval, with its own
    database connection (closed after each round, so a pooled connection goes back at once). A round that fails
    (the database away) keeps its organizations for the round the next notification starts.

    It runs spend_alerts_check by default; `check` gives it another round of the same shape (portal/limit_mail.py's
    used-up allowances), `name` its thread's name and its log lines' words."""

    def __init__(self, check: Callable[..., object] | None = None, *, name: str = "spend alert") -> None:
        self._check = check
        self._name = name
        self._dirty: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0
        self.failures = 0
        self._checking = False

    def notify(self, organization_ids: Iterable[int]) -> None:
        """O(ids): what the usage writer calls after its batch commits."""
        ids = {i for i in organization_ids if i}
        if not ids:
            return
        with self._lock:
            self._dirty |= ids
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name.replace(" ", "-") + "s", daemon=True)
                self._thread.start()
        self._wake.set()

    @property
    def idle(self) -> bool:
        """Nothing waiting and no round under way (tests wait for this before emptying the database)."""
        with self._lock:
            return not self._dirty and not self._checking

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            self.run_once()
            time.sleep(settings.PORTAL_SPEND_ALERT_INTERVAL_S)

    def run_once(self) -> None:
        with self._lock:
            ids, self._dirty = self._dirty, set()
            self._checking = bool(ids)
        if not ids:
            return
        close_old_connections()
        try:
            # Looked up at each round (not bound at construction): a test may replace the module's function.
            (self._check or spend_alerts_check)(organization_ids=ids)
        except Exception as exc:
            self.failures += 1
            log.error(
                "%s check failed for %d organization(s), kept for the round the next batch starts: %s",
                self._name,
                len(ids),
                exc.__class__.__name__,
            )
            # Not woken again: with the database away, a retry loop would only log; the next batch (or the cron
            # command) brings the round back.
            with self._lock:
                self._dirty |= ids
        finally:
            self.rounds += 1
            connection.close()
            with self._lock:
                self._checking = False


spend_alert_worker = SpendAlertWorker()
