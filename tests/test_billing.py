"""The billing ledger: prices, usage debits written with their events, staff credits, balances and daily rollups."""

from __future__ import annotations

import math
import random
import threading
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client

from accounts.models import Organization, User
from billing.models import ClosedBillingDay, LedgerEntry, ModelPrice, Plan, UsageDailyRollup
from billing.selectors import organization_balance, period_totals, price_in, price_table
from billing.services import (
    BILLABLE_STATUSES,
    ERROR_STATUS,
    NotAManualEntry,
    ledger_debits_for_usage,
    ledger_entry_add,
    organization_create,
    plans_seed_defaults,
    request_cost_micros,
    usage_cost_micros,
)
from usage.models import UsageEvent
from usage.services import RequestLogRecord, UsageRecord, usage_record_batch

SMALL = "oss-20b"
LARGE = "big-70b"
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def make_org(slug: str, plan: str | None = "free") -> Organization:
    plans_seed_defaults()  # a transactional test starts from an emptied database, without the seeded plans
    org = organization_create(slug=slug, name=slug.title(), plan_slug=plan)
    if plan is None:
        org.plan = None
        org.save(update_fields=["plan"])
    return org


def price(alias: str, input_micros: int, output_micros: int, plan: str | None = None) -> ModelPrice:
    # update_or_create: an alias that exists has had its default price since it was created (billing.signals).
    return ModelPrice.objects.update_or_create(
        alias=alias,
        plan=Plan.objects.get(slug=plan) if plan else None,
        defaults={"input_micros_per_million": input_micros, "output_micros_per_million": output_micros},
    )[0]


def usage(
    request_id: str,
    org: Organization | None,
    *,
    alias: str = SMALL,
    status: str = "ok",
    prompt: int = 0,
    completion: int = 0,
    at: datetime = T0,
) -> UsageRecord:
    """A usage row priced as the gateway prices it (gateway/pipeline.py): the price table in force, the plan's row
    first, at the moment the row is made; the debit then bills exactly that cost."""
    cost = usage_cost_micros(
        organization_id=org.pk if org else None,
        status=status,
        prompt_tokens=prompt,
        completion_tokens=completion,
        price=price_in(price_table(), org.plan_id if org else None, alias),
    )
    return UsageRecord(
        request_id=request_id,
        organization_id=org.pk if org else None,
        api_key_id=None,
        alias=alias,
        route="chat.completions",
        status=status,
        http_status={"ok": 200, "cancelled": 499, "error": 502}[status],
        created_at=at,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cost_micros=cost,
    )


def expected_cost(prompt: int, completion: int, input_micros: int, output_micros: int) -> int:
    # Written independently of the implementation: exact rational arithmetic, then the ceiling.
    return math.ceil(Fraction(prompt * input_micros + completion * output_micros, 1_000_000))


def debits() -> dict[str, int]:
    return dict(LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEBIT).values_list("request_id", "amount_micros"))


# --- the cost formula --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "completion", "input_micros", "output_micros", "cost"),
    [
        (0, 0, 2_500_000, 10_000_000, 0),
        (1_000_000, 0, 2_500_000, 10_000_000, 2_500_000),  # a million tokens cost the listed price
        (1_000, 500, 3_000_000, 15_000_000, 10_500),  # 3_000_000_000 + 7_500_000_000, divides exactly
        (1, 0, 1, 0, 1),  # a millionth of a micro-unit is billed as one micro-unit
        (333, 0, 1_000_001, 0, 334),  # 333.000333 rounds up
        (999_999, 1, 1, 0, 1),  # 0.999999 rounds up; the free output adds nothing
        (7, 3, 1_234_567, 7_654_321, 32),  # 8_641_969 + 22_962_963 = 31_604_932 -> 31.6 -> 32
        (2**53 + 1, 0, 1_000_000, 0, 9_007_199_254_740_993),  # a float would say ...992
        (2**53 + 1, 0, 1_000_001, 0, 9_007_208_261_940_248),
        (4_000_000_000, 4_000_000_000, 987_654_321_987, 123_456_789_123, 4_444_444_444_440_000),
    ],
)
def test_request_cost_is_the_ceiling_in_integer_micro_units(
    prompt: int, completion: int, input_micros: int, output_micros: int, cost: int
) -> None:
    got = request_cost_micros(
        prompt_tokens=prompt,
        completion_tokens=completion,
        input_micros_per_million=input_micros,
        output_micros_per_million=output_micros,
    )
    assert got == cost
    assert type(got) is int
    assert got == expected_cost(prompt, completion, input_micros, output_micros)


