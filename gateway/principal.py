"""Who is calling: the key, its organization, its plan and the organization's model exceptions, as the gateway caches them.

A module of its own so that authentication (which makes principals) and the limiter (which counts per key and per
organization) both import it, and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from billing.selectors import PlanRecord, model_allowed


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: int
    organization_id: int
    organization_slug: str
    plan: PlanRecord | None
    model_overrides: dict[str, bool] | None = None  # the organization's exceptions to its plan's list
    key_kind: str = "standard"  # apikeys.models.ApiKey.Kind
    key_aliases: frozenset[str] | None = None  # the key's own allow-list, within the organization's; None: no narrowing
    key_requests_per_minute: int | None = None  # the key's own rate limit, below the plan's; None: the plan's
    # Spend caps in micro-units; None: no cap.
    key_spend_cap_daily_micros: int | None = None
    key_spend_cap_monthly_micros: int | None = None
    org_spend_cap_daily_micros: int | None = None
    org_spend_cap_monthly_micros: int | None = None
    # The limiter's work for this principal, done once (gateway/limits/layout.py): not an argument, so `replace()`
    # starts a copy without it, and never compared.
    limits_layouts: dict[Any, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def may_use(self, alias: str) -> bool:
        if self.key_aliases is not None and alias not in self.key_aliases:
            return False
        return model_allowed(alias, plan_aliases=self.plan.allowed_aliases if self.plan else None, overrides=self.model_overrides)
