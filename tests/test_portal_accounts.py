"""Sign-up, verification, sign-in limits, invitations, the profile (sessions, deleting an account) and the organization page."""

from __future__ import annotations

import re

import pytest
from allauth.account.models import EmailAddress
from allauth.usersessions.models import UserSession
from django.core import mail
from django.test import Client

from accounts.models import Invitation, Membership, MembershipEvent, Organization, User
from apikeys.models import ApiKey
from apikeys.services import apikey_create
from tests.support.portal import (  # noqa: F401
    PASSWORD,
    Team,
    add_member,
    ensure_site_and_plans,
    make_org,
    make_team,
    make_user,
    portal_settings,
)

pytestmark = pytest.mark.django_db

LINK = re.compile(r"https?://\S+")


@pytest.fixture(autouse=True)
def _portal(portal_settings) -> None:  # noqa: ANN001, F811
    ensure_site_and_plans()


def sign_up(client: Client, email: str, password: str = PASSWORD) -> object:
    return client.post("/accounts/signup/", {"email": email, "password1": password, "password2": password})


def confirm_from_mail(client: Client, message: mail.EmailMessage) -> object:
    link = next(url for url in LINK.findall(message.body) if "/accounts/confirm-email/" in url)
    path = link.split("testserver", 1)[1]
    return client.post(path, follow=True)


def sign_in(client: Client, email: str, password: str = PASSWORD) -> object:
    return client.post("/accounts/login/", {"login": email, "password": password})


# --- Sign-up and verification ---------------------------------------------------------------------------


def test_sign_up_makes_a_personal_free_organization_and_needs_a_verified_address() -> None:
    client = Client()
    response = sign_up(client, "new.dev@example.com")
    assert response.status_code == 302 and response["Location"] == "/accounts/confirm-email/"
    user = User.objects.get(email="new.dev@example.com")
    membership = Membership.objects.select_related("organization__plan").get(user=user)
    assert membership.role == Membership.Role.OWNER
    assert membership.organization.plan.slug == "free"
    assert membership.organization.name == "new.dev's workspace"
    assert membership.organization.slug.startswith("newdev-")
    # Not signed in until the address is confirmed.
    assert client.get("/portal/api-keys").status_code == 302
    assert sign_in(Client(), "new.dev@example.com").url == "/accounts/confirm-email/"
    message = mail.outbox[0]  # (the refused sign-in sent the link once more)
    assert message.subject == "[Cortensor] Please Confirm Your Email Address"
    assert "Hello from Cortensor!" in message.body
    page = confirm_from_mail(client, message)
    assert page.redirect_chain[-1][0] == "/portal/"  # a new account lands on the first-run checklist
    assert EmailAddress.objects.get(user=user).verified
    assert "new.dev&#x27;s workspace" in page.content.decode()


def test_password_reset_mails_a_working_link() -> None:
    make_user("forgetful@example.com")
    client = Client()
    response = client.post("/accounts/password/reset/", {"email": "forgetful@example.com"})
    assert response.status_code == 302
    link = next(url for url in LINK.findall(mail.outbox[-1].body) if "/accounts/password/reset/key/" in url)
    path = link.split("testserver", 1)[1]
    form = client.get(path, follow=True)
    assert form.status_code == 200
    done = client.post(form.redirect_chain[-1][0], {"password1": "a-new-pass-phrase-7", "password2": "a-new-pass-phrase-7"})
    assert done.status_code == 302
    assert User.objects.get(email="forgetful@example.com").check_password("a-new-pass-phrase-7")


def test_sign_in_is_rate_limited_per_ip(settings) -> None:  # noqa: ANN001
    settings.PORTAL_RATELIMIT_SIGNIN = "3/m"
    make_user("target@example.com")
    client = Client()
    for _ in range(3):
        assert sign_in(client, "target@example.com", "wrong-password").status_code == 200  # the form, with its error
    limited = sign_in(client, "target@example.com", PASSWORD)  # even the right password, from this address, now
    assert limited.status_code == 429
    assert int(limited["Retry-After"]) > 0
    assert "Too many attempts" in limited.content.decode()
    assert sign_in(Client(REMOTE_ADDR="10.9.8.7"), "target@example.com").status_code == 302  # another address is fine