# --- prices -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_plan_price_overrides_the_alias_wide_price() -> None:
    free_org, pro_org, planless = make_org("free-co"), make_org("pro-co", plan="pro"), make_org("planless", plan=None)
    price(SMALL, 2_000_000, 8_000_000)
    price(SMALL, 1_000_000, 4_000_000, plan="pro")
    price(LARGE, 10_000_000, 30_000_000, plan="free")  # only free has a price for the large alias
    usage_record_batch(
        usage=[
            usage("free-small", free_org, prompt=1_000, completion=100),
            usage("pro-small", pro_org, prompt=1_000, completion=100),
            usage("planless-small", planless, prompt=1_000, completion=100),
            usage("free-large", free_org, alias=LARGE, prompt=1_000, completion=100),
            usage("pro-large", pro_org, alias=LARGE, prompt=1_000, completion=100),
        ],
        logs=[],
    )
    assert debits() == {
        "free-small": -2_800,  # 2_000_000_000 + 800_000_000
        "pro-small": -1_400,  # the pro override: 1_000_000_000 + 400_000_000
        "planless-small": -2_800,
        "free-large": -13_000,
        "pro-large": 0,  # no price for pro and no alias-wide row: recorded, billed nothing
    }


@pytest.mark.django_db
def test_a_batch_costs_one_query_and_one_insert_whatever_its_size(django_assert_num_queries) -> None:  # noqa: ANN001
    orgs = [make_org(f"org-{n}", plan=("pro" if n % 2 else "free")) for n in range(5)]
    price(SMALL, 2_000_000, 8_000_000)
    price(SMALL, 1_000_000, 4_000_000, plan="pro")
    price(LARGE, 9_000_000, 9_000_000)
    rows = [usage(f"r{n}", orgs[n % 5], alias=(SMALL, LARGE)[n % 2], prompt=n + 1, completion=2 * n) for n in range(300)]
    # The organizations that still exist, then the INSERT (no pricing: the rows carry their cost): one statement on
    # PostgreSQL; SQLite's bound-parameter limit makes Django split it into batches.
    fields = [f for f in LedgerEntry._meta.concrete_fields if not f.primary_key]
    inserts = math.ceil(300 / connection.ops.bulk_batch_size(fields, rows)) if connection.vendor == "sqlite" else 1
    with django_assert_num_queries(1 + inserts):
        assert ledger_debits_for_usage(rows=rows) == 300
    assert LedgerEntry.objects.filter(kind="debit").count() == 300


# --- debits written with usage ------------------------------------------------------------------


