"""The billing page: exact balances, totals and allowances on a frozen clock, the 80% warning, money formatting,
who sees what, the limiter's own counters and windows, a busy ledger at a bounded query count, and the read-only
invitation admin."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import gateway.limits
from accounts.models import Invitation, Membership, User
from billing.models import LedgerEntry, ModelPrice, Plan
from billing.money import format_micros_cents, format_micros_exact, round_micros_to_cents
from billing.selectors import plan_next_up, plan_record
from gateway.errors import QuotaExceeded
from gateway.limits import WEEKLY, WINDOW, Limiter
from gateway.principal import Principal
from portal.allowances import allowances_for, duration_words, window_adjective
from tests.support.live import REDIS_FOR_TESTS
from tests.support.portal import Team, add_member, ensure_site_and_plans, make_team, portal_settings  # noqa: F401
from usage.models import UsageEvent

# A Wednesday, half-way through the 12:00–15:00 window of the free plan's 3-hour allowance.
FROZEN = datetime(2026, 3, 4, 13, 30, tzinfo=UTC)
WINDOW_START = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
WINDOW_RESET = datetime(2026, 3, 4, 15, 0, tzinfo=UTC)
WEEK_START = datetime(2026, 3, 2, tzinfo=UTC)  # Monday
WEEK_RESET = datetime(2026, 3, 9, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """timezone.now() frozen (the page's clock; model defaults keep the real one, so rows here name their time)."""
    frozen = Clock(FROZEN)
    monkeypatch.setattr(timezone, "now", frozen)
    return frozen


@pytest.fixture(autouse=True)
def counted_from_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process-wide limiter without Redis: allowances are counted from usage rows, unless a test says otherwise."""
    monkeypatch.setattr(gateway.limits.limiter, "redis_url", None)


@pytest.fixture
def team(db, portal_settings) -> Team:  # noqa: ANN001, F811
    ensure_site_and_plans()
    return make_team()


_serial = iter(range(1, 10**9))


def usage(org, when: datetime, *, status: str = "ok", http_status: int = 200, error_code: str = "") -> UsageEvent:  # noqa: ANN001
    return UsageEvent(
        request_id=f"req_{uuid.uuid4().hex[:8]}_{next(_serial)}",
        organization=org,
        alias="oss-20b",
        route="chat.completions",
        status=status,
        http_status=http_status,
        error_code=error_code,
        prompt_tokens=3,
        completion_tokens=4,
        total_tokens=7,
        created_at=when,
    )


def entry(org, when: datetime, kind: str, amount: int, *, memo: str = "", request_id: str = "", tokens: tuple[int, int] = (0, 0)):  # noqa: ANN001, ANN201
    return LedgerEntry(
        organization=org,
        kind=kind,
        amount_micros=amount,
        memo=memo,
        request_id=request_id,
        alias="oss-20b" if kind == "debit" else "",
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        created_at=when,
    )


@pytest.fixture
def known_ledger(team: Team) -> None:
    """Six acme entries (one in February) and globex noise; balances worked out by hand in the tests."""
    acme = team.acme
    LedgerEntry.objects.bulk_create(
        [
            entry(acme, datetime(2026, 2, 20, 10, tzinfo=UTC), "credit", 10_000_000, memo="Welcome credit"),
            entry(acme, datetime(2026, 3, 1, 9, tzinfo=UTC), "debit", -1_234_567, request_id="req_a", tokens=(1000, 2000)),
            entry(acme, datetime(2026, 3, 3, 12, tzinfo=UTC), "debit", -5, request_id="req_b", tokens=(2, 1)),
            entry(acme, datetime(2026, 3, 3, 13, tzinfo=UTC), "adjustment", -500_000, memo="Correction of a double credit"),
            entry(acme, datetime(2026, 3, 4, 8, tzinfo=UTC), "credit", 2_500_000, memo="Top-up"),
            entry(acme, datetime(2026, 3, 4, 13, tzinfo=UTC), "debit", -37, request_id="req_c", tokens=(12, 7)),
            entry(team.globex, datetime(2026, 3, 2, tzinfo=UTC), "credit", 99_000_000, memo="globex money"),
        ]
    )


@pytest.fixture
def known_usage(team: Team) -> None:
    """acme: 5 admitted requests in the current window, 2 more earlier this week, 2 refused by the limiter, 1 last week."""
    acme = team.acme
    UsageEvent.objects.bulk_create(
        [
            usage(acme, WINDOW_START),  # the window's first instant belongs to it
            usage(acme, datetime(2026, 3, 4, 12, 59, tzinfo=UTC)),
            usage(acme, FROZEN - timedelta(seconds=1)),
            usage(acme, datetime(2026, 3, 4, 13, tzinfo=UTC), status="error", http_status=502, error_code="upstream_error"),
            usage(acme, datetime(2026, 3, 4, 13, 10, tzinfo=UTC), status="cancelled", http_status=499),
            # Refused by the limiter: recorded, never counted.
            usage(
                acme, datetime(2026, 3, 4, 13, 15, tzinfo=UTC), status="error", http_status=429, error_code="rate_limit_exceeded"
            ),
            usage(
                acme, datetime(2026, 3, 4, 13, 16, tzinfo=UTC), status="error", http_status=429, error_code="insufficient_quota"
            ),
            usage(acme, WINDOW_START - timedelta(seconds=1)),  # the window before: this week only
            usage(acme, WEEK_START),  # the week's first instant
            usage(acme, WEEK_START - timedelta(seconds=1)),  # last week
            usage(team.globex, datetime(2026, 3, 4, 13, tzinfo=UTC)),
        ]
    )


def page(client: Client, query: str = "") -> tuple[int, str, object]:
    response = client.get(f"/portal/billing{query}")
    return response.status_code, response.content.decode(), response.context


def text_of(fragment: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", "", fragment).split())


def alerts(html: str) -> list[str]:
    return [text_of(a) for a in re.findall(r'<div class="alert [^"]*allowance-alert"[^>]*>(.*?)</div>', html, re.S)]


def main_of(html: str) -> str:
    return html[html.index("<main") : html.index("</main>")]


# --- Exact numbers ------------------------------------------------------------------------------------------------


def test_balance_month_totals_and_running_balance_are_exact(team: Team, known_ledger: None, clock: Clock) -> None:
    status, html, context = page(team.client(team.member))
    assert status == 200
    assert context["balance"] == 10_765_391
    month = context["month"]
    assert (month.debits_micros, month.credits_micros, month.adjustments_micros, month.net_micros) == (
        -1_234_609,
        2_500_000,
        -500_000,
        765_391,
    )
    assert (month.billed_requests, month.input_tokens, month.output_tokens) == (3, 1014, 2008)
    assert 'id="kpi-balance" title="$10.765391">$10.77<' in html
    assert "available · exactly $10.765391" in html
    assert 'id="kpi-month-usage" title="$1.234609">$1.23<' in html and "3 billed requests · exactly $1.234609" in html
    assert 'id="kpi-month-credits" title="$2.00">$2.00<' in html and "adjustments -$0.50" in html
    assert "Usage in March" in html

    rows = re.findall(r'<tr data-entry="\d+"[^>]*>(.*?)</tr>', html, re.S)
    cells = [
        [" ".join(re.sub(r"<[^>]+>", " ", c).split()) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)] for row in rows
    ]
    assert cells == [
        ["Mar 4, 13:00:00", "usage", "oss-20b req_c", "12 / 7", "-$0.000037", "$10.765391"],
        ["Mar 4, 08:00:00", "credit", "Top-up", "—", "$2.500000", "$10.765428"],
        ["Mar 3, 13:00:00", "adjustment", "Correction of a double credit", "—", "-$0.500000", "$8.265428"],
        ["Mar 3, 12:00:00", "usage", "oss-20b req_b", "2 / 1", "-$0.000005", "$8.765428"],
        ["Mar 1, 09:00:00", "usage", "oss-20b req_a", "1,000 / 2,000", "-$1.234567", "$8.765433"],
        ["Feb 20, 10:00:00", "credit", "Welcome credit", "—", "$10.000000", "$10.000000"],
    ]
    assert '6 entries · balance <strong class="mono">$10.765391</strong>' in html
    assert "globex money" not in html


def test_a_negative_balance_reads_as_owed(team: Team, clock: Clock) -> None:
    LedgerEntry.objects.create(
        **{
            "organization": team.acme,
            "kind": "debit",
            "amount_micros": -4_999,
            "request_id": "req_x",
            "created_at": datetime(2026, 3, 4, 9, tzinfo=UTC),
        }
    )
    _, html, context = page(team.client(team.owner))
    assert context["balance"] == -4_999
    # Rounds to no cents at all: no sign on "$0.00", the exact amount next to it.
    assert 'id="kpi-balance" title="-$0.004999">$0.00<' in html and "owed · exactly -$0.004999" in html


def test_allowances_count_admitted_requests_in_the_limiters_windows(team: Team, known_usage: None, clock: Clock) -> None:
    _, html, context = page(team.client(team.member))
    window, week = context["allowances"]
    assert (window.kind, window.title, window.used, window.limit, window.percent) == (WINDOW, "3-hour window", 5, 100, 5)
    assert (window.starts_at, window.resets_at, window.resets_in, window.counted_by) == (
        WINDOW_START,
        WINDOW_RESET,
        "1 h 30 min",
        "usage",
    )
    assert (week.kind, week.title, week.used, week.limit, week.percent) == (WEEKLY, "This week", 7, 1000, 0)
    assert (week.starts_at, week.resets_at, week.resets_in) == (WEEK_START, WEEK_RESET, "4 d 10 h")
    feet = [text_of(f) for f in re.findall(r'<div class="allowance-foot">(.*?)</div>', html, re.S)]
    assert feet == ["5% used resets Wed, Mar 4, 15:00 UTC · in 1 h 30 min", "0% used resets Mon, Mar 9, 00:00 UTC · in 4 d 10 h"]
    assert '<time datetime="2026-03-04T15:00:00+00:00" class="allowance-reset">' in html
    assert '<strong class="allowance-used">5</strong> / <span class="allowance-limit">100</span>' in html
    assert "allowance-alert" not in html


def test_window_and_week_boundaries_match_the_limiter(team: Team) -> None:
    free = Plan.objects.get(slug="free")
    # The last second of a week and the first of the next.
    sunday = allowances_for(team.acme.pk, free, now=datetime(2026, 3, 8, 23, 59, 59, tzinfo=UTC))
    monday = allowances_for(team.acme.pk, free, now=datetime(2026, 3, 9, tzinfo=UTC))
    assert [(a.starts_at, a.resets_at, a.resets_in) for a in sunday] == [
        (datetime(2026, 3, 8, 21, tzinfo=UTC), datetime(2026, 3, 9, tzinfo=UTC), "1 s"),
        (WEEK_START, WEEK_RESET, "1 s"),
    ]
    assert [(a.starts_at, a.resets_at) for a in monday] == [
        (datetime(2026, 3, 9, tzinfo=UTC), datetime(2026, 3, 9, 3, tzinfo=UTC)),
        (WEEK_RESET, datetime(2026, 3, 16, tzinfo=UTC)),
    ]
    # A window that does not divide a day is still aligned to its multiples since the epoch, as the limiter keys it.
    odd = Plan.objects.create(slug="odd", name="Odd", window_requests=10, window_seconds=7000, weekly_requests=None)
    now = datetime(2026, 3, 4, 13, 30, tzinfo=UTC)
    (only,) = allowances_for(team.acme.pk, odd, now=now)
    start = int(now.timestamp()) // 7000 * 7000
    assert (only.starts_at.timestamp(), only.resets_at.timestamp(), only.title) == (start, start + 7000, "7000-second window")


def test_a_plan_without_allowances_shows_only_its_rates(team: Team, clock: Clock) -> None:
    team.acme.plan = Plan.objects.get(slug="pro")
    team.acme.save()
    _, html, context = page(team.client(team.owner))
    assert context["allowances"] == []
    assert "Pro has no request allowance: only the rates below apply." in html
    assert "<dt>Tokens per minute</dt><dd>1,000,000</dd>" in html


# --- The warning ----------------------------------------------------------------------------------------------


def test_warning_appears_at_80_percent_and_goes_when_the_window_resets(team: Team, clock: Clock) -> None:
    client = team.client(team.member)
    UsageEvent.objects.bulk_create([usage(team.acme, WINDOW_START + timedelta(seconds=i)) for i in range(79)])
    _, html, context = page(client)
    assert context["allowances"][0].percent == 79 and context["warnings"] == []
    assert "allowance-alert" not in html and "is-near" not in html

    UsageEvent.objects.bulk_create([usage(team.acme, WINDOW_START + timedelta(minutes=5))])
    _, html, context = page(client)
    assert [w.kind for w in context["warnings"]] == [WINDOW]
    assert alerts(html) == [
        "You have used 80% of your 3-hour request allowance (80 of 100 requests). "
        "It resets at 15:00 UTC on Wed, Mar 4, in 1 h 30 min. See what Pro changes."
    ]
    assert 'class="meter is-high"' in html

    # At the limit: refused until the reset, and said so.
    UsageEvent.objects.bulk_create([usage(team.acme, WINDOW_START + timedelta(minutes=6, seconds=i)) for i in range(20)])
    _, html, _ = page(client)
    assert alerts(html) == [
        "Your 3-hour request allowance is used up (100 of 100 requests). New requests are refused with insufficient_quota "
        "until it resets at 15:00 UTC on Wed, Mar 4, in 1 h 30 min. See what Pro changes."
    ]
    assert 'class="alert alert-error allowance-alert"' in html and 'class="meter is-full"' in html

    # The next window starts from zero: the warning is gone, the week still counts all 100.
    clock.now = WINDOW_RESET
    _, html, context = page(client)
    assert [(a.used, a.percent) for a in context["allowances"]] == [(0, 0), (100, 10)]
    assert "allowance-alert" not in html


def test_weekly_warning_threshold_is_exact(team: Team, clock: Clock) -> None:
    monday = WEEK_START + timedelta(hours=1)  # this week, not this window
    UsageEvent.objects.bulk_create([usage(team.acme, monday + timedelta(seconds=i)) for i in range(799)])
    _, html, context = page(team.client(team.member))
    assert context["allowances"][1].percent == 79 and context["warnings"] == []  # 79.9% is not 80%
    UsageEvent.objects.bulk_create([usage(team.acme, monday + timedelta(minutes=30))])
    _, html, context = page(team.client(team.member))
    assert [(w.kind, w.percent) for w in context["warnings"]] == [(WEEKLY, 80)]
    assert alerts(html) == [
        "You have used 80% of your weekly request allowance (800 of 1,000 requests). "
        "It resets at 00:00 UTC on Mon, Mar 9, in 4 d 10 h. See what Pro changes."
    ]


# --- The limiter's own counters -----------------------------------------------------------------------------------


@pytest.fixture
def redis_limiter(monkeypatch: pytest.MonkeyPatch) -> Iterator[Limiter]:
    """A limiter on the real Redis with a prefix of its own and the frozen clock, in place of the process-wide one."""
    prefix = f"billtest-{uuid.uuid4().hex[:12]}"
    limiter = Limiter(redis_url=REDIS_FOR_TESTS, prefix=prefix, now=lambda: FROZEN.timestamp())
    monkeypatch.setattr(gateway.limits, "limiter", limiter)
    yield limiter
    client = redis.Redis.from_url(REDIS_FOR_TESTS)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def test_with_redis_the_page_shows_the_limiters_own_counters(team: Team, clock: Clock, redis_limiter: Limiter) -> None:
    plan = Plan.objects.create(
        slug="tight", name="Tight", requests_per_minute=1000, window_requests=5, window_seconds=10800, weekly_requests=50
    )
    team.acme.plan = plan
    team.acme.save()
    key_a = Principal(key_id=team.acme_key_id, organization_id=team.acme.pk, organization_slug="acme", plan=plan_record(plan))
    key_b = Principal(
        key_id=team.acme_key_id + 1000, organization_id=team.acme.pk, organization_slug="acme", plan=plan_record(plan)
    )

    async def traffic() -> QuotaExceeded:
        for i in range(5):  # two keys, one organization budget
            await redis_limiter.admit(key_a if i % 2 else key_b, request_id=f"req_t{i}")
        try:
            await redis_limiter.admit(key_a, request_id="req_refused")
        except QuotaExceeded as exc:
            return exc
        raise AssertionError("the sixth request was admitted")

    refused = asyncio.run(traffic())
    _, html, context = page(team.client(team.member))
    window, week = context["allowances"]
    # No usage rows at all: these are the counters admission reads, and the refusal did not add to them.
    assert (window.used, window.limit, window.counted_by, week.used, week.counted_by) == (5, 5, "limiter", 5, "limiter")
    # "resets at" is the instant the limiter names in its refusal.
    assert "(at 2026-03-04T15:00:00Z)" in str(refused)
    assert window.resets_at == WINDOW_RESET and refused.details["reset_seconds"] == 90 * 60
    assert "Your 3-hour request allowance is used up" in html and 'data-counted-by="limiter"' in html
    # Another organization's counters are its own.
    _, _, other = page(team.client(team.outsider))
    assert [a.used for a in other["allowances"]] == [0, 0]


def test_an_unreachable_redis_falls_back_to_counting_rows(
    team: Team, clock: Clock, known_usage: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.limits, "limiter", Limiter(redis_url="redis://127.0.0.1:1/0"))
    _, _, context = page(team.client(team.member))
    assert [(a.used, a.counted_by) for a in context["allowances"]] == [(5, "usage"), (7, "usage")]


# --- Upgrading ------------------------------------------------------------------------------------------------


def test_free_is_compared_with_pro_side_by_side(team: Team, clock: Clock) -> None:
    pro = Plan.objects.get(slug="pro")
    ModelPrice.objects.create(alias="oss-20b", input_micros_per_million=200_000, output_micros_per_million=600_000)
    ModelPrice.objects.create(alias="oss-20b", plan=pro, input_micros_per_million=150_000, output_micros_per_million=450_000)
    ModelPrice.objects.create(alias="gemma4", input_micros_per_million=1_234_567, output_micros_per_million=2_000_000)
    _, html, context = page(team.client(team.member))
    assert context["upgraded"] == pro
    assert [(r.label, r.current, r.upgraded, r.changes) for r in context["plan_rows"]] == [
        ("Requests per minute", "20", "600", True),
        ("Tokens per minute", "20,000", "1,000,000", True),
        ("Concurrent requests", "4", "64", True),
        ("Request allowance", "100 per 3 hours", "No cap", True),
        ("Weekly allowance", "1,000 requests", "No cap", True),
        ("Models", "Every model", "Every model", False),
        ("gemma4 per 1M tokens", "$1.234567 in · $2.00 out", "$1.234567 in · $2.00 out", False),
        ("oss-20b per 1M tokens", "$0.20 in · $0.60 out", "$0.15 in · $0.45 out", True),
    ]
    assert "What Pro changes" in html and 'id="plan-compare"' in html
    assert (
        '<tr class="is-changed"><th scope="row">Requests per minute</th><td>20</td><td class="compare-next">600</td></tr>' in html
    )


def test_the_top_plan_says_so(team: Team, clock: Clock) -> None:
    team.acme.plan = Plan.objects.get(slug="pro")
    team.acme.save()
    _, html, context = page(team.client(team.member))
    assert context["upgraded"] is None
    assert '<p id="top-plan">Pro is the top plan: there is no plan above it to upgrade to.</p>' in html
    assert 'id="plan-compare"' not in html


def test_next_plan_up_is_the_least_generous_of_the_more_generous(db) -> None:  # noqa: ANN001
    ensure_site_and_plans()
    free, pro = Plan.objects.get(slug="free"), Plan.objects.get(slug="pro")
    team_plan = Plan.objects.create(slug="team", name="Team", requests_per_minute=120, tokens_per_minute=200_000)
    plans = list(Plan.objects.all())
    assert plan_next_up(free, plans) == team_plan
    assert plan_next_up(team_plan, plans) == pro
    assert plan_next_up(pro, plans) is None
    # Same rate, no weekly cap: more generous than free.
    relaxed = Plan.objects.create(
        slug="relaxed",
        name="Relaxed",
        requests_per_minute=20,
        tokens_per_minute=20_000,
        concurrent_requests=4,
        window_requests=100,
        window_seconds=10800,
        weekly_requests=None,
    )
    assert plan_next_up(free, [*plans, relaxed]) == relaxed


# --- Money --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("micros", "exact", "cents"),
    [
        (0, "$0.00", "$0.00"),
        (1, "$0.000001", "$0.00"),
        (37, "$0.000037", "$0.00"),
        (4_999, "$0.004999", "$0.00"),  # just under half a cent: down
        (5_000, "$0.005", "$0.01"),  # half a cent: up
        (-4_999, "-$0.004999", "$0.00"),  # rounds to nothing: no sign
        (-5_000, "-$0.005", "-$0.01"),  # half up on the magnitude
        (1_000_000, "$1.00", "$1.00"),
        (1_500_000, "$1.50", "$1.50"),
        (1_234_567, "$1.234567", "$1.23"),
        (1_235_000, "$1.235", "$1.24"),
        (-1_235_000, "-$1.235", "-$1.24"),
        (1_234_999, "$1.234999", "$1.23"),
        (999_995_000, "$999.995", "$1,000.00"),  # a carry through the dollars
        (123_456_789_012_345, "$123,456,789.012345", "$123,456,789.01"),
        (10**24 + 1, "$1,000,000,000,000,000,000.000001", "$1,000,000,000,000,000,000.00"),  # beyond any float
    ],
)
def test_money_is_formatted_in_integer_arithmetic(micros: int, exact: str, cents: str) -> None:
    assert format_micros_exact(micros) == exact
    assert format_micros_cents(micros) == cents


def test_ledger_columns_keep_all_six_decimals() -> None:
    assert [format_micros_exact(m, full=True) for m in (0, 5_000_000, -15, 1_234_567, -1_500_000_000)] == [
        "$0.000000",
        "$5.000000",
        "-$0.000015",
        "$1.234567",
        "-$1,500.000000",
    ]


def test_rounding_to_cents_is_half_up_on_the_magnitude() -> None:
    assert [round_micros_to_cents(m) for m in (14_999, 15_000, -14_999, -15_000, 25_000, -25_000)] == [1, 2, -1, -2, 3, -3]


def test_durations_and_window_names() -> None:
    assert [duration_words(s) for s in (0, 59, 60, 3599, 3600, 5400, 86_399, 86_400, 387_000)] == [
        "0 s",
        "59 s",
        "1 min",
        "59 min",
        "1 h 0 min",
        "1 h 30 min",
        "23 h 59 min",
        "1 d 0 h",
        "4 d 11 h",
    ]
    assert [window_adjective(s) for s in (10800, 3600, 1800, 90)] == ["3-hour", "1-hour", "30-minute", "90-second"]


# --- Who sees what ------------------------------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_sign_in() -> None:
    response = Client().get("/portal/billing")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/?next=/portal/billing"


def test_every_member_sees_the_same_numbers(team: Team, known_ledger: None, known_usage: None, clock: Clock) -> None:
    # The same numbers; the spend-caps card differs by role (a form for owners and admins), so it is left out.
    mains = [
        re.sub(
            r'<section class="card" aria-labelledby="alerts-title".*?</section>',
            "",
            main_of(page(team.client(user))[1]),
            flags=re.S,
        )
        for user in (team.owner, team.admin, team.member)
    ]
    assert mains[0] == mains[1] == mains[2]
    assert "$10.77" in mains[0]


def test_another_organization_is_not_found(team: Team, known_ledger: None, clock: Clock) -> None:
    outsider = team.client(team.outsider)
    for query in ("?org=acme", f"?org={team.acme.pk}", "?org=no-such-org"):
        status, html, _ = page(outsider, query)
        assert status == 404, query
        assert "$10.77" not in html and "Welcome credit" not in html
    # Its own page shows its own money only.
    status, html, context = page(outsider)
    assert status == 200 and context["balance"] == 99_000_000 and "Welcome credit" not in html


def test_a_member_of_two_organizations_picks_one_with_org(team: Team, known_ledger: None, clock: Clock) -> None:
    add_member(team.globex, team.member, Membership.Role.MEMBER)
    client = team.client(team.member)
    assert page(client)[2]["balance"] == 10_765_391  # the first membership
    status, html, context = page(client, "?org=globex")
    assert status == 200 and context["balance"] == 99_000_000 and "globex money" in html
    assert page(client, f"?org={team.globex.pk}")[2]["balance"] == 99_000_000
    # Paging keeps to the organization asked for.
    LedgerEntry.objects.bulk_create(
        [entry(team.globex, datetime(2026, 3, 3, tzinfo=UTC) + timedelta(seconds=i), "credit", 1) for i in range(50)]
    )
    _, html, _ = page(client, "?org=globex")
    assert 'href="?org=globex&amp;page=2">Older →</a>' in html
    _, html, context = page(client, "?org=globex&page=2")
    assert context["ledger"].number == 2 and "globex money" in html and 'href="?org=globex&amp;page=1">← Newer</a>' in html


# --- A busy organization ------------------------------------------------------------------------------------------


def test_a_busy_organization_renders_in_a_bounded_number_of_queries(
    team: Team, clock: Clock, django_assert_max_num_queries
) -> None:  # noqa: ANN001
    acme = team.acme
    client = team.client(team.owner)

    def queries(query: str = "") -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(f"/portal/billing{query}").status_code == 200
        return len(captured.captured_queries)

    start = datetime(2026, 2, 1, tzinfo=UTC)
    entry(acme, start, "credit", 1_000_000_000, memo="opening credit").save()
    UsageEvent.objects.bulk_create([usage(acme, FROZEN)])
    quiet = queries()  # one entry, one request
    LedgerEntry.objects.bulk_create(
        [
            entry(
                acme,
                start + timedelta(minutes=10 * i),
                "debit",
                -(i % 97) - 1,
                request_id=f"req_busy_{i}",
                tokens=(i % 50, i % 7),
            )
            for i in range(1, 3000)
        ],
        batch_size=1000,
    )
    UsageEvent.objects.bulk_create([usage(acme, FROZEN - timedelta(seconds=37 * i)) for i in range(1, 5000)], batch_size=1000)

    # 15: the models-and-prices card reads the plan's list, the overrides, the aliases and the prices (4).
    with django_assert_max_num_queries(15):
        response = client.get("/portal/billing")
    assert queries() == quiet  # as many queries for 3,000 entries and 5,000 requests as for one of each
    with django_assert_max_num_queries(15):
        second = client.get("/portal/billing?page=2")
    assert queries("?page=60") == quiet

    html = response.content.decode()
    assert html.count('<tr data-entry="') == 50 and "Page 1 of 60" in html
    amounts = list(
        LedgerEntry.objects.filter(organization=acme).order_by("-created_at", "-id").values_list("amount_micros", flat=True)
    )
    total = sum(amounts)
    assert response.context["balance"] == total
    # The running balance of page 2's first row: everything but the 50 newest entries.
    first_on_two = second.context["ledger"].object_list[0]
    assert first_on_two.balance_micros == total - sum(amounts[:50])
    assert (
        f'<td class="num nowrap l-balance">{format_micros_exact(total - sum(amounts[:50]), full=True)}</td>'
        in second.content.decode()
    )
    window, week = response.context["allowances"]
    assert window.used == sum(1 for i in range(5000) if FROZEN - timedelta(seconds=37 * i) >= WINDOW_START)
    assert week.used == 5000  # 5000 × 37 s is under two days and a half: all since Monday
    # Out-of-range and malformed pages fall back instead of failing.
    assert client.get("/portal/billing?page=999").context["ledger"].number == 60
    assert client.get("/portal/billing?page=abc").context["ledger"].number == 1


# --- Staff: invitations, read-only ----------------------------------------------------------------------------------


def test_invitations_are_read_only_in_the_admin(team: Team) -> None:
    invitation = Invitation.objects.create(
        organization=team.acme,
        email="new@acme.test",
        token="tok-secret-Zx81",
        invited_by=team.owner,
        expires_at=timezone.now() + timedelta(days=7),
    )
    staff = Client()
    staff.force_login(User.objects.create_superuser(email="staff@example.com", password="not-used-here"))
    listing = staff.get("/admin/accounts/invitation/")
    assert listing.status_code == 200
    assert "new@acme.test" in listing.content.decode() and "pending" in listing.content.decode()
    detail = staff.get(f"/admin/accounts/invitation/{invitation.pk}/change/")
    assert detail.status_code == 200
    body = detail.content.decode()
    assert "new@acme.test" in body and 'name="_save"' not in body
    assert "tok-secret-Zx81" not in body and "tok-secret-Zx81" not in listing.content.decode()
    assert staff.get("/admin/accounts/invitation/add/").status_code == 403
    assert staff.get(f"/admin/accounts/invitation/{invitation.pk}/delete/").status_code == 403
    assert staff.post(f"/admin/accounts/invitation/{invitation.pk}/change/", {"email": "x@y.test"}).status_code == 403
    invitation.refresh_from_db()
    assert invitation.email == "new@acme.test"
