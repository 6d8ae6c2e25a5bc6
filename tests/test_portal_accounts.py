"""Sign-up, verification, sign-in limits, invitations, the profile (sessions, deleting an account) and the organization page."""

from __future__ import annotations

import re

import pytest
from allauth.account.models import EmailAddress
from allauth.usersessions.models import UserSession
from django.core import mail
from django.test import Client

from accounts.models import Invitation, Membership, Organization, User
from apikeys.models import ApiKey
from apikeys.services import apikey_create
from tests.portal_support import (  # noqa: F401
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
    assert page.redirect_chain[-1][0] == "/portal/api-keys"
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


def test_owner_invites_by_email_and_the_invitee_joins_on_sign_up(team: Team) -> None:
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
    assert not Membership.objects.filter(user=user, organization=team.acme).exists()  # not before the address is verified
    confirm_from_mail(invitee, mail.outbox[-1])
    membership = Membership.objects.get(user=user, organization=team.acme)
    assert membership.role == "admin"
    invitation.refresh_from_db()
    assert invitation.accepted_by == user and invitation.accepted_at is not None
    # The new member works in the organization they joined.
    assert "acme backend" in invitee.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()
    assert invitee.get(f"/portal/invitations/{invitation.token}").status_code == 404  # used up


def test_an_existing_user_gets_the_invitation_on_sign_in(team: Team) -> None:
    invitation = Invitation.objects.create(
        organization=team.globex, email=team.member.email, role="member", token="tok-1", invited_by=team.outsider,
        expires_at=team.globex.created_at.replace(year=2100),
    )
    response = sign_in(Client(), team.member.email)
    assert response.status_code == 302
    assert Membership.objects.filter(user=team.member, organization=team.globex, role="member").exists()
    invitation.refresh_from_db()
    assert invitation.accepted_by == team.member


def test_an_unverified_address_does_not_claim_an_invitation(team: Team) -> None:
    user = make_user("squatter@example.com", verified=False)
    EmailAddress.objects.create(user=user, email="victim@example.com", verified=False, primary=False)
    Invitation.objects.create(
        organization=team.acme, email="victim@example.com", role="admin", token="tok-2", expires_at=team.acme.created_at.replace(year=2100)
    )
    client = Client()
    client.force_login(user)
    assert client.get("/portal/invitations/tok-2").status_code == 200
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
        "/accounts/password/change/", {"oldpassword": PASSWORD, "password1": "brand-new-secret-42", "password2": "brand-new-secret-42"}
    )
    assert response.status_code == 302 and response["Location"] == "/portal/profile"
    team.member.refresh_from_db()
    assert team.member.check_password("brand-new-secret-42")


def test_sign_out_everywhere_else_ends_the_other_sessions_only(team: Team) -> None:
    laptop, phone = Client(HTTP_USER_AGENT="Mozilla/5.0 (Macintosh; Mac OS X) Chrome/130.0"), Client(HTTP_USER_AGENT="Mozilla/5.0 (Linux; Android 14) Chrome/130.0")
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
    shared = make_org("shared", owner=team.owner)
    add_member(shared, team.admin, Membership.Role.OWNER)
    shared_key = apikey_create(organization=shared, name="shared key").api_key
    second = apikey_create(organization=team.acme, name="second acme key").api_key
    client = team.client(team.owner)
    profile = client.get("/portal/profile").content.decode()
    assert "<strong>Acme</strong> — its 2 active keys will be revoked." in profile
    assert "<strong>Shared</strong>" not in profile  # another owner remains there
    confirm = client.get("/portal/profile/delete").content.decode()
    assert "You are the only owner of <strong>Acme</strong>: its 2 active API keys are revoked" in confirm
    wrong = client.post("/portal/profile/delete", {"password": "nope"})
    assert wrong.status_code == 200 and "That is not your password." in wrong.content.decode()
    assert User.objects.filter(pk=team.owner.pk).exists()
    done = client.post("/portal/profile/delete", {"password": PASSWORD}, follow=True)
    assert done.redirect_chain[-1][0] == "/accounts/login/"
    assert "Your account is deleted. 2 API keys revoked." in done.content.decode()
    assert not User.objects.filter(email="owner@acme.test").exists()
    assert ApiKey.objects.get(pk=team.acme_key_id).revoked_at is not None
    assert ApiKey.objects.get(pk=second.pk).revoked_at is not None
    assert ApiKey.objects.get(pk=shared_key.pk).revoked_at is None
    assert ApiKey.objects.get(pk=team.globex_key_id).revoked_at is None
    assert Organization.objects.filter(pk=team.acme.pk).exists()  # the organization and its usage stay
    assert client.get("/portal/profile").status_code == 302


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
    for url in ("/portal/", "/portal/usage", "/portal/api-keys", "/portal/docs", "/portal/profile", "/portal/profile/delete",
                "/portal/organization", "/portal/playground", "/portal/billing"):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/?next=/portal/"), url


def test_a_user_without_an_organization_gets_a_personal_one() -> None:
    user = make_user("staff@example.com")
    client = Client()
    client.force_login(user)
    assert client.get("/portal/api-keys", HTTP_ACCEPT="text/html").status_code == 200
    assert Membership.objects.get(user=user).role == "owner"