def test_sign_up_is_rate_limited_per_ip(settings) -> None:  # noqa: ANN001
    settings.PORTAL_RATELIMIT_SIGNUP = "2/h"
    client = Client()
    assert sign_up(client, "a1@example.com").status_code == 302
    assert sign_up(client, "a2@example.com").status_code == 302
    assert sign_up(client, "a3@example.com").status_code == 429
    assert not User.objects.filter(email="a3@example.com").exists()


def test_sign_in_lands_on_the_keys_page() -> None:
    make_user("plain@example.com")
    response = sign_in(Client(), "plain@example.com")
    assert response.status_code == 302 and response["Location"] == "/portal/api-keys"


# --- Invitations --------------------------------------------------------------------------------------------


@pytest.fixture
def team() -> Team:
    return make_team()


def test_owner_invites_by_email_and_the_invitee_accepts_after_sign_up(team: Team) -> None:
    owner = team.client(team.owner)
    response = owner.post("/portal/organization", {"email": "Newbie@Example.com", "role": "admin"})
    assert response.status_code == 302
    invitation = Invitation.objects.get(organization=team.acme)
    assert invitation.email == "newbie@example.com" and invitation.role == "admin" and invitation.is_pending
    message = mail.outbox[-1]
    assert message.to == ["newbie@example.com"] and "Acme" in message.subject
    assert f"http://testserver/portal/invitations/{invitation.token}" in message.body
    assert "newbie@example.com" in owner.get("/portal/organization").content.decode()  # listed as pending

    invitee = Client()
    landing = invitee.get(f"/portal/invitations/{invitation.token}")
    assert landing.status_code == 200 and "Join Acme" in landing.content.decode()
    sign_up(invitee, "newbie@example.com")
    user = User.objects.get(email="newbie@example.com")
    confirm_from_mail(invitee, mail.outbox[-1])
    # Confirming the address joins nothing: the portal asks.
    assert not Membership.objects.filter(user=user, organization=team.acme).exists()
    page = invitee.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()
    assert "invited you (newbie@example.com) to join <strong>Acme</strong> as admin" in page
    assert "acme backend" not in page  # still in their own workspace
    landing = invitee.get(f"/portal/invitations/{invitation.token}").content.decode()
    assert "Accept and join" in landing and "Decline" in landing
    assert invitee.get(f"/portal/invitations/{invitation.pk}/accept").status_code == 405  # never on a GET
    accepted = invitee.post(f"/portal/invitations/{invitation.pk}/accept", follow=True)
    assert accepted.redirect_chain[-1][0] == "/portal/organization"
    assert "You joined Acme as admin." in accepted.content.decode()
    membership = Membership.objects.get(user=user, organization=team.acme)
    assert membership.role == "admin"
    invitation.refresh_from_db()
    assert invitation.accepted_by == user and invitation.accepted_at is not None
    assert MembershipEvent.objects.get(organization=team.acme, user=user).action == "joined"
    # The new member works in the organization they joined, and the banner is gone.
    page = invitee.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()
    assert "acme backend" in page and "pending-invitations" not in page
    assert invitee.get(f"/portal/invitations/{invitation.token}").status_code == 404  # used up


def test_signing_in_asks_instead_of_joining_and_switching(team: Team) -> None:
    invitation = Invitation.objects.create(
        organization=team.globex,
        email=team.member.email,
        role="member",
        token="tok-1",
        invited_by=team.outsider,
        expires_at=team.globex.created_at.replace(year=2100),
    )
    client = Client()
    assert sign_in(client, team.member.email).status_code == 302
    assert not Membership.objects.filter(user=team.member, organization=team.globex).exists()
    page = client.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()
    assert "acme backend" in page and "globex backend" not in page  # still acting for acme
    assert "Gus Globex invited you (member@acme.test) to join <strong>Globex</strong> as member." in page
    declined = client.post(f"/portal/invitations/{invitation.pk}/decline", {"next": "/portal/usage"})
    assert declined.status_code == 302 and declined["Location"] == "/portal/usage"
    invitation.refresh_from_db()
    assert invitation.declined_at is not None and not invitation.is_pending and invitation.accepted_at is None
    assert not Membership.objects.filter(user=team.member, organization=team.globex).exists()
    assert "pending-invitations" not in client.get("/portal/usage").content.decode()
    assert client.post(f"/portal/invitations/{invitation.pk}/accept").status_code == 404  # a decline is final
    assert not Membership.objects.filter(user=team.member, organization=team.globex).exists()


