"""Security notices by mail (issue 16): a new API key and a new member are told to the organization's owners, a
password or address change to the account's own address; plain text, no secret in them."""

from __future__ import annotations

import pytest
from allauth.account.models import EmailAddress
from django.core import mail
from django.test import Client

from accounts.models import Invitation, Membership
from apikeys.models import ApiKey
from apikeys.services import apikey_create, apikey_get_or_create_playground
from tests.support.portal import Team, ensure_site_and_plans, make_team, make_user, portal_settings  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _portal(portal_settings) -> None:  # noqa: F811, ANN001
    ensure_site_and_plans()


@pytest.fixture
def team() -> Team:
    return make_team()


def test_a_new_key_is_told_to_the_owners_and_its_creator_with_no_secret(
    team: Team, django_capture_on_commit_callbacks, settings
) -> None:  # noqa: ANN001
    settings.PORTAL_SUPPORT_EMAIL = "help@cortensor.example"
    mail.outbox.clear()
    client = team.client(team.admin)
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post("/portal/api-keys", {"name": "ci runner"}, REMOTE_ADDR="203.0.113.9").status_code == 302
    key = ApiKey.objects.get(name="ci runner")
    shown = client.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()
    start = shown.index('id="new-key-value"')
    raw = shown[shown.index(">", start) + 1 : shown.index("</code>", start)]
    assert sorted(m.to[0] for m in mail.outbox) == ["admin@acme.test", "owner@acme.test"]  # the owner, and the admin who made it
    for message in mail.outbox:
        assert message.subject == "[Cortensor] A new API key for Acme"
        assert not message.alternatives  # plain text
        assert "name:     ci runner" in message.body
        assert f"key:      {key.masked}" in message.body
        assert "by:       Adam Admin (admin@acme.test)" in message.body
        assert "from:     203.0.113.9" in message.body
        assert "https://api.example.test/portal/api-keys" in message.body
        assert "Questions: help@cortensor.example" in message.body
        assert raw not in message.body and key.key_hash not in message.body


def test_the_playground_key_and_other_organizations_tell_no_one_here(team: Team, django_capture_on_commit_callbacks) -> None:  # noqa: ANN001
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        apikey_get_or_create_playground(organization=team.acme)
        apikey_create(organization=team.globex, name="theirs", created_by=team.outsider)
    assert [m.to for m in mail.outbox] == [["boss@globex.test"]]


def test_a_member_joining_is_told_to_the_owners(team: Team, django_capture_on_commit_callbacks) -> None:  # noqa: ANN001
    newcomer = make_user("newcomer@example.com")
    invitation = Invitation.objects.create(
        organization=team.acme,
        email=newcomer.email,
        role="admin",
        token="tok-join",
        expires_at=team.acme.created_at.replace(year=2100),
    )
    mail.outbox.clear()
    client = Client()
    client.force_login(newcomer)
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(f"/portal/invitations/{invitation.pk}/accept").status_code == 302
    assert Membership.objects.filter(user=newcomer, organization=team.acme).exists()
    (notice,) = mail.outbox
    assert notice.to == ["owner@acme.test"]
    assert notice.subject == "[Cortensor] newcomer@example.com joined Acme"
    assert "newcomer@example.com joined Acme as admin on " in notice.body


def test_changing_the_primary_address_tells_the_old_one(team: Team) -> None:
    EmailAddress.objects.create(user=team.member, email="new@acme.test", verified=True, primary=False)
    client = team.client(team.member)
    mail.outbox.clear()
    answer = client.post("/accounts/email/", {"email": "new@acme.test", "action_primary": ""})
    assert answer.status_code == 302
    (notice,) = mail.outbox
    assert notice.to == ["member@acme.test"] and "changed" in notice.subject.lower()
    assert "new@acme.test" in notice.body


def test_a_mail_server_that_fails_does_not_fail_the_key(team: Team, django_capture_on_commit_callbacks, settings) -> None:  # noqa: ANN001
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 1  # nothing listens on discard
    with django_capture_on_commit_callbacks(execute=True):
        assert team.client(team.owner).post("/portal/api-keys", {"name": "still made"}).status_code == 302
    assert ApiKey.objects.filter(name="still made").exists()
