"""Prices from the first run: every model alias has a ModelPrice (the seed migration, the default applied when an
alias appears), staff edit prices in dollars in the admin, and an explicit free price stays free."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.apps import apps as django_apps
from django.test import Client
from django.urls import reverse

from accounts.models import User
from billing.models import ModelPrice
from billing.services import FREE_PLAN_SLUG, plans_seed_defaults, price_ensure_default
from routerpools.config import parse_router_env
from routerpools.models import ModelAlias, RouterPool
from routerpools.services import router_pools_sync
from tests.support.live import ROOT

pytestmark = pytest.mark.django_db


def prices() -> dict[tuple[str, str | None], tuple[int, int]]:
    """The list prices and staff's per-plan rows; the free plan's own 0/0 rows are test_the_free_plan_serves_every_alias_free's."""
    return {
        (p.alias, p.plan.slug if p.plan else None): (p.input_micros_per_million, p.output_micros_per_million)
        for p in ModelPrice.objects.select_related("plan").exclude(plan__slug=FREE_PLAN_SLUG)
    }


def test_the_free_plan_serves_every_alias_free_and_keeps_a_price_staff_set(pool: RouterPool) -> None:
    plans_seed_defaults()
    ModelAlias.objects.create(alias="f1", pool=pool)
    free_rows = ModelPrice.objects.filter(plan__slug=FREE_PLAN_SLUG)
    assert {(p.alias, p.input_micros_per_million, p.output_micros_per_million) for p in free_rows} == {("f1", 0, 0)}
    free_rows.update(input_micros_per_million=5, output_micros_per_million=6)  # staff charge the free plan after all
    ModelAlias.objects.get(alias="f1").save()
    ModelAlias.objects.create(alias="f2", pool=pool)
    assert {(p.alias, p.input_micros_per_million, p.output_micros_per_million) for p in free_rows.all()} == {
        ("f1", 5, 6),
        ("f2", 0, 0),
    }
    assert prices()[("f2", None)] == (100_000, 400_000)  # the list price, for every other plan


@pytest.fixture
def pool() -> RouterPool:
    return RouterPool.objects.create(name="pool")


def test_an_alias_created_anywhere_gets_the_default_alias_wide_price(pool: RouterPool, settings) -> None:  # noqa: ANN001
    settings.PORTAL_DEFAULT_INPUT_PRICE_PER_MILLION = 125_000
    settings.PORTAL_DEFAULT_OUTPUT_PRICE_PER_MILLION = 500_001
    ModelAlias.objects.create(alias="fresh-model", pool=pool)
    assert prices() == {("fresh-model", None): (125_000, 500_001)}


def test_env_managed_aliases_written_by_sync_router_pools_are_priced() -> None:
    env = {
        "PORTAL_ROUTER_POOLS_JSON": json.dumps({"oss-20b": "http://10.0.0.5:5010", "gemma4": "http://10.0.0.7:5010"}),
        "PORTAL_ROUTER_MODEL_SESSIONS_JSON": json.dumps({"oss-20b": [101], "gemma4": 7}),
    }
    router_pools_sync(config=parse_router_env(env))
    assert prices() == {("gemma4", None): (100_000, 400_000), ("oss-20b", None): (100_000, 400_000)}
    router_pools_sync(config=parse_router_env(env))  # a restart: idempotent
    assert len(prices()) == 2 and ModelPrice.objects.count() == 2 + ModelPrice.objects.filter(plan__slug=FREE_PLAN_SLUG).count()


def test_an_existing_price_is_kept_and_an_explicit_free_price_stays_free(pool: RouterPool) -> None:
    ModelPrice.objects.create(alias="free-model", input_micros_per_million=0, output_micros_per_million=0)
    alias = ModelAlias.objects.create(alias="free-model", pool=pool)
    alias.display_name = "Free model"
    alias.save()
    assert prices() == {("free-model", None): (0, 0)}
    assert price_ensure_default(alias="free-model") is False


def test_a_renamed_alias_is_priced_under_its_new_name_and_the_old_price_kept(pool: RouterPool) -> None:
    alias = ModelAlias.objects.create(alias="old-name", pool=pool)
    ModelPrice.objects.filter(alias="old-name").update(input_micros_per_million=7, output_micros_per_million=9)
    alias.alias = "new-name"
    alias.save()
    assert prices() == {("old-name", None): (7, 9), ("new-name", None): (100_000, 400_000)}


def test_the_seed_migration_prices_the_aliases_that_exist_and_leaves_priced_ones(pool: RouterPool) -> None:
    ModelAlias.objects.create(alias="a1", pool=pool)
    ModelAlias.objects.create(alias="a2", pool=pool)
    ModelPrice.objects.all().delete()  # as before the migration: aliases without prices
    ModelPrice.objects.create(alias="a2", input_micros_per_million=1, output_micros_per_million=2)
    seed = importlib.import_module("billing.migrations.0007_seed_alias_prices").seed
    seed(django_apps, None)
    assert prices() == {("a1", None): (100_000, 400_000), ("a2", None): (1, 2)}