def test_an_invitation_is_answered_only_by_its_address(team: Team) -> None:
    invitation = Invitation.objects.create(
        organization=team.globex,
        email=team.member.email,
        role="admin",
        token="tok-3",
        expires_at=team.globex.created_at.replace(year=2100),
    )
    for intruder in (team.admin, team.owner):  # signed in, but with another address: ids are guessable
        client = team.client(intruder)
        assert client.post(f"/portal/invitations/{invitation.pk}/accept").status_code == 404
        assert client.post(f"/portal/invitations/{invitation.pk}/decline").status_code == 404
        assert "Accept and join" not in client.get("/portal/invitations/tok-3").content.decode()
    assert not Membership.objects.filter(organization=team.globex).exclude(user=team.outsider).exists()
    invitation.refresh_from_db()
    assert invitation.is_pending
    assert Client().post(f"/portal/invitations/{invitation.pk}/accept").status_code == 302  # to sign-in
    assert invitation_accept_raises(invitation, team.admin)


def invitation_accept_raises(invitation: Invitation, user: User) -> bool:
    from accounts.services import InvitationError, invitation_accept

    with pytest.raises(InvitationError):
        invitation_accept(invitation=invitation, user=user)
    return True


def test_an_unverified_address_does_not_claim_an_invitation(team: Team) -> None:
    user = make_user("squatter@example.com", verified=False)
    EmailAddress.objects.create(user=user, email="victim@example.com", verified=False, primary=False)
    Invitation.objects.create(
        organization=team.acme,
        email="victim@example.com",
        role="admin",
        token="tok-2",
        expires_at=team.acme.created_at.replace(year=2100),
    )
    client = Client()
    client.force_login(user)
    assert client.get("/portal/invitations/tok-2").status_code == 200
    assert "pending-invitations" not in client.get("/portal/usage").content.decode()
    invitation = Invitation.objects.get(token="tok-2")
    assert client.post(f"/portal/invitations/{invitation.pk}/accept").status_code == 404
    assert not Membership.objects.filter(user=user, organization=team.acme).exists()


def test_only_owners_invite_and_cancel(team: Team) -> None:
    assert team.client(team.admin).post("/portal/organization", {"email": "x@example.com", "role": "member"}).status_code == 403
    assert not Invitation.objects.exists()
    team.client(team.owner).post("/portal/organization", {"email": "x@example.com", "role": "member"})
    invitation = Invitation.objects.get()
    assert team.client(team.member).post(f"/portal/organization/invitations/{invitation.pk}/cancel").status_code == 403
    assert team.client(team.outsider).post(f"/portal/organization/invitations/{invitation.pk}/cancel").status_code == 404
    assert team.client(team.owner).post(f"/portal/organization/invitations/{invitation.pk}/cancel").status_code == 302
    invitation.refresh_from_db()
    assert invitation.cancelled_at is not None and not invitation.is_pending


def test_inviting_a_current_member_is_refused(team: Team) -> None:
    response = team.client(team.owner).post("/portal/organization", {"email": team.member.email, "role": "member"})
    assert response.status_code == 200
    assert "is already a member of Acme" in response.content.decode()


def test_organization_page_shows_members_and_roles(team: Team) -> None:
    page = team.client(team.member).get("/portal/organization").content.decode()
    for name, role in (("Olivia Owner", "Owner"), ("Adam Admin", "Admin"), ("Mia Member", "Member")):
        assert name in page and f">{role}</span>" in page
    assert "Gus Globex" not in page
    assert "Send invitation" not in page  # members do not invite


def test_switching_organization_changes_what_every_page_shows(team: Team) -> None:
    add_member(team.globex, team.member, Membership.Role.MEMBER)
    client = team.client(team.member)
    assert "acme backend" in client.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()
    client.post("/portal/organization/switch", {"organization": team.globex.pk, "next": "/portal/api-keys"})
    page = client.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()
    assert "globex backend" in page and "acme backend" not in page
    # An organization one is not in cannot be switched to.
    other = make_org("initech", owner=team.owner)
    response = client.post("/portal/organization/switch", {"organization": other.pk, "next": "https://evil.example/"})
    assert response["Location"] == "/portal/"
    assert "globex backend" in client.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()


