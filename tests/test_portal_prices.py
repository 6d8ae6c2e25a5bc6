"""Prices and limits on the portal: the docs and billing pages list each model the organization may call with its
price per million tokens for the viewer's plan, its context length and max output tokens, and the plan's limits."""

from __future__ import annotations

import re

import pytest

from billing.models import ModelPrice, Plan
from routerpools.models import ModelAlias, RouterPool
from tests.support.portal import Team, ensure_site_and_plans, make_team, portal_settings  # noqa: F401


@pytest.fixture
def team(db, portal_settings) -> Team:  # noqa: ANN001, F811
    ensure_site_and_plans()
    pool = RouterPool.objects.create(name="pool")
    ModelAlias.objects.create(alias="oss-20b", display_name="GPT-OSS 20B", pool=pool, context_length=131_072, max_tokens_cap=8192)
    ModelAlias.objects.create(alias="gemma4", pool=pool)  # no context length stated, the default cap
    ModelAlias.objects.create(alias="hidden", pool=pool, enabled=False)
    ModelPrice.objects.filter(alias="oss-20b").update(input_micros_per_million=200_000, output_micros_per_million=600_001)
    # These tests price the free plan at list prices; the free tier's own 0/0 rows (every alias free on it by default)
    # are test_the_free_tier_is_listed_free's.
    ModelPrice.objects.filter(plan__slug="free").delete()
    ModelPrice.objects.create(
        alias="oss-20b", plan=Plan.objects.get(slug="pro"), input_micros_per_million=150_000, output_micros_per_million=450_000
    )
    return make_team()


def rows(html: str) -> dict[str, list[str]]:
    """The model price table: alias → its cells' text."""
    table = html[html.index('id="model-prices"') :]
    table = table[: table.index("</table>")]
    out = {}
    for alias, body in re.findall(r'<tr data-model="([^"]+)">(.*?)</tr>', table, re.S):
        out[alias] = [" ".join(re.sub(r"<[^>]+>", " ", cell).split()) for cell in re.findall(r"<td[^>]*>(.*?)</td>", body, re.S)]
    return out


@pytest.mark.parametrize("path", ["/portal/docs", "/portal/billing"])
def test_each_model_is_listed_with_the_price_of_the_viewers_plan_and_its_limits(team: Team, path: str) -> None:
    html = team.client(team.member).get(path).content.decode()
    assert rows(html) == {
        "gemma4": ["gemma4", "$0.10", "$0.40", "—", "4,096"],  # the default price, given when the alias was created
        "oss-20b": ["oss-20b GPT-OSS 20B", "$0.20", "$0.600001", "131,072", "8,192"],
    }
    team.acme.plan = Plan.objects.get(slug="pro")
    team.acme.save()
    html = team.client(team.member).get(path).content.decode()
    assert rows(html)["oss-20b"] == ["oss-20b GPT-OSS 20B", "$0.15", "$0.45", "131,072", "8,192"]  # pro's own price


def test_the_free_tier_is_listed_free(team: Team) -> None:
    from billing.services import price_ensure_default

    for alias in ("oss-20b", "gemma4"):
        price_ensure_default(alias=alias)  # as when the aliases appear: the free plan gets its own 0/0 row
    html = team.client(team.member).get("/portal/docs").content.decode()
    assert rows(html) == {
        "gemma4": ["gemma4", "Free", "Free", "—", "4,096"],
        "oss-20b": ["oss-20b GPT-OSS 20B", "Free", "Free", "131,072", "8,192"],
    }


def test_free_and_unpriced_models_say_so(team: Team) -> None:
    ModelPrice.objects.filter(alias="gemma4").update(input_micros_per_million=0, output_micros_per_million=0)
    ModelPrice.objects.filter(alias="oss-20b", plan__isnull=True).delete()
    html = team.client(team.member).get("/portal/docs").content.decode()
    assert rows(html) == {
        "gemma4": ["gemma4", "Free", "Free", "—", "4,096"],
        "oss-20b": ["oss-20b GPT-OSS 20B", "Not priced", "131,072", "8,192"],
    }


def test_only_the_models_the_organization_may_call_are_listed(team: Team) -> None:
    free = Plan.objects.get(slug="free")
    free.allowed_aliases.set([ModelAlias.objects.get(alias="gemma4")])
    html = team.client(team.member).get("/portal/billing").content.decode()
    assert list(rows(html)) == ["gemma4"]


def test_the_docs_page_lists_the_plans_limits(team: Team) -> None:
    html = team.client(team.member).get("/portal/docs").content.decode()
    limits = html[html.index('id="plan-limits"') :]
    limits = limits[: limits.index("</dl>")]
    facts = [(dt, dd) for dt, dd in re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", limits)]
    assert facts == [
        ("Requests per minute", "20"),
        ("Tokens per minute", "20,000"),
        ("Concurrent requests", "4"),
        ("Request allowance", "100 per 3 hours"),
        ("Weekly allowance", "1,000 requests"),
        ("Billing", "Usage is billed"),
    ]
    assert "Limits of the Free plan" in html
