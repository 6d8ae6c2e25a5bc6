"""Reads for the portal's account pages that more than one view needs."""

from __future__ import annotations

from allauth.account.models import EmailAddress
from django.db.models import QuerySet
from django.db.models.functions import Lower
from django.utils import timezone

from accounts.models import Invitation, User


def invitations_pending(*, user: User) -> QuerySet[Invitation]:
    """Pending invitations to one of the user's verified addresses, from organizations they are not in yet."""
    verified = EmailAddress.objects.filter(user=user, verified=True).annotate(address=Lower("email")).values("address")
    return Invitation.objects.filter(
        email__in=verified,
        accepted_at__isnull=True,
        cancelled_at__isnull=True,
        declined_at__isnull=True,
        expires_at__gt=timezone.now(),
    ).exclude(organization__memberships__user=user)


def invitations_pending_for(*, user: User) -> list[Invitation]:
    return list(invitations_pending(user=user).select_related("organization", "invited_by").order_by("created_at", "id"))
