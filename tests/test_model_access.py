"""Model access is one rule (billing.selectors.model_allowed): the portal's model list and the gateway's decision agree."""

from __future__ import annotations

import itertools

import pytest

from billing.selectors import model_allowed, model_overrides_table, models_for_organization, plan_table
from gateway.principal import Principal
from tests.support.portal import make_org, make_user

pytestmark = pytest.mark.django_db


def test_the_rule() -> None:
    assert model_allowed("a", plan_aliases=None, overrides=None)  # no list: every alias
    assert model_allowed("a", plan_aliases=frozenset(), overrides={})  # an empty list too
    assert not model_allowed("a", plan_aliases={"b"}, overrides=None)
    assert model_allowed("a", plan_aliases={"b"}, overrides={"a": True})  # granted beyond the plan
    assert not model_allowed("b", plan_aliases={"b"}, overrides={"b": False})  # withheld from the plan
    assert not model_allowed("b", plan_aliases=None, overrides={"b": False})


def test_portal_list_and_gateway_decision_agree_for_every_combination() -> None:
    from billing.models import ModelAccessOverride, Plan
    from routerpools.models import ModelAlias, RouterPool

    pool = RouterPool.objects.create(name="pool-a")
    aliases = [ModelAlias.objects.create(alias=name, pool=pool) for name in ("a", "b", "c")]
    owner = make_user("owner@access.test")
    cases = 0
    # Every plan list (none, or a subset) × every override per alias (none, granted, withheld).
    for size in range(len(aliases) + 1):
        for plan_list in itertools.combinations(aliases, size):
            for overrides in itertools.product((None, True, False), repeat=len(aliases)):
                cases += 1
                org = make_org(f"org-{cases}", owner=owner)
                plan = Plan.objects.create(slug=f"plan-{cases}", name=f"Plan {cases}", requests_per_minute=60)
                plan.allowed_aliases.set(plan_list)
                org.plan = plan
                org.save(update_fields=["plan"])
                for alias, allowed in zip(aliases, overrides, strict=True):
                    if allowed is not None:
                        ModelAccessOverride.objects.create(organization=org, alias=alias, allowed=allowed)
                org.refresh_from_db()
                portal = [a.alias for a in models_for_organization(org)]
                principal = Principal(
                    key_id=0,
                    organization_id=org.pk,
                    organization_slug=org.slug,
                    plan=plan_table()[plan.pk],
                    model_overrides=model_overrides_table().get(org.pk),
                )
                gateway = [a.alias for a in aliases if principal.may_use(a.alias)]
                assert portal == gateway, (plan_list, overrides)
    assert cases == 8 * 27