@pytest.mark.django_db
def test_usage_batch_debits_each_request_that_used_tokens_once() -> None:
    org = make_org("acme")
    price(SMALL, 2_000_000, 8_000_000)
    batch = [
        usage("ok-1", org, prompt=120, completion=30),  # 240_000_000 + 240_000_000 -> 480
        usage("ok-2", org, prompt=1, completion=0),  # 2 micro-units exactly
        usage("cancelled-1", org, status="cancelled", prompt=500, completion=3),  # 1_000_000_000 + 24_000_000 -> 1_024
        usage("ok-no-tokens", org),  # nothing to bill
        usage("error-1", org, status="error"),
        usage("error-with-tokens", org, status="error", prompt=50, completion=0),  # delivered nothing: not billed
        usage("error-delivered", org, status="error", prompt=10, completion=4),  # failed mid-stream: 20 + 32 -> 52
    ]
    logs = [
        RequestLogRecord(
            request_id=u.request_id,
            method="POST",
            path="/v1/chat/completions",
            status=u.http_status,
            created_at=u.created_at,
            organization_id=org.pk,
        )
        for u in batch
    ]

    usage_record_batch(usage=batch, logs=logs)
    expected = {"ok-1": -480, "ok-2": -2, "cancelled-1": -1_024, "error-delivered": -52}
    assert debits() == expected
    first_ids = sorted(LedgerEntry.objects.values_list("pk", flat=True))

    usage_record_batch(usage=batch, logs=logs)  # the recorder retrying a batch it thinks failed
    assert debits() == expected
    assert sorted(LedgerEntry.objects.values_list("pk", flat=True)) == first_ids
    assert UsageEvent.objects.count() == 7
    entry = LedgerEntry.objects.get(request_id="cancelled-1")
    assert (entry.organization_id, entry.alias, entry.input_tokens, entry.output_tokens, entry.created_at) == (
        org.pk,
        SMALL,
        500,
        3,
        T0,
    )
    assert organization_balance(org.pk) == -1_558


@pytest.mark.django_db(transaction=True)  # foreign keys are checked at commit: the batch must really commit
def test_a_batch_with_a_deleted_organization_bills_the_others_and_skips_it() -> None:
    kept, gone = make_org("kept"), make_org("gone")
    price(SMALL, 1_000_000, 1_000_000)
    batch = [usage("kept-1", kept, prompt=10, completion=10), usage("gone-1", gone, prompt=10, completion=10)]
    Organization.objects.filter(pk=gone.pk).delete()  # deleted while its rows waited in the queue

    usage_record_batch(usage=batch, logs=[])  # the bulk insert fails; the row-by-row fallback writes
    assert debits() == {"kept-1": -20}
    assert dict(UsageEvent.objects.values_list("request_id", "organization_id")) == {"kept-1": kept.pk, "gone-1": None}
    usage_record_batch(usage=batch, logs=[])
    assert debits() == {"kept-1": -20}


@pytest.mark.django_db(transaction=True)
def test_overlapping_batches_from_eight_threads_debit_each_request_exactly_once() -> None:
    orgs = [make_org("alpha"), make_org("beta", plan="pro")]
    prices = {
        (None, SMALL): (1_234_567, 7_654_321),
        ("pro", SMALL): (1_000_003, 2_000_003),
        (None, LARGE): (9_999_999, 29_999_999),
    }
    for (plan, alias), (input_micros, output_micros) in prices.items():
        price(alias, input_micros, output_micros, plan=plan)
    rng = random.Random(20261126)
    records = []
    expected_total = 0
    for n in range(200):
        org = orgs[n % 2]
        alias = SMALL if n % 3 else LARGE
        prompt, completion = rng.randint(1, 50_000), rng.randint(0, 8_000)
        records.append(
            usage(
                f"req-{n:04d}",
                org,
                alias=alias,
                prompt=prompt,
                completion=completion,
                status="cancelled" if n % 7 == 0 else "ok",
                at=T0 + timedelta(seconds=n),
            )
        )
        plan = "pro" if org.slug == "beta" else None
        input_micros, output_micros = prices.get((plan, alias)) or prices[(None, alias)]
        expected_total += expected_cost(prompt, completion, input_micros, output_micros)

    # Two passes over the shuffled records, each cut into eight batches of 25; the second pass is
    # shifted by 12, so each of its batches straddles two batches of the first. Every record is in
    # exactly two batches, held by two different threads that run at the same time.
    order = rng.sample(records, 200)
    shifted = order[12:] + order[:12]
    first = [order[n * 25 : (n + 1) * 25] for n in range(8)]
    second = [shifted[n * 25 : (n + 1) * 25] for n in range(8)]
    per_thread = [[first[n], second[(n + 3) % 8]][:: 1 if n % 2 else -1] for n in range(8)]
    for own in per_thread:
        assert not {r.request_id for r in own[0]} & {r.request_id for r in own[1]}
    assert sorted(r.request_id for own in per_thread for batch in own for r in batch) == sorted(
        [r.request_id for r in records] * 2
    )
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def write(own: list[list[UsageRecord]]) -> None:
        try:
            start.wait()
            for batch in own:
                # In request-id order: usage_record_batch inserts events in the order given, and two
                # overlapping batches in different orders can deadlock on the events' unique index
                # (PostgreSQL aborts one; the gateway's recorder would retry it). Debits are sorted
                # by ledger_debits_for_usage itself.
                usage_record_batch(usage=sorted(batch, key=lambda r: r.request_id), logs=[])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(own,)) for own in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert UsageEvent.objects.count() == 200
    assert LedgerEntry.objects.filter(kind="debit").count() == 200
    assert sorted(debits()) == sorted(r.request_id for r in records)
    assert organization_balance(orgs[0].pk) + organization_balance(orgs[1].pk) == -expected_total
    assert sum(period_totals(org.pk, T0.date(), T0.date() + timedelta(days=1)).debits_micros for org in orgs) == -expected_total