# --- Profile, sessions, deleting an account ------------------------------------------------------------------------


def test_profile_saves_the_name(team: Team) -> None:
    client = team.client(team.member)
    page = client.get("/portal/profile").content.decode()
    assert "member@acme.test" in page and "Mia Member" in page
    client.post("/portal/profile", {"name": "Mia M."})
    team.member.refresh_from_db()
    assert team.member.name == "Mia M."


def test_password_change_from_the_profile_returns_to_it(team: Team) -> None:
    client = Client()
    sign_in(client, team.member.email)
    response = client.post(
        "/accounts/password/change/",
        {"oldpassword": PASSWORD, "password1": "brand-new-secret-42", "password2": "brand-new-secret-42"},
    )
    assert response.status_code == 302 and response["Location"] == "/portal/profile"
    team.member.refresh_from_db()
    assert team.member.check_password("brand-new-secret-42")


def test_sign_out_everywhere_else_ends_the_other_sessions_only(team: Team) -> None:
    laptop, phone = (
        Client(HTTP_USER_AGENT="Mozilla/5.0 (Macintosh; Mac OS X) Chrome/130.0"),
        Client(HTTP_USER_AGENT="Mozilla/5.0 (Linux; Android 14) Chrome/130.0"),
    )
    sign_in(laptop, team.member.email)
    sign_in(phone, team.member.email)
    assert UserSession.objects.filter(user=team.member).count() == 2
    page = laptop.get("/portal/profile").content.decode()
    assert "Chrome on macOS" in page and "Chrome on Android" in page and "This session" in page
    response = laptop.post("/portal/profile/sessions/sign-out-others")
    assert response.status_code == 302
    assert laptop.get("/portal/profile").status_code == 200
    assert phone.get("/portal/profile").status_code == 302  # signed out
    assert UserSession.objects.filter(user=team.member).count() == 1


def test_delete_account_says_which_keys_go_then_revokes_them(team: Team) -> None:
    solo = make_user("solo@example.com")
    own = make_org("solo", owner=solo)
    own_keys = [apikey_create(organization=own, name=f"solo key {i}").api_key for i in range(2)]
    shared = make_org("shared", owner=solo)
    add_member(shared, team.admin, Membership.Role.OWNER)
    shared_key = apikey_create(organization=shared, name="shared key").api_key
    add_member(team.acme, solo, Membership.Role.MEMBER)
    client = team.client(solo)
    profile = client.get("/portal/profile").content.decode()
    assert "<strong>Solo</strong> — it closes; its 2 active keys will be revoked." in profile
    assert "<strong>Shared</strong>" not in profile and "<strong>Acme</strong>" not in profile  # others own those
    confirm = client.get("/portal/profile/delete").content.decode()
    assert (
        "You are the only member of <strong>Solo</strong>: it closes with your account. Its 2 active API keys are revoked"
        in confirm
    )
    wrong = client.post("/portal/profile/delete", {"password": "nope"})
    assert wrong.status_code == 200 and "That is not your password." in wrong.content.decode()
    assert User.objects.filter(pk=solo.pk).exists()
    done = client.post("/portal/profile/delete", {"password": PASSWORD}, follow=True)
    assert done.redirect_chain[-1][0] == "/accounts/login/"
    assert "Your account is deleted. 2 API keys revoked." in done.content.decode()
    assert not User.objects.filter(email="solo@example.com").exists()
    assert all(ApiKey.objects.get(pk=k.pk).revoked_at is not None for k in own_keys)
    assert ApiKey.objects.get(pk=shared_key.pk).revoked_at is None
    assert ApiKey.objects.get(pk=team.acme_key_id).revoked_at is None
    assert Organization.objects.filter(pk=own.pk).exists()  # the organization and its usage stay
    left = MembershipEvent.objects.filter(email="solo@example.com", action="left", actor_label="account deleted")
    assert sorted(e.organization.slug for e in left) == ["acme", "shared", "solo"]
    assert client.get("/portal/profile").status_code == 302


