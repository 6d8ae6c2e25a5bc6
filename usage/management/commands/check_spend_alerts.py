"""manage.py check_spend_alerts: check every organization with a spend cap (its own or a key's) or a prepaid plan and
send the alerts it has earned; the fallback for cron to what the usage writer triggers after each batch."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db.models import Q

from accounts.models import Organization
from apikeys.models import ApiKey
from usage.alerts import spend_alerts_check


class Command(BaseCommand):
    help = "Send the spend and low-balance alerts every organization has earned and not yet been sent (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        capped_keys = ApiKey.objects.filter(revoked_at__isnull=True).filter(
            Q(spend_cap_daily_micros__isnull=False) | Q(spend_cap_monthly_micros__isnull=False)
        )
        ids = Organization.objects.filter(
            Q(spend_cap_daily_micros__isnull=False)
            | Q(spend_cap_monthly_micros__isnull=False)
            | Q(plan__prepaid=True)
            | Q(pk__in=capped_keys.values("organization_id"))
        ).values_list("pk", flat=True)
        sent = spend_alerts_check(organization_ids=list(ids))
        self.stdout.write(f"{len(sent)} alert(s) sent")