# --- credits, adjustments, balances -------------------------------------------------------------


@pytest.mark.django_db
def test_credits_and_adjustments_move_the_balance() -> None:
    org, other = make_org("acme"), make_org("other")
    staff = User.objects.create_superuser(email="ops@example.com", password="x")
    price(SMALL, 2_000_000, 8_000_000)
    usage_record_batch(usage=[usage("r1", org, prompt=1_000, completion=250), usage("r2", other, prompt=10)], logs=[])
    assert organization_balance(org.pk) == -4_000
    assert organization_balance(other.pk) == -20

    ledger_entry_add(organization=org, kind="credit", amount_micros=25_000_000, memo="prepaid", created_by=staff)
    assert organization_balance(org.pk) == 24_996_000
    ledger_entry_add(organization=org, kind="adjustment", amount_micros=-1_500_000, memo="refund reversal")
    ledger_entry_add(organization=org, kind="adjustment", amount_micros=3, memo="rounding goodwill")
    assert organization_balance(org.pk) == 23_496_003
    assert organization_balance(other.pk) == -20
    assert organization_balance(Organization.objects.create(slug="empty", name="Empty").pk) == 0

    with pytest.raises(NotAManualEntry):
        ledger_entry_add(organization=org, kind="debit", amount_micros=-5)
    with pytest.raises(ValidationError):
        ledger_entry_add(organization=org, kind="credit", amount_micros=-5)
    with pytest.raises(ValidationError):
        ledger_entry_add(organization=org, kind="adjustment", amount_micros=0)
    assert organization_balance(org.pk) == 23_496_003

    # All of it happened now; the usage is dated T0, months before.
    now = datetime.now(UTC)
    recent = period_totals(org.pk, now - timedelta(hours=1), now + timedelta(hours=1))
    assert (recent.debits_micros, recent.credits_micros, recent.adjustments_micros, recent.net_micros) == (
        0,
        25_000_000,
        -1_499_997,
        23_500_003,
    )
    at_t0 = period_totals(org.pk, T0.date(), T0.date() + timedelta(days=1))
    assert (at_t0.debits_micros, at_t0.billed_requests, at_t0.input_tokens, at_t0.output_tokens, at_t0.net_micros) == (
        -4_000,
        1,
        1_000,
        250,
        -4_000,
    )


# --- closing days -------------------------------------------------------------------------------


ROLLUP_FIELDS = [
    "organization__slug",
    "day",
    "alias",
    "requests",
    "ok_requests",
    "error_requests",
    "cancelled_requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_micros",
]


