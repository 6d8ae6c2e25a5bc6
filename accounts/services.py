"""Writes for organizations and memberships.

accounts is the lowest app (docs/ARCHITECTURE.md): workflows that also touch a plan or keys live above it, in the
services of the app that owns the other half (billing.services.organization_create: an organization with its
subscription; apikeys.services.user_delete: an account with its keys), and call these.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, TypedDict

from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from accounts.models import Invitation, Membership, MembershipEvent, Organization, User
from accounts.time_zones import time_zone_parse


class OrganizationExists(ValueError):
    pass


def organization_insert(*, slug: str, name: str, plan_id: int | None = None, owner: User | None = None) -> Organization:
    """The organization row and its owner's membership; billing.services.organization_create is the door that also
    picks its plan and starts the subscription. Call inside that transaction."""
    if Organization.objects.filter(slug=slug).exists():
        raise OrganizationExists(f"an organization with slug {slug!r} already exists")
    org = Organization.objects.create(slug=slug, name=name, plan_id=plan_id)
    if owner is not None:
        Membership.objects.create(user=owner, organization=org, role=Membership.Role.OWNER)
    return org


def user_get_or_create(*, email: str) -> tuple[User, bool]:
    email = email.strip().lower()
    user = User.objects.filter(email=email).first()
    if user:
        return user, False
    return User.objects.create_user(email=email, password=None), True


# --- Invitations ------------------------------------------------------------------------------------------------

INVITATION_TTL_DAYS = 14


class InvitationError(ValueError):
    pass


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


def _verified_address(user: User, email: str) -> bool:
    from allauth.account.models import EmailAddress

    return EmailAddress.objects.filter(user=user, email__iexact=email, verified=True).exists()


def _answerable(invitation: Invitation, user: User) -> Invitation:
    """The invitation locked for an answer from this user: pending, and to one of their verified addresses."""
    locked = Invitation.objects.select_for_update().select_related("organization").get(pk=invitation.pk)
    if not locked.is_pending:
        raise InvitationError("This invitation expired, was cancelled or was already answered.")
    # The invitation names an address, not a person: only someone who proved they hold it may answer.
    if not _verified_address(user, locked.email):
        raise InvitationError("This invitation is for an address you have not confirmed on your account.")
    return locked


@transaction.atomic
def invitation_accept(*, invitation: Invitation, user: User, source_ip: str | None = None) -> Membership:
    """Join the inviting organization with the invitation's role; a membership the user already has is kept as is."""
    locked = _answerable(invitation, user)
    membership, made = Membership.objects.get_or_create(
        user=user, organization_id=locked.organization_id, defaults={"role": locked.role}
    )
    locked.accepted_at = timezone.now()
    locked.accepted_by = user
    locked.save(update_fields=["accepted_at", "accepted_by"])
    if made:
        _membership_event(membership, MembershipEvent.Action.JOINED, new_role=membership.role, actor=user, source_ip=source_ip)
    return membership


@transaction.atomic
def invitation_decline(*, invitation: Invitation, user: User) -> Invitation:
    locked = _answerable(invitation, user)
    locked.declined_at = timezone.now()
    locked.save(update_fields=["declined_at"])
    return locked


# --- Members: roles, removal, leaving, ownership ----------------------------------------------------------------
# Every change locks the organization's row first, so two owners acting at once cannot leave it without one.

log = logging.getLogger("accounts.audit")


class MembershipError(ValueError):
    """A membership change that is not allowed; the message says why, to the person who asked."""


class NotAnOwner(MembershipError):
    pass


class LastOwner(MembershipError):
    pass


def _membership_event(
    membership: Membership,
    action: str,
    *,
    old_role: str = "",
    new_role: str = "",
    actor: User | None,
    actor_label: str = "",
    source_ip: str | None = None,
) -> MembershipEvent:
    event = MembershipEvent.objects.create(
        organization_id=membership.organization_id,
        user_id=membership.user_id,
        email=membership.user.email,
        action=action,
        old_role=old_role,
        new_role=new_role,
        actor=actor,
        actor_label=actor_label,
        source_ip=source_ip,
    )
    log.info(
        "membership %s: %s in organization %s (%s -> %s) by %s",
        action, membership.user.email, membership.organization_id, old_role or "-", new_role or "-",
        actor.email if actor is not None else actor_label or "-",
    )  # fmt: skip
    return event


def _locked(membership: Membership) -> tuple[Membership, int]:
    """The membership re-read under its organization's lock, and how many owners the organization has now."""
    Organization.objects.select_for_update().filter(pk=membership.organization_id).first()
    current = Membership.objects.select_related("user").filter(pk=membership.pk).first()
    if current is None:
        raise MembershipError("That person is no longer a member.")
    owners = Membership.objects.filter(organization_id=current.organization_id, role=Membership.Role.OWNER).count()
    return current, owners


def _require_owner(actor: User, organization_id: int) -> Membership:
    mine = Membership.objects.filter(user=actor, organization_id=organization_id).first()
    if mine is None or mine.role != Membership.Role.OWNER:
        raise NotAnOwner("Only owners of this organization can do that.")
    return mine


@transaction.atomic
def membership_remove(*, membership: Membership, actor: User, source_ip: str | None = None) -> None:
    current, owners = _locked(membership)
    _require_owner(actor, current.organization_id)
    if current.role == Membership.Role.OWNER and owners == 1:
        raise LastOwner(f"{current.user.email} is the last owner: make someone else owner first.")
    _membership_event(current, MembershipEvent.Action.REMOVED, old_role=current.role, actor=actor, source_ip=source_ip)
    current.delete()  # portal.live closes the member's live feeds of this organization once this commits


