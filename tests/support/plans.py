"""What the tests with gateways of their own share: fast breaker and probe settings, and a plan without limits."""

from __future__ import annotations

from billing.models import Plan

BREAKER_COOLDOWN_MS = 1500
HEALTH_INTERVAL_MS = 200
# Short enough for a test to see a circuit open and half-open, and a failing probe, within a second or two.
FAST_HEALTH = {
    "PORTAL_BREAKER_FAILURES": "3",
    "PORTAL_BREAKER_COOLDOWN_MS": str(BREAKER_COOLDOWN_MS),
    "PORTAL_HEALTH_INTERVAL_MS": str(HEALTH_INTERVAL_MS),
}


def big_plan(slug: str = "unlimited") -> Plan:
    """A plan no test here runs into: the faults under test are the routers', not the limits'."""
    plan, _ = Plan.objects.get_or_create(
        slug=slug,
        defaults={
            "name": "Unlimited",
            "requests_per_minute": 1_000_000,
            "tokens_per_minute": None,
            "concurrent_requests": None,
            "window_requests": None,
            "window_seconds": 3600,
            "weekly_requests": None,
        },
    )
    return plan