@pytest.mark.django_db
def test_close_billing_period_rolls_a_day_up_exactly_and_again_identically() -> None:
    acme, beta = make_org("acme"), make_org("beta", plan="pro")
    price(SMALL, 1_234_567, 7_654_321)
    price(LARGE, 10_000_000, 30_000_000)
    price(LARGE, 5_000_000, 15_000_000, plan="pro")
    day = date(2026, 3, 10)
    at = datetime(2026, 3, 10, 0, 0, tzinfo=UTC)
    gone = make_org("gone")
    usage_record_batch(
        usage=[
            # 123_456_700 + 382_716_050 -> 507; 1_234_567_000 + 15_308_642_000 -> 16_544; 370_370_100 + 53_580_247 -> 424
            usage("a1", acme, prompt=100, completion=50, at=at),
            usage("a2", acme, prompt=1_000, completion=2_000, at=at + timedelta(hours=5)),
            usage("a3", acme, status="cancelled", prompt=300, completion=7, at=at + timedelta(hours=9)),
            usage("a4", acme, status="error", at=at + timedelta(hours=10)),
            usage("a5", acme, status="error", prompt=40, at=at + timedelta(hours=11)),  # tokens, but an error: unbilled
            usage("a6", acme, alias=LARGE, prompt=10, completion=10, at=at + timedelta(hours=12)),  # 100 + 300 = 400
            usage("a7", acme, alias=LARGE, status="error", at=at + timedelta(hours=23, minutes=59, seconds=59)),
            usage("b1", beta, alias=LARGE, prompt=7, completion=1, at=at + timedelta(hours=3)),  # pro: 35 + 15 = 50
            usage("b2", beta, alias=LARGE, status="cancelled", prompt=1, at=at + timedelta(hours=4)),  # 5_000_000 -> 5
            # Outside the day by a microsecond either side, and a row whose organization is gone.
            usage("before", acme, prompt=1_000_000, completion=1_000_000, at=at - timedelta(microseconds=1)),
            usage("after", acme, prompt=1_000_000, completion=1_000_000, at=at + timedelta(days=1)),
            _detached(usage("orphan", gone, prompt=9, completion=9, at=at + timedelta(hours=1))),
        ],
        logs=[],
    )
    expected = [
        ("acme", day, LARGE, 2, 1, 1, 0, 10, 10, 20, 400),
        ("acme", day, SMALL, 5, 2, 2, 1, 1_440, 2_057, 3_497, 507 + 16_544 + 424),
        ("beta", day, LARGE, 2, 1, 0, 1, 8, 1, 9, 55),
    ]

    out = StringIO()
    call_command("close_billing_period", "--date", "2026-03-10", stdout=out)
    assert out.getvalue() == "closed 2026-03-10: 3 rollup rows\n"
    rows = list(UsageDailyRollup.objects.order_by("organization__slug", "alias").values_list(*ROLLUP_FIELDS))
    assert rows == expected
    first_ids = list(UsageDailyRollup.objects.order_by("pk").values_list("pk", flat=True))
    assert list(ClosedBillingDay.objects.values_list("day", "rollup_rows")) == [(day, 3)]

    call_command("close_billing_period", "--date", "2026-03-10", stdout=StringIO())
    assert list(UsageDailyRollup.objects.order_by("organization__slug", "alias").values_list(*ROLLUP_FIELDS)) == expected
    assert list(UsageDailyRollup.objects.order_by("pk").values_list("pk", flat=True)) == first_ids  # upserted in place
    assert ClosedBillingDay.objects.count() == 1
    # The rollup's cost is the ledger's, to the micro-unit.
    assert -period_totals(acme.pk, day, day + timedelta(days=1)).debits_micros == 400 + 507 + 16_544 + 424


def _detached(record: UsageRecord) -> UsageRecord:
    """A usage row whose organization was deleted before it was written (the recorder detaches it)."""
    record.organization_id = None
    record.api_key_id = None
    return record


