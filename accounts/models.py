"""Users log in by email; every API key and usage row belongs to an organization."""

from __future__ import annotations

from typing import Any, ClassVar

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.utils import timezone


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create(self, email: str, password: str | None, **extra: Any) -> User:
        if not email:
            raise ValueError("an email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.update(is_staff=True, is_superuser=True)
        return self._create(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=150, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)
    time_zone = models.CharField(max_length=64, default="UTC", help_text="an IANA name; the portal shows times in it")

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    def __str__(self) -> str:
        return self.email


class Organization(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    plan = models.ForeignKey("billing.Plan", null=True, blank=True, on_delete=models.PROTECT, related_name="organizations")
    # Spend caps in micro-units (1e-6 of a dollar) per UTC day and calendar month (UTC); empty: no cap.
    spend_cap_daily_micros = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="micro-units per UTC day; empty: no cap"
    )
    spend_cap_monthly_micros = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="micro-units per calendar month (UTC); empty: no cap"
    )
    # Where spend and balance alerts are POSTed, signed with the secret (empty URL: e-mail only).
    alert_webhook_url = models.URLField(max_length=500, blank=True)
    alert_webhook_secret = models.CharField(max_length=64, blank=True, help_text="signs alert webhooks (HMAC-SHA256)")
    stripe_customer_id = models.CharField(max_length=64, blank=True, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.slug

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "organization"], name="uniq_membership")]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"


class Invitation(models.Model):
    """An owner's invitation by email: a user who holds that address, verified, may accept or decline it."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Membership.Role.choices, default=Membership.Role.MEMBER)
    token = models.CharField(max_length=64, unique=True, help_text="the link's path part; grants nothing by itself")
    invited_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    cancelled_at = models.DateTimeField(null=True, blank=True)
    declined_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["email"], name="invitation_email")]

    def __str__(self) -> str:
        return f"{self.email} to {self.organization} ({self.role})"

    @property
    def is_pending(self) -> bool:
        return (
            self.accepted_at is None
            and self.cancelled_at is None
            and self.declined_at is None
            and self.expires_at > timezone.now()
        )


class MembershipEvent(models.Model):
    """Audit of who joined, left, was removed from or changed role in an organization, by whom and from where."""

    class Action(models.TextChoices):
        JOINED = "joined", "Joined"
        ROLE_CHANGED = "role_changed", "Role changed"
        REMOVED = "removed", "Removed"
        LEFT = "left", "Left"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="membership_events")
    user = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    email = models.EmailField(help_text="the member's address at the time: kept when the account goes")
    action = models.CharField(max_length=16, choices=Action.choices)
    old_role = models.CharField(max_length=16, choices=Membership.Role.choices, blank=True)
    new_role = models.CharField(max_length=16, choices=Membership.Role.choices, blank=True)
    actor = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_label = models.CharField(max_length=200, blank=True, help_text="e.g. 'account deleted' when no one else acted")
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.email} {self.action} in {self.organization}"
