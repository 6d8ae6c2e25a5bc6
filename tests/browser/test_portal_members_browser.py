"""Invitations and members in a real browser: an invitation waits for Accept or Decline, and a removed member's open
usage page loses its live feed at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.support import CHROMIUM, DESKTOP, PortalServer, shot
from tests.support.portal import PASSWORD

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
)

OWNER, INVITEE = "olga@example.com", "ivan@example.com"


def sign_in(page, portal: PortalServer, email: str) -> None:  # noqa: ANN001
    page.goto(f"{portal.url}/accounts/login/")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{portal.url}/portal/api-keys")


def invite(page, portal: PortalServer, email: str) -> None:  # noqa: ANN001
    page.goto(f"{portal.url}/portal/organization")
    page.fill("input[name=email]", email)
    page.click("#invitations button[type=submit]")
    page.wait_for_selector(f"#invitations td:has-text('{email}')")


def test_invitation_is_declined_then_accepted_and_a_removed_member_loses_the_live_feed(portal: PortalServer, browser) -> None:  # noqa: ANN001
    from accounts.models import Membership
    from tests.support.portal import make_org, make_user

    make_org("acme", owner=make_user(OWNER, name="Olga Owner"))
    make_org("ivans-own", owner=make_user(INVITEE, name="Ivan Invitee"))
    owner_context, invitee_context = browser.new_context(viewport=DESKTOP), browser.new_context(viewport=DESKTOP)
    owner, invitee = owner_context.new_page(), invitee_context.new_page()
    sign_in(owner, portal, OWNER)
    invite(owner, portal, INVITEE)

    # Signing in joins nothing: the invitation waits on every page, with Accept and Decline.
    sign_in(invitee, portal, INVITEE)
    banner = invitee.wait_for_selector("#pending-invitations .invite")
    assert "Olga Owner invited you (ivan@example.com) to join Acme as member." in banner.inner_text()
    assert "Ivans-Own" in invitee.inner_text(".org-name")
    shot(invitee, "invitation-banner")
    invitee.click("#pending-invitations button:has-text('Decline')")
    invitee.wait_for_selector(".alert-success:has-text('You declined the invitation to Acme.')")
    assert invitee.query_selector("#pending-invitations") is None
    assert not Membership.objects.filter(user__email=INVITEE, organization__slug="acme").exists()

    # Asked again, accepted.
    invite(owner, portal, INVITEE)
    invitee.goto(f"{portal.url}/portal/usage")
    invitee.click("#pending-invitations button:has-text('Accept')")
    invitee.wait_for_selector(".alert-success:has-text('You joined Acme as member.')")
    assert invitee.url == f"{portal.url}/portal/organization"
    assert "Olga Owner" in invitee.inner_text("#members-table")
    shot(invitee, "invitation-accepted")

    # The member watches Acme's usage live; the owner removes them after confirming.
    invitee.goto(f"{portal.url}/portal/usage")
    invitee.wait_for_selector("#live-status[data-state=open]")
    owner.goto(f"{portal.url}/portal/organization")
    shot(owner, "organization-owner")
    owner.click(f"#members-table tr[data-member='{INVITEE}'] a:has-text('Remove')")
    owner.wait_for_selector("h1:has-text('Remove Ivan Invitee from Acme?')")
    shot(owner, "member-remove-confirm")
    owner.click("button:has-text('Remove member')")
    owner.wait_for_selector(".alert-success:has-text('ivan@example.com is no longer a member of Acme.')")
    assert INVITEE not in owner.inner_text("#members-table")
    shot(owner, "member-removed")

    # The member's open page loses the feed at once and says why; their next page is their own organization.
    invitee.wait_for_selector("#live-status .live-label:has-text('No longer a member of this organization')", timeout=10_000)
    shot(invitee, "member-removed-live")
    invitee.goto(f"{portal.url}/portal/api-keys")
    assert "You are no longer a member of the organization you were working in" in invitee.inner_text(".messages")
    assert "Ivans-Own" in invitee.inner_text(".org-name") or "Ivans-Own" in invitee.inner_text(".org-switch")
    owner_context.close()
    invitee_context.close()