@pytest.mark.django_db
def test_close_billing_period_by_default_closes_each_past_day_not_closed_yet() -> None:
    acme = make_org("acme")
    price(SMALL, 1_000_000, 1_000_000)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    usage_record_batch(
        usage=[
            usage("old", acme, prompt=3, completion=4, at=today - timedelta(days=3, hours=-1)),
            usage("yesterday", acme, prompt=1, completion=1, at=today - timedelta(minutes=1)),
            usage("today", acme, prompt=5, completion=5, at=today + timedelta(minutes=1)),
        ],
        logs=[],
    )
    day = today.date()

    out = StringIO()
    call_command("close_billing_period", stdout=out)
    assert out.getvalue().splitlines() == [
        f"closed {day - timedelta(days=3)}: 1 rollup rows",
        f"closed {day - timedelta(days=2)}: 0 rollup rows",  # a day without usage is closed all the same
        f"closed {day - timedelta(days=1)}: 1 rollup rows",
    ]
    assert list(UsageDailyRollup.objects.order_by("day").values_list("day", "requests", "total_tokens", "cost_micros")) == [
        (day - timedelta(days=3), 1, 7, 7),
        (day - timedelta(days=1), 1, 2, 2),
    ]
    assert sorted(ClosedBillingDay.objects.values_list("day", flat=True)) == [day - timedelta(days=n) for n in (3, 2, 1)]

    out = StringIO()
    call_command("close_billing_period", stdout=out)
    assert out.getvalue() == "nothing to close\n"
    with pytest.raises(CommandError, match="has not ended yet"):
        call_command("close_billing_period", "--date", day.isoformat(), stdout=StringIO())


# --- the admin ----------------------------------------------------------------------------------


@pytest.fixture
def staff_client(db) -> tuple[Client, User]:  # noqa: ANN001
    user = User.objects.create_superuser(email="staff@example.com", password="x")
    client = Client()
    client.force_login(user)
    return client, user


@pytest.mark.django_db
def test_staff_add_a_credit_in_the_admin_signed_by_them(staff_client: tuple[Client, User]) -> None:
    client, staff = staff_client
    org = make_org("acme")
    response = client.post(
        "/admin/billing/ledgerentry/add/",
        {"organization": org.pk, "kind": "credit", "amount_micros": "12500000", "memo": "welcome credit"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = LedgerEntry.objects.get()
    assert (entry.organization_id, entry.kind, entry.amount_micros, entry.memo, entry.created_by_id) == (
        org.pk,
        "credit",
        12_500_000,
        "welcome credit",
        staff.pk,
    )
    assert organization_balance(org.pk) == 12_500_000

    response = client.post(
        "/admin/billing/ledgerentry/add/", {"organization": org.pk, "kind": "debit", "amount_micros": "-5", "memo": ""}
    )
    assert response.status_code == 200  # the form again, with the error
    assert "Select a valid choice" in response.content.decode()
    response = client.post(
        "/admin/billing/ledgerentry/add/", {"organization": org.pk, "kind": "credit", "amount_micros": "-5", "memo": ""}
    )
    assert response.status_code == 200
    assert LedgerEntry.objects.count() == 1
    assert client.get("/admin/billing/ledgerentry/").status_code == 200


@pytest.mark.django_db
def test_the_admin_shows_a_debit_but_cannot_change_or_delete_it(staff_client: tuple[Client, User]) -> None:
    client, _ = staff_client
    org = make_org("acme")
    price(SMALL, 1_000_000, 1_000_000)
    usage_record_batch(usage=[usage("r1", org, prompt=10, completion=5)], logs=[])
    debit = LedgerEntry.objects.get(request_id="r1")
    url = f"/admin/billing/ledgerentry/{debit.pk}/change/"

    page = client.get(url)
    assert page.status_code == 200
    assert 'name="amount_micros"' not in page.content.decode()  # shown read-only, no input
    response = client.post(url, {"organization": org.pk, "kind": "credit", "amount_micros": "1000000", "memo": "free"})
    assert response.status_code == 403
    assert client.post(f"/admin/billing/ledgerentry/{debit.pk}/delete/", {"post": "yes"}).status_code == 403
    debit.refresh_from_db()
    assert (debit.kind, debit.amount_micros, debit.memo) == ("debit", -15, "")
    assert organization_balance(org.pk) == -15


def test_billing_names_the_usage_statuses_as_usage_defines_them() -> None:
    # billing sits below usage and spells the statuses out instead of importing UsageEvent: held together here.
    assert BILLABLE_STATUSES == {UsageEvent.Status.OK.value, UsageEvent.Status.CANCELLED.value}
    assert ERROR_STATUS == UsageEvent.Status.ERROR.value
