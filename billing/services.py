"""Writes and reads for plans and subscriptions."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from billing.models import Plan, PlanSubscription

DEFAULT_PLANS: list[dict[str, Any]] = [
    {
        "slug": "free",
        "name": "Free",
        "requests_per_minute": 20,
        "tokens_per_minute": 20_000,
        "concurrent_requests": 4,
        "window_requests": 100,
        "window_seconds": 3 * 3600,
        "weekly_requests": 1_000,
        "is_default": True,
    },
    {
        "slug": "pro",
        "name": "Pro",
        "requests_per_minute": 600,
        "tokens_per_minute": 1_000_000,
        "concurrent_requests": 64,
        "window_requests": None,
        "window_seconds": 3600,
        "weekly_requests": None,
        "is_default": False,
    },
]


def plans_seed_defaults(plan_model: type[Plan] = Plan) -> None:
    """Create the free and pro plans if missing; never overwrite what staff changed."""
    for spec in DEFAULT_PLANS:
        fields = dict(spec)
        plan_model.objects.get_or_create(slug=fields.pop("slug"), defaults=fields)


class UnknownPlan(ValueError):
    pass


def plan_get_default(*, slug: str | None = None) -> Plan | None:
    if slug:
        plan = Plan.objects.filter(slug=slug).first()
        if plan is None:
            raise UnknownPlan(f"no plan with slug {slug!r}")
        return plan
    return Plan.objects.filter(is_default=True).order_by("id").first()


@transaction.atomic
def subscription_start(*, organization: Any, plan: Plan) -> PlanSubscription:
    now = timezone.now()
    PlanSubscription.objects.filter(organization=organization, ended_at__isnull=True).update(ended_at=now)
    if organization.plan_id != plan.id:
        organization.plan = plan
        organization.save(update_fields=["plan"])
    return PlanSubscription.objects.create(organization=organization, plan=plan, started_at=now)
