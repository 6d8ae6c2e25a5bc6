"""Helpers shared by the portal tests: users with verified addresses, organizations with roles, a clean slate."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from django.test import Client

from accounts.models import Membership, Organization, User
from billing.services import organization_create

PASSWORD = "correct-horse-battery-9"


def ensure_site_and_plans() -> None:
    """What migrations seed and a transactional test's flush removes: the Site allauth mails from, and the plans."""
    from django.contrib.sites.models import Site

    from billing.services import plans_seed_defaults

    Site.objects.update_or_create(pk=1, defaults={"domain": "testserver", "name": "Cortensor"})
    Site.objects.clear_cache()
    plans_seed_defaults()


@pytest.fixture
def portal_settings(settings):  # noqa: ANN001, ANN201
    """Fresh rate-limit counters for each test (a prefix of its own), allauth's own limits off unless a test wants them,
    and a fast password hasher."""
    settings.RATELIMIT_CACHE_PREFIX = f"rl-test-{uuid.uuid4().hex}:"
    settings.ACCOUNT_RATE_LIMITS = False
    settings.PORTAL_PUBLIC_BASE_URL = "https://api.example.test"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # the real one costs half a second a user
    return settings


def make_user(email: str, *, name: str = "", password: str = PASSWORD, verified: bool = True) -> User:
    from allauth.account.models import EmailAddress

    user = User.objects.create_user(email=email, password=password, name=name)
    EmailAddress.objects.create(user=user, email=email, verified=verified, primary=True)
    return user


def make_org(slug: str, *, owner: User | None = None, plan: str = "free") -> Organization:
    return organization_create(slug=slug, name=slug.title(), plan_slug=plan, owner=owner)


def add_member(org: Organization, user: User, role: str) -> Membership:
    return Membership.objects.create(organization=org, user=user, role=role)


@dataclass
class Team:
    """Two organizations: acme (owner, admin, member) and globex (its own owner), each with a key."""

    acme: Organization
    globex: Organization
    owner: User
    admin: User
    member: User
    outsider: User
    acme_key_id: int
    globex_key_id: int

    def client(self, user: User | None) -> Client:
        client = Client()
        if user is not None:
            client.force_login(user)
        return client


def make_team() -> Team:
    from apikeys.services import apikey_create

    owner = make_user("owner@acme.test", name="Olivia Owner")
    admin = make_user("admin@acme.test", name="Adam Admin")
    member = make_user("member@acme.test", name="Mia Member")
    outsider = make_user("boss@globex.test", name="Gus Globex")
    acme = make_org("acme", owner=owner)
    add_member(acme, admin, Membership.Role.ADMIN)
    add_member(acme, member, Membership.Role.MEMBER)
    globex = make_org("globex", owner=outsider)
    acme_key = apikey_create(organization=acme, name="acme backend", created_by=owner).api_key
    globex_key = apikey_create(organization=globex, name="globex backend", created_by=outsider).api_key
    return Team(acme, globex, owner, admin, member, outsider, acme_key.pk, globex_key.pk)