def test_the_last_owner_cannot_delete_their_account_before_handing_over(team: Team) -> None:
    client = team.client(team.owner)
    assert "hand it over before you delete your account" in client.get("/portal/profile").content.decode()
    confirm = client.get("/portal/profile/delete").content.decode()
    assert 'id="deletion-blocked"' in confirm and "<strong>Acme</strong> (3 members)" in confirm
    refused = client.post("/portal/profile/delete", {"password": PASSWORD})
    assert refused.status_code == 200
    assert "You are the only owner of Acme: make another member owner before you delete your account." in refused.content.decode()
    assert User.objects.filter(pk=team.owner.pk).exists()
    assert ApiKey.objects.get(pk=team.acme_key_id).revoked_at is None
    # Handed over, the account goes and the organization carries on with its keys.
    client.post("/portal/organization/transfer", {"member": Membership.objects.get(user=team.admin).pk, "step_down": "on"})
    assert client.post("/portal/profile/delete", {"password": PASSWORD}).status_code == 302
    assert not User.objects.filter(pk=team.owner.pk).exists()
    assert ApiKey.objects.get(pk=team.acme_key_id).revoked_at is None
    assert Membership.objects.get(user=team.admin, organization=team.acme).role == "owner"


# --- Members: removal, roles, hand-over, leaving ------------------------------------------------------------------


def membership(team: Team, user: User) -> Membership:
    return Membership.objects.get(user=user, organization=team.acme)


def test_owner_removes_a_member_after_confirming(team: Team) -> None:
    owner = team.client(team.owner)
    target = membership(team, team.member)
    listing = owner.get("/portal/organization").content.decode()
    assert f'href="/portal/organization/members/{target.pk}/remove"' in listing
    confirm = owner.get(f"/portal/organization/members/{target.pk}/remove")
    assert confirm.status_code == 200 and "Remove Mia Member from Acme?" in confirm.content.decode()
    assert Membership.objects.filter(pk=target.pk).exists()  # a GET removes nothing
    done = owner.post(f"/portal/organization/members/{target.pk}/remove", REMOTE_ADDR="203.0.113.9", follow=True)
    assert done.redirect_chain[-1][0] == "/portal/organization#members"
    assert "member@acme.test is no longer a member of Acme." in done.content.decode()
    assert not Membership.objects.filter(pk=target.pk).exists()
    event = MembershipEvent.objects.get(organization=team.acme, action="removed")
    assert (event.user, event.email, event.old_role, event.actor, event.source_ip) == (
        team.member,
        "member@acme.test",
        "member",
        team.owner,
        "203.0.113.9",
    )


def test_only_owners_remove_members_and_change_roles(team: Team) -> None:
    target = membership(team, team.member)
    for who in (team.admin, team.member):
        client = team.client(who)
        page = client.get("/portal/organization").content.decode()
        assert "/remove" not in page and 'name="role"' not in page
        assert client.post(f"/portal/organization/members/{target.pk}/remove").status_code == 403
        assert client.post(f"/portal/organization/members/{target.pk}/role", {"role": "admin"}).status_code == 403
        assert client.post("/portal/organization/transfer", {"member": target.pk}).status_code == 403
    outsider = team.client(team.outsider)  # another organization's owner: not found, not forbidden
    assert outsider.post(f"/portal/organization/members/{target.pk}/remove").status_code == 404
    assert outsider.post(f"/portal/organization/members/{target.pk}/role", {"role": "owner"}).status_code == 404
    target.refresh_from_db()
    assert target.role == "member"
    assert not MembershipEvent.objects.exists()


def test_owner_changes_roles(team: Team) -> None:
    owner = team.client(team.owner)
    target = membership(team, team.member)
    response = owner.post(f"/portal/organization/members/{target.pk}/role", {"role": "admin"}, follow=True)
    assert "member@acme.test is now admin." in response.content.decode()
    target.refresh_from_db()
    assert target.role == "admin"
    event = MembershipEvent.objects.get(action="role_changed")
    assert (event.old_role, event.new_role, event.actor) == ("member", "admin", team.owner)
    bad = owner.post(f"/portal/organization/members/{target.pk}/role", {"role": "emperor"}, follow=True)
    assert "Choose owner, admin or member." in bad.content.decode()
    target.refresh_from_db()
    assert target.role == "admin"


