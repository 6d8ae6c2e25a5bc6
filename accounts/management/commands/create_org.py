"""manage.py create_org: an operator's door to organization_create."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.text import slugify

from accounts.services import OrganizationExists, organization_create, user_get_or_create
from billing.services import UnknownPlan


class Command(BaseCommand):
    help = "Create an organization, optionally with an owner (created if missing)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--slug", required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument("--plan", default=None, help="plan slug (default: the default plan, free)")
        parser.add_argument("--owner-email", default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        slug = options["slug"].strip()
        if slugify(slug) != slug:
            raise CommandError(f"--slug must be lowercase letters, digits and dashes, got {slug!r}")
        owner = None
        if options["owner_email"]:
            owner, _ = user_get_or_create(email=options["owner_email"])
        try:
            org = organization_create(slug=slug, name=options["name"], plan_slug=options["plan"], owner=owner)
        except (OrganizationExists, UnknownPlan) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"created organization {org.slug} (plan {org.plan.slug if org.plan else 'none'})")
