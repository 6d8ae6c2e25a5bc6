"""manage.py create_org: an operator's door to organization_create (in billing: an organization starts on a plan)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import CharField, Model
from django.utils.text import slugify

from accounts.models import Organization, User
from accounts.services import OrganizationExists, user_get_or_create
from billing.services import UnknownPlan, organization_create


class Command(BaseCommand):
    help = "Create an organization, optionally with an owner (created if missing)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--slug", required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument("--plan", default=None, help="plan slug (default: the default plan, free)")
        parser.add_argument("--owner-email", default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        slug = options["slug"].strip()
        if not slug or slugify(slug) != slug:
            raise CommandError(f"--slug must be lowercase letters, digits and dashes, got {slug!r}")
        slug_max = _max_length(Organization, "slug")
        if len(slug) > slug_max:
            raise CommandError(f"--slug must be at most {slug_max} characters")
        name = options["name"].strip()
        name_max = _max_length(Organization, "name")
        if not name or len(name) > name_max:
            raise CommandError(f"--name must be 1 to {name_max} characters")
        email = (options["owner_email"] or "").strip()
        if email:
            try:
                validate_email(email)
                if len(email) > _max_length(User, "email"):
                    raise ValidationError("too long")
            except ValidationError:
                raise CommandError(f"--owner-email is not a valid email address: {options['owner_email']!r}") from None
        try:
            with transaction.atomic():  # a refused organization leaves no new owner behind
                owner = user_get_or_create(email=email)[0] if email else None
                org = organization_create(slug=slug, name=name, plan_slug=options["plan"], owner=owner)
        except (OrganizationExists, UnknownPlan) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"created organization {org.slug} (plan {org.plan.slug if org.plan else 'none'})")


def _max_length(model: type[Model], name: str) -> int:
    field = model._meta.get_field(name)
    assert isinstance(field, CharField) and field.max_length is not None  # each is one; Django requires its max_length
    return field.max_length