def test_the_last_owner_cannot_be_removed_demoted_or_leave(team: Team) -> None:
    from accounts.services import LastOwner, membership_change_role, membership_leave, membership_remove

    owner = team.client(team.owner)
    mine = membership(team, team.owner)
    assert owner.get(f"/portal/organization/members/{mine.pk}/remove")["Location"] == "/portal/organization/leave"
    with pytest.raises(LastOwner):
        membership_change_role(membership=mine, role="member", actor=team.owner)
    with pytest.raises(LastOwner):
        membership_remove(membership=mine, actor=team.owner)
    demoted = owner.post(f"/portal/organization/members/{mine.pk}/role", {"role": "member"}, follow=True)
    assert "The last owner cannot step down: make someone else owner first." in demoted.content.decode()
    leave_page = owner.get("/portal/organization/leave").content.decode()
    assert "You are the only owner of Acme" in leave_page and "Leave organization</button>" not in leave_page
    left = owner.post("/portal/organization/leave", follow=True)
    assert "You are the last owner of Acme: make someone else owner before you leave." in left.content.decode()
    with pytest.raises(LastOwner):
        membership_leave(membership=mine)
    mine.refresh_from_db()
    assert mine.role == "owner"
    # With a second owner, the first may step down or leave.
    owner.post(f"/portal/organization/members/{membership(team, team.admin).pk}/role", {"role": "owner"})
    assert owner.post(f"/portal/organization/members/{mine.pk}/role", {"role": "admin"}).status_code == 302
    mine.refresh_from_db()
    assert mine.role == "admin"


def test_ownership_is_handed_over_with_or_without_stepping_down(team: Team) -> None:
    owner = team.client(team.owner)
    page = owner.get("/portal/organization/transfer").content.decode()
    assert "Adam Admin (admin@acme.test, admin)" in page and "Mia Member (member@acme.test, member)" in page
    assert "Gus Globex" not in page
    foreign = Membership.objects.get(user=team.outsider, organization=team.globex)
    refused = owner.post("/portal/organization/transfer", {"member": foreign.pk})
    assert refused.status_code == 200 and "Select a valid choice" in refused.content.decode()
    owner.post("/portal/organization/transfer", {"member": membership(team, team.member).pk})
    assert (membership(team, team.member).role, membership(team, team.owner).role) == ("owner", "owner")
    owner.post("/portal/organization/transfer", {"member": membership(team, team.admin).pk, "step_down": "on"})
    assert (membership(team, team.admin).role, membership(team, team.owner).role) == ("owner", "admin")
    assert (
        team.client(team.owner).post("/portal/organization/transfer", {"member": membership(team, team.admin).pk}).status_code
        == 403
    )


def test_members_leave_and_lose_the_organization(team: Team) -> None:
    add_member(team.globex, team.member, Membership.Role.MEMBER)
    client = team.client(team.member)
    assert "Leave…" in client.get("/portal/organization").content.decode()
    confirm = client.get("/portal/organization/leave")
    assert confirm.status_code == 200 and "Leave Acme?" in confirm.content.decode()
    done = client.post("/portal/organization/leave", follow=True)
    assert "You left Acme." in done.content.decode()
    assert not Membership.objects.filter(user=team.member, organization=team.acme).exists()
    assert MembershipEvent.objects.get(action="left").actor == team.member
    page = client.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()
    assert "globex backend" in page and "acme backend" not in page


def test_a_removed_members_open_session_falls_back_and_is_told(team: Team) -> None:
    add_member(team.globex, team.member, Membership.Role.MEMBER)
    member = team.client(team.member)
    member.post("/portal/organization/switch", {"organization": team.acme.pk, "next": "/portal/api-keys"})
    assert "acme backend" in member.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()
    team.client(team.owner).post(f"/portal/organization/members/{membership(team, team.member).pk}/remove")
    page = member.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()
    assert "acme backend" not in page and "globex backend" in page
    assert "You are no longer a member of the organization you were working in; this is Globex." in page
    assert member.get(f"/portal/api-keys?org={team.acme.slug}", HTTP_ACCEPT="application/json").status_code == 404
    assert member.get("/portal/usage-summary?org=acme", HTTP_ACCEPT="application/json").status_code == 404
    assert "no longer a member" not in member.get("/portal/usage").content.decode()  # said once
    # The playground page names its organization; a page left open on acme is refused, not charged to globex.
    refused = member.post(
        "/portal/playground/chat/completions",
        data="{}",
        content_type="application/json",
        HTTP_X_PORTAL_ORGANIZATION=str(team.acme.pk),
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "not_a_member"


@pytest.mark.django_db(transaction=True)
def test_two_owners_removing_each_other_at_once_leave_one_owner(team: Team) -> None:
    import threading

    from django.db import connection

    from accounts.services import MembershipError, membership_remove

    add_member(team.acme, make_user("second@acme.test"), Membership.Role.OWNER)
    first, second = membership(team, team.owner), Membership.objects.get(user__email="second@acme.test")
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def remove(target: Membership, actor: User) -> None:
        try:
            barrier.wait(timeout=5)
            membership_remove(membership=target, actor=actor)
            outcomes.append("removed")
        except MembershipError:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=remove, args=(second, team.owner)),
        threading.Thread(target=remove, args=(first, second.user)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)
    assert sorted(outcomes) == ["refused", "removed"]
    assert Membership.objects.filter(organization=team.acme, role="owner").count() == 1