@transaction.atomic
def membership_change_role(*, membership: Membership, role: str, actor: User, source_ip: str | None = None) -> Membership:
    if role not in Membership.Role.values:
        raise MembershipError("A role is owner, admin or member.")
    current, owners = _locked(membership)
    _require_owner(actor, current.organization_id)
    if current.role == role:
        return current
    if current.role == Membership.Role.OWNER and owners == 1:
        raise LastOwner("The last owner cannot step down: make someone else owner first.")
    old = current.role
    current.role = role
    current.save(update_fields=["role"])
    _membership_event(current, MembershipEvent.Action.ROLE_CHANGED, old_role=old, new_role=role, actor=actor, source_ip=source_ip)
    return current


@transaction.atomic
def organization_transfer_ownership(
    *, organization: Organization, to_membership: Membership, actor: User, step_down: bool = False, source_ip: str | None = None
) -> Membership:
    """Make another member owner; with `step_down` the acting owner becomes an admin in the same transaction."""
    if to_membership.organization_id != organization.pk:
        raise MembershipError("That person is not a member of this organization.")
    target, _ = _locked(to_membership)
    mine = _require_owner(actor, organization.pk)
    if target.pk == mine.pk:
        raise MembershipError("Choose another member to hand the organization to.")
    if target.role != Membership.Role.OWNER:
        old = target.role
        target.role = Membership.Role.OWNER
        target.save(update_fields=["role"])
        _membership_event(
            target, MembershipEvent.Action.ROLE_CHANGED, old_role=old, new_role=target.role, actor=actor, source_ip=source_ip
        )
    if step_down:
        mine.role = Membership.Role.ADMIN
        mine.save(update_fields=["role"])
        _membership_event(
            mine,
            MembershipEvent.Action.ROLE_CHANGED,
            old_role=Membership.Role.OWNER,
            new_role=mine.role,
            actor=actor,
            source_ip=source_ip,
        )
    return target


@transaction.atomic
def membership_leave(*, membership: Membership, source_ip: str | None = None) -> None:
    current, owners = _locked(membership)
    if current.role == Membership.Role.OWNER and owners == 1:
        raise LastOwner(f"You are the last owner of {current.organization.name}: make someone else owner before you leave.")
    _membership_event(current, MembershipEvent.Action.LEFT, old_role=current.role, actor=current.user, source_ip=source_ip)
    current.delete()


# --- Deleting an account --------------------------------------------------------------------------------------


if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations  # a dev requirement: for the type checker only

    class _MemberCounts(TypedDict):
        owners: int
        members: int

    # An organization as organizations_solely_owned reads it, with its counts (the views show `members`).
    OwnedOrganization = WithAnnotations[Organization, _MemberCounts]


@dataclass(frozen=True, slots=True)
class DeletionImpact:
    """What deleting an account does to the organizations it alone owns."""

    closing: list[OwnedOrganization]  # no other member: their active keys are revoked with the account
    blocking: list[OwnedOrganization]  # other members would be left without an owner: hand these over first


def organizations_solely_owned(*, user: User) -> list[OwnedOrganization]:
    """Organizations in which this user is the only owner, each with `members`: how many people it has."""
    owned = Membership.objects.filter(user=user, role=Membership.Role.OWNER).values("organization_id")
    # pk__in rather than a join on memberships, so that the counts below see every membership, not only this one.
    return list(
        Organization.objects.filter(pk__in=owned)
        .annotate(
            owners=Count("memberships", filter=Q(memberships__role=Membership.Role.OWNER), distinct=True),
            members=Count("memberships", distinct=True),
        )
        .filter(owners=1)
        .order_by("name")
    )


def user_deletion_impact(*, user: User) -> DeletionImpact:
    orgs = organizations_solely_owned(user=user)
    return DeletionImpact(closing=[o for o in orgs if o.members == 1], blocking=[o for o in orgs if o.members > 1])


def user_deletion_lock(*, user: User) -> DeletionImpact:
    """Lock every organization the user belongs to and say what deleting the account does to them; LastOwner while
    the user is the only owner of an organization that has other members. Call inside the deletion's transaction
    (apikeys.services.user_delete), so nobody joins or leaves those organizations until the account is gone."""
    mine = Membership.objects.filter(user=user).values("organization_id")
    list(Organization.objects.select_for_update().filter(pk__in=mine).order_by("pk").values_list("pk", flat=True))
    impact = user_deletion_impact(user=user)
    if impact.blocking:
        names = ", ".join(org.name for org in impact.blocking)
        raise LastOwner(f"You are the only owner of {names}: make another member owner before you delete your account.")
    return impact


def user_account_delete(*, user: User, source_ip: str | None = None) -> None:
    """The account's half of a deletion: a `left` event per membership, then the user. Only inside
    apikeys.services.user_delete, after user_deletion_lock and the closing organizations' keys are revoked."""
    for membership in Membership.objects.filter(user=user).select_related("user"):
        _membership_event(
            membership,
            MembershipEvent.Action.LEFT,
            old_role=membership.role,
            actor=None,
            actor_label="account deleted",
            source_ip=source_ip,
        )
    user.delete()


def user_update_profile(*, user: User, name: str, time_zone: str | None = None) -> User:
    """The user's name, and their time zone when given (an IANA name: BadTimeZone otherwise)."""
    user.name = name.strip()[:150]
    fields = ["name"]
    if time_zone is not None:
        time_zone_parse(time_zone)
        user.time_zone = time_zone
        fields.append("time_zone")
    user.save(update_fields=fields)
    return user
