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


# --- Portal: personal organizations, invitations, account deletion -----------------------------
# Added for the customer portal; the functions above are unchanged.

import secrets  # noqa: E402
from datetime import timedelta  # noqa: E402

from django.db.models import Count, Q  # noqa: E402
from django.utils import timezone  # noqa: E402
from django.utils.text import slugify  # noqa: E402

from accounts.models import Invitation  # noqa: E402
from apikeys.services import apikey_list, apikey_revoke  # noqa: E402
from billing.models import Plan  # noqa: E402

INVITATION_TTL_DAYS = 14


class InvitationError(ValueError):
    pass


def _personal_slug(email: str) -> str:
    base = slugify(email.split("@", 1)[0])[:40] or "org"
    return f"{base}-{secrets.token_hex(3)}"


def personal_organization_create(*, user: User) -> Organization:
    """A new user's own organization on the `free` plan, with them as its owner."""
    local = user.email.split("@", 1)[0]
    plan_slug = "free" if Plan.objects.filter(slug="free").exists() else None  # else the default plan
    for _ in range(5):  # a random suffix; retry the rare collision instead of failing a sign-up
        try:
            return organization_create(slug=_personal_slug(user.email), name=f"{local}'s workspace", plan_slug=plan_slug, owner=user)
        except OrganizationExists:
            continue
    raise OrganizationExists("could not find a free slug for a personal organization")


def invitation_create(*, organization: Organization, email: str, role: str, invited_by: User | None) -> Invitation:
    email = email.strip().lower()
    if role not in {Membership.Role.ADMIN, Membership.Role.MEMBER}:
        raise InvitationError("an invitation gives the admin or the member role")
    if Membership.objects.filter(organization=organization, user__email__iexact=email).exists():
        raise InvitationError(f"{email} is already a member of {organization.name}")
    now = timezone.now()
    # A second invitation to the same address replaces the first, so only one link works.
    Invitation.objects.filter(organization=organization, email=email, accepted_at__isnull=True, cancelled_at__isnull=True).update(
        cancelled_at=now
    )
    return Invitation.objects.create(
        organization=organization,
        email=email,
        role=role,
        token=secrets.token_urlsafe(24),
        invited_by=invited_by,
        created_at=now,
        expires_at=now + timedelta(days=INVITATION_TTL_DAYS),
    )


def invitation_cancel(*, invitation: Invitation) -> Invitation:
    if invitation.accepted_at is None and invitation.cancelled_at is None:
        invitation.cancelled_at = timezone.now()
        invitation.save(update_fields=["cancelled_at"])
    return invitation


@transaction.atomic
def invitations_accept(*, user: User, emails: list[str]) -> list[Membership]:
    """Turn pending invitations to these (verified) addresses into memberships; an existing membership is kept as is."""
    now = timezone.now()
    wanted = {e.strip().lower() for e in emails if e}
    if not wanted:
        return []
    created: list[Membership] = []
    pending = (
        Invitation.objects.select_for_update()
        .filter(email__in=wanted, accepted_at__isnull=True, cancelled_at__isnull=True, expires_at__gt=now)
        .order_by("created_at")
    )
    for invitation in pending:
        membership, made = Membership.objects.get_or_create(
            user=user, organization_id=invitation.organization_id, defaults={"role": invitation.role}
        )
        if made:
            created.append(membership)
        invitation.accepted_at = now
        invitation.accepted_by = user
        invitation.save(update_fields=["accepted_at", "accepted_by"])
    return created


def organizations_solely_owned(*, user: User) -> list[Organization]:
    """Organizations in which this user is the only owner: what deleting the account leaves without one."""
    owned = Membership.objects.filter(user=user, role=Membership.Role.OWNER).values("organization_id")
    # pk__in rather than a join on memberships, so that the count below sees every owner, not only this one.
    return list(
        Organization.objects.filter(pk__in=owned)
        .annotate(owners=Count("memberships", filter=Q(memberships__role=Membership.Role.OWNER), distinct=True))
        .filter(owners=1)
        .order_by("name")
    )


@transaction.atomic
def user_delete(*, user: User, source_ip: str | None = None) -> int:
    """Delete an account; the active keys of organizations it alone owned are revoked first. Returns how many."""
    revoked = 0
    now = timezone.now()
    for org in organizations_solely_owned(user=user):
        for key in apikey_list(organization=org).filter(revoked_at__isnull=True).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now)):
            apikey_revoke(api_key=key, actor=user, actor_label="account deleted", source_ip=source_ip)
            revoked += 1
    user.delete()
    return revoked


def user_update_profile(*, user: User, name: str) -> User:
    user.name = name.strip()[:150]
    user.save(update_fields=["name"])
    return user