# --- The other pages ------------------------------------------------------------------------------------------------


def test_docs_show_this_deployments_base_url_and_the_plans_models(team: Team) -> None:
    from billing.models import Plan
    from routerpools.models import ModelAlias, RouterPool

    pool = RouterPool.objects.create(name="pool-a")
    for alias in ("oss-20b", "gemma4", "secret-large"):
        ModelAlias.objects.create(alias=alias, pool=pool)
    ModelAlias.objects.create(alias="switched-off", pool=pool, enabled=False)
    Plan.objects.get(slug="free").allowed_aliases.set(ModelAlias.objects.filter(alias__in=["oss-20b", "gemma4"]))
    page = team.client(team.member).get("/portal/docs").content.decode()
    assert "https://api.example.test/v1/chat/completions" in page
    assert 'base_url="https://api.example.test/v1"' in page.replace("&quot;", '"')
    assert 'Anthropic(base_url="https://api.example.test"' in page.replace("&quot;", '"')
    assert "Authorization: Bearer $CORTENSOR_API_KEY" in page and "x-api-key: $CORTENSOR_API_KEY" in page
    assert "stream=True" in page and "messages.stream(" in page and "curl -N" in page
    assert ">gemma4<" in page and ">oss-20b<" in page
    assert "secret-large" not in page and "switched-off" not in page
    assert "invalid_api_key" in page and "model_not_allowed" in page and "insufficient_quota" in page
    # The pro plan has no allow-list: every enabled alias.
    team.globex.plan = Plan.objects.get(slug="pro")
    team.globex.save()
    pro_page = team.client(team.outsider).get("/portal/docs?model=secret-large").content.decode()
    assert ">secret-large<" in pro_page and '"model": "secret-large"' in pro_page.replace("&quot;", '"')
    assert "switched-off" not in pro_page


def test_docs_follow_the_organizations_model_overrides(team: Team) -> None:
    from billing.models import ModelAccessOverride, Plan
    from routerpools.models import ModelAlias, RouterPool

    pool = RouterPool.objects.create(name="pool-b")
    oss, gemma, large = (ModelAlias.objects.create(alias=a, pool=pool) for a in ("oss-20b", "gemma4", "secret-large"))
    Plan.objects.get(slug="free").allowed_aliases.set([oss, gemma])
    ModelAccessOverride.objects.create(organization=team.acme, alias=large, allowed=True)
    ModelAccessOverride.objects.create(organization=team.acme, alias=gemma, allowed=False)
    page = team.client(team.member).get("/portal/docs").content.decode()
    assert ">secret-large<" in page and ">oss-20b<" in page and ">gemma4<" not in page
    other = team.client(team.outsider).get("/portal/docs").content.decode()  # globex has no exceptions
    assert ">gemma4<" in other and "secret-large" not in other


def test_every_page_needs_sign_in() -> None:
    client = Client()
    for url in (
        "/portal/",
        "/portal/usage",
        "/portal/api-keys",
        "/portal/docs",
        "/portal/profile",
        "/portal/profile/delete",
        "/portal/organization",
        "/portal/playground",
        "/portal/billing",
    ):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/?next=/portal/"), url


def test_a_user_without_an_organization_gets_a_personal_one() -> None:
    user = make_user("staff@example.com")
    client = Client()
    client.force_login(user)
    assert client.get("/portal/api-keys", HTTP_ACCEPT="text/html").status_code == 200
    assert Membership.objects.get(user=user).role == "owner"
