"""The portal's own flows over the domain services: a new user's personal organization at sign-up."""

from __future__ import annotations

import secrets

from django.utils.text import slugify

from accounts.models import Organization, User
from accounts.services import OrganizationExists
from billing.models import Plan
from billing.services import organization_create


def _personal_slug(email: str) -> str:
    base = slugify(email.split("@", 1)[0])[:40] or "org"
    return f"{base}-{secrets.token_hex(3)}"


def personal_organization_create(*, user: User) -> Organization:
    """A new user's own organization on the `free` plan, with them as its owner."""
    local = user.email.split("@", 1)[0]
    plan_slug = "free" if Plan.objects.filter(slug="free").exists() else None  # else the default plan
    for _ in range(5):  # a random suffix; retry the rare collision instead of failing a sign-up
        try:
            return organization_create(
                slug=_personal_slug(user.email), name=f"{local}'s workspace", plan_slug=plan_slug, owner=user
            )
        except OrganizationExists:
            continue
    raise OrganizationExists("could not find a free slug for a personal organization")
