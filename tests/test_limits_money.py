"""Money in the admission engine (gateway/limits/money.py), in Redis and in the in-process store alike: a prepaid
balance and spend caps reserved and settled exactly, seeded from the ledger, and refused (never given away) when
Redis is away. The live, two-process proofs are tests/enforcement/test_money.py."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from accounts.models import Organization
from billing.services import ledger_entry_add, organization_create, plans_seed_defaults
from gateway.errors import InsufficientBalance, LimitsUnavailable, SpendCapReached
from gateway.limits import Limiter
from gateway.principal import Principal
from tests.support.live import REDIS_FOR_TESTS
from tests.test_limits import DEAD_REDIS, FROZEN, Clock, make_plan, run
from tests.test_limits import clock as clock  # noqa: F401  (fixtures)
from tests.test_limits import mode as mode  # noqa: F401
from tests.test_limits import new_limiter as new_limiter  # noqa: F401
from tests.test_limits import prefix as prefix  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)  # the seeds are read in worker threads: rows must be committed


def new_org(credit_micros: int = 0) -> Organization:
    plans_seed_defaults()
    org = organization_create(slug=f"m-{uuid.uuid4().hex[:10]}", name="Money")
    if credit_micros:
        ledger_entry_add(organization=org, kind="credit", amount_micros=credit_micros)
    return org


def principal_of(org: Organization, *, prepaid: bool = False, key_id: int = 1, **caps: int | None) -> Principal:
    plan = replace(make_plan(), prepaid=prepaid)
    return Principal(key_id=key_id, organization_id=org.pk, organization_slug=org.slug, plan=plan, **caps)  # type: ignore[arg-type]


def test_a_prepaid_balance_is_reserved_then_settled_to_the_real_cost(new_limiter) -> None:  # noqa: ANN001
    limiter = new_limiter()
    who = principal_of(new_org(1_000), prepaid=True)

    async def body() -> None:
        first = await limiter.admit(who, request_id="r1", reserve_micros=400)
        await limiter.admit(who, request_id="r2", reserve_micros=400)
        with pytest.raises(InsufficientBalance) as refused:
            await limiter.admit(who, request_id="r3", reserve_micros=400)
        assert refused.value.details == {"limit": "prepaid_balance", "balance_micros": 200, "required_micros": 400}
        assert refused.value.status == 402 and "retry-after" not in refused.value.headers
        await limiter.finish(first, actual_tokens=0, actual_cost_micros=100)  # 300 of its 400 come back
        await limiter.finish(first, actual_tokens=0, actual_cost_micros=100)  # idempotent
        await limiter.admit(who, request_id="r4", reserve_micros=500)
        with pytest.raises(InsufficientBalance) as refused:
            await limiter.admit(who, request_id="r5", reserve_micros=1)
        assert refused.value.details["balance_micros"] == 0  # type: ignore[index]
        await limiter.admit(who, request_id="free", reserve_micros=0)  # an explicitly free model still runs

    run(body)


def test_a_credit_pushed_after_the_seed_is_spendable_and_an_older_snapshot_never_wins(new_limiter) -> None:  # noqa: ANN001
    limiter = new_limiter()
    org = new_org(100)
    who = principal_of(org, prepaid=True)
    run(lambda: limiter.admit(who, request_id="r1", reserve_micros=100))
    ledger_entry_add(organization=org, kind="credit", amount_micros=250)  # pushes on commit, to the process's limiter
    # That push went to the process's own limiter (its settings' prefix); this test's limiter has a prefix of its own,
    # so push to it as credits_push does: the newer snapshot, then an older one arriving late, which must not win.
    _push(limiter, org.pk)
    run(lambda: limiter.admit(who, request_id="r2", reserve_micros=250))
    with pytest.raises(InsufficientBalance):
        run(lambda: limiter.admit(who, request_id="r3", reserve_micros=1))


def _push(limiter: Limiter, organization_id: int) -> None:
    from gateway.limits import money
    from gateway.limits.stores import SEED_LUA, SeedItem, seed_args

    if limiter.redis_url is None:
        limiter.credits_push_local(organization_id)
        return
    import redis

    root = money.money_root(limiter.prefix, organization_id)
    ledger = money.organization_ledger_money(organization_id)
    newer = SeedItem(f"{root}:cred", ledger.credits_micros, 600, f"{root}:credn", ledger.credit_entries)
    older = replace(newer, value=ledger.credits_micros - 250, version=ledger.credit_entries - 1)
    client = redis.Redis.from_url(REDIS_FOR_TESTS)
    for item in (newer, older):
        keys, args = seed_args([item])
        client.eval(SEED_LUA, len(keys), *keys, *args)
    client.close()


def test_spend_caps_of_the_key_and_the_organization_per_day_and_month(new_limiter, clock: Clock) -> None:  # noqa: ANN001
    limiter = new_limiter()
    org = new_org()
    key_one = principal_of(org, key_id=1, key_spend_cap_daily_micros=500, org_spend_cap_monthly_micros=800)
    key_two = principal_of(org, key_id=2, org_spend_cap_monthly_micros=800)

    async def body() -> None:
        await limiter.admit(key_one, request_id="a", reserve_micros=300)
        with pytest.raises(SpendCapReached) as refused:
            await limiter.admit(key_one, request_id="b", reserve_micros=300)
        midnight = (FROZEN // 86400 + 1) * 86400
        assert refused.value.details == {
            "limit": "spend_cap_daily",
            "scope": "key",
            "limit_value": 500,
            "spent_micros": 300,
            "reset_seconds": int(midnight - FROZEN),
        }
        assert refused.value.headers["retry-after"] == str(int(midnight - FROZEN))
        assert "API key daily spend cap of $0.0005 reached" in refused.value.message
        await limiter.admit(key_two, request_id="c", reserve_micros=500)  # the other key: only the month binds
        with pytest.raises(SpendCapReached) as refused:
            await limiter.admit(key_two, request_id="d", reserve_micros=1)
        assert refused.value.details["scope"] == "organization"  # type: ignore[index]
        assert refused.value.details["limit"] == "spend_cap_monthly"  # type: ignore[index]
        clock.t += 86400  # the next day: the key's day is new, the organization's month is not
        with pytest.raises(SpendCapReached):
            await limiter.admit(key_one, request_id="e", reserve_micros=1)

    run(body)


def test_money_fails_closed_when_redis_is_away_and_other_requests_keep_the_limiters_policy() -> None:
    limiter = Limiter(redis_url=DEAD_REDIS, prefix=f"m-{uuid.uuid4().hex[:8]}", fail_mode="open", now=Clock())
    org = new_org(1_000)

    async def body() -> None:
        with pytest.raises(LimitsUnavailable):
            await limiter.admit(principal_of(org, prepaid=True), request_id="p", reserve_micros=1)
        with pytest.raises(LimitsUnavailable):
            await limiter.admit(principal_of(org, org_spend_cap_daily_micros=10), request_id="c", reserve_micros=1)
        admitted = await limiter.admit(principal_of(org), request_id="free", reserve_micros=1)
        assert admitted.backend == "local"  # no money to check: the open policy's per-process limits

    run(body)


def test_an_organization_saved_off_prepaid_is_seeded_afresh_from_the_ledger(prefix: str, monkeypatch) -> None:  # noqa: ANN001, F811
    from billing.models import LedgerEntry
    from gateway.limits.policy import limiter as process_limiter

    # The writer (this process) and the gateway share a deployment's prefix and Redis.
    monkeypatch.setattr(process_limiter, "prefix", prefix)
    monkeypatch.setattr(process_limiter, "redis_url", REDIS_FOR_TESTS)
    limiter = Limiter(redis_url=REDIS_FOR_TESTS, prefix=prefix, now=Clock())
    org = new_org(1_000)  # on the free plan in the database
    who = principal_of(org, prepaid=True)
    run(lambda: limiter.admit(who, request_id="held", reserve_micros=600))  # a reservation never settled
    org.save()  # saved on a plan that is not prepaid: its balance keys go
    LedgerEntry.objects.create(organization=org, kind="debit", amount_micros=-300, request_id="postpaid-1")
    run(lambda: limiter.admit(who, request_id="back", reserve_micros=700))  # 1_000 - 300, read from the ledger again
    with pytest.raises(InsufficientBalance):
        run(lambda: limiter.admit(who, request_id="over", reserve_micros=1))
