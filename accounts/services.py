"""Writes for organizations and memberships."""

from __future__ import annotations

from django.db import transaction

from accounts.models import Membership, Organization, User
from billing.services import plan_get_default, subscription_start


class OrganizationExists(ValueError):
    pass


@transaction.atomic
def organization_create(*, slug: str, name: str, plan_slug: str | None = None, owner: User | None = None) -> Organization:
    if Organization.objects.filter(slug=slug).exists():
        raise OrganizationExists(f"an organization with slug {slug!r} already exists")
    plan = plan_get_default(slug=plan_slug)
    org = Organization.objects.create(slug=slug, name=name, plan=plan)
    if plan is not None:
        subscription_start(organization=org, plan=plan)
    if owner is not None:
        Membership.objects.create(user=owner, organization=org, role=Membership.Role.OWNER)
    return org


def user_get_or_create(*, email: str) -> tuple[User, bool]:
    email = email.strip().lower()
    user = User.objects.filter(email=email).first()
    if user:
        return user, False
    return User.objects.create_user(email=email, password=None), True