def test_a_fresh_database_and_make_runs_setup_end_with_a_price_for_every_alias(tmp_path: Path) -> None:
    """What `make run` does (portal_project/devserver.py): migrate an empty database, sync the env's pools."""
    from portal_project.devserver import dev_env

    env = {k: v for k, v in dev_env().items() if not k.startswith("PYTEST")}
    env.update(DJANGO_SETTINGS_MODULE="portal_project.settings", DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.sqlite3'}")
    env.pop("REDIS_URL", None)
    for command in (["migrate", "--noinput"], ["sync_router_pools"]):
        done = subprocess.run(
            [sys.executable, "manage.py", *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stderr[-3000:]
    script = (
        "from billing.models import ModelPrice; from routerpools.models import ModelAlias; import json; "
        "print(json.dumps([sorted(ModelAlias.objects.values_list('alias', flat=True)), "
        "sorted(ModelPrice.objects.filter(plan=None).values_list('alias', 'input_micros_per_million', 'output_micros_per_million'))]))"
    )
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-3000:]
    aliases, priced = json.loads(out.stdout.strip().splitlines()[-1])
    assert aliases == ["oss-20b"]
    assert priced == [["oss-20b", 100_000, 400_000]]


def test_a_default_price_out_of_bounds_stops_start_up() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(DEBUG="1", PORTAL_DEFAULT_OUTPUT_PRICE_PER_MILLION="1000000001")
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("configuration error: PORTAL_DEFAULT_OUTPUT_PRICE_PER_MILLION: ")
    env["PORTAL_DEFAULT_OUTPUT_PRICE_PER_MILLION"] = "-1"
    assert (
        subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, timeout=60).returncode == 2
    )


# --- the admin ----------------------------------------------------------------------------------------------------


@pytest.fixture
def staff() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser(email="staff@example.com", password="not-used-here"))
    return client


def test_the_price_list_shows_dollars_per_million(staff: Client, pool: RouterPool) -> None:
    plans_seed_defaults()
    ModelAlias.objects.create(alias="oss-20b", pool=pool)
    ModelPrice.objects.create(alias="oss-20b", plan_id=2, input_micros_per_million=1_234_567, output_micros_per_million=0)
    page = staff.get(reverse("admin:billing_modelprice_changelist")).content.decode()
    assert "$0.10 / 1M" in page and "$0.40 / 1M" in page  # the default, alias-wide
    assert "$1.234567 / 1M" in page and "$0.00 / 1M" in page
    assert "every plan" in page


def test_staff_add_a_price_in_dollars_stored_exactly_in_micro_units(staff: Client, pool: RouterPool) -> None:
    ModelAlias.objects.create(alias="m", pool=pool)
    plans_seed_defaults()
    add = reverse("admin:billing_modelprice_add")
    pro = 2
    response = staff.post(
        add, {"alias": "m", "plan": pro, "input_price": "0.000001", "output_price": "999.999999", "_save": "Save"}
    )
    assert response.status_code == 302, response.content.decode()[-3000:]
    assert prices()[("m", "pro")] == (1, 999_999_999)
    # The change form shows it back in dollars.
    row = ModelPrice.objects.get(alias="m", plan_id=pro)
    form = staff.get(reverse("admin:billing_modelprice_change", args=[row.pk])).content.decode()
    assert 'value="999.999999"' in form


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"alias": "nope", "input_price": "1", "output_price": "1"}, "No model alias is named"),
        ({"alias": "m", "input_price": "-0.01", "output_price": "1"}, "greater than or equal to 0"),
        ({"alias": "m", "input_price": "1000.000001", "output_price": "1"}, "less than or equal to 1000"),
        ({"alias": "m", "input_price": "0.0000001", "output_price": "1"}, "no more than 6 decimal places"),
        ({"alias": "m", "input_price": "abc", "output_price": "1"}, "Enter a number"),
        ({"alias": "m", "input_price": "1", "output_price": "1"}, "“m” already has a price for every plan"),
    ],
)
def test_a_bad_price_is_refused_by_the_form_not_a_500(staff: Client, pool: RouterPool, data: dict, error: str) -> None:
    ModelAlias.objects.create(alias="m", pool=pool)
    before = prices()
    response = staff.post(reverse("admin:billing_modelprice_add"), {**data, "_save": "Save"})
    assert response.status_code == 200
    assert error in response.content.decode()
    assert prices() == before


def test_a_plan_override_is_added_inline_on_the_plan(staff: Client, pool: RouterPool) -> None:
    plans_seed_defaults()
    ModelAlias.objects.create(alias="m", pool=pool)
    from billing.models import Plan

    pro = Plan.objects.get(slug="pro")
    page = staff.get(reverse("admin:billing_plan_change", args=[pro.pk]))
    assert page.status_code == 200
    data = {
        "slug": "pro",
        "name": "Pro",
        "requests_per_minute": 600,
        "tokens_per_minute": 1_000_000,
        "concurrent_requests": 64,
        "window_seconds": 3600,
        "monthly_price_micros": 0,
        "created_at_0": "2026-01-01",
        "created_at_1": "00:00:00",
        "prices-TOTAL_FORMS": 1,
        "prices-INITIAL_FORMS": 0,
        "prices-MIN_NUM_FORMS": 0,
        "prices-MAX_NUM_FORMS": 1000,
        "prices-0-alias": "m",
        "prices-0-input_price": "0.05",
        "prices-0-output_price": "0",
        "_save": "Save",
    }
    response = staff.post(reverse("admin:billing_plan_change", args=[pro.pk]), data)
    assert response.status_code == 302, response.content.decode()[-3000:]
    assert prices() == {("m", None): (100_000, 400_000), ("m", "pro"): (50_000, 0)}
