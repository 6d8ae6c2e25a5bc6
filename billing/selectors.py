"""Plan reads for the gateway's cache."""

from __future__ import annotations

from dataclasses import dataclass

from billing.models import Plan


@dataclass(frozen=True, slots=True)
class PlanRecord:
    plan_id: int
    slug: str
    allowed_aliases: frozenset[str] | None  # None: every enabled alias
    requests_per_minute: int
    tokens_per_minute: int | None
    concurrent_requests: int | None
    window_requests: int | None
    window_seconds: int
    weekly_requests: int | None


def plan_table() -> dict[int, PlanRecord]:
    table: dict[int, PlanRecord] = {}
    for plan in Plan.objects.prefetch_related("allowed_aliases"):
        aliases = frozenset(a.alias for a in plan.allowed_aliases.all())
        table[plan.pk] = PlanRecord(
            plan_id=plan.pk,
            slug=plan.slug,
            allowed_aliases=aliases or None,
            requests_per_minute=plan.requests_per_minute,
            tokens_per_minute=plan.tokens_per_minute,
            concurrent_requests=plan.concurrent_requests,
            window_requests=plan.window_requests,
            window_seconds=plan.window_seconds,
            weekly_requests=plan.weekly_requests,
        )
    return table
