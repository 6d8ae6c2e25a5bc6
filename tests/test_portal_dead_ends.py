"""The portal as a new user finds it (issue 16): no dead ends between the site's root, sign-up, the first key and
the limits of the plan."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from allauth.account.models import EmailAddress
from django.core import mail
from django.test import Client
from django.utils import timezone

import gateway.limits
from accounts.models import Invitation, Membership, User
from tests.support.portal import PASSWORD, Team, ensure_site_and_plans, make_team, make_user, portal_settings  # noqa: F401
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _portal(portal_settings, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811, ANN001
    ensure_site_and_plans()
    # Allowances counted from usage rows (no limiter counters in Redis to set up).
    monkeypatch.setattr(gateway.limits.limiter, "redis_url", None)


@pytest.fixture
def team() -> Team:
    return make_team()


def test_the_sites_root_sends_visitors_to_sign_in_and_members_to_the_portal(team: Team) -> None:
    anonymous = Client().get("/", follow=True)
    assert [hop for hop, _ in anonymous.redirect_chain] == ["/portal/", "/accounts/login/?next=/portal/"]
    assert anonymous.status_code == 200
    signed_in = team.client(team.member).get("/")
    assert signed_in.status_code == 302 and signed_in["Location"] == "/portal/"


def _use_up_the_window(team: Team, count: int) -> None:
    # The free plan's 3-hour window of 100 requests; its rows all inside the current window.
    now = timezone.now()
    start = now - timedelta(seconds=now.timestamp() % 10800)
    UsageEvent.objects.bulk_create(
        UsageEvent(
            request_id=f"req_limit_{i}",
            organization=team.acme,
            alias="oss-20b",
            route="chat.completions",
            status="ok",
            http_status=200,
            created_at=start + timedelta(microseconds=i),
        )
        for i in range(count)
    )


def _banners(html: str) -> list[str]:
    found = re.findall(r'<div class="alert [^"]*allowance-alert"[^>]*>(.*?)</div>', html, re.S)
    return [" ".join(re.sub(r"<[^>]+>", "", f).split()) for f in found]


def test_a_used_up_allowance_is_announced_on_the_usage_and_key_pages_too(team: Team) -> None:
    client = team.client(team.member)
    for url in ("/portal/usage", "/portal/api-keys"):
        assert _banners(client.get(url, HTTP_ACCEPT="text/html").content.decode()) == []
    _use_up_the_window(team, 100)
    for url in ("/portal/usage", "/portal/api-keys"):
        (banner,) = _banners(client.get(url, HTTP_ACCEPT="text/html").content.decode())
        assert banner.startswith(
            "Your 3-hour request allowance is used up (100 of 100 requests): every new request is refused with insufficient_quota"
        ), banner
        assert banner.endswith("Plan and limits"), banner
    # Another organization's pages say nothing.
    assert _banners(team.client(team.outsider).get("/portal/usage").content.decode()) == []


def test_a_nearly_used_allowance_is_a_warning_not_an_error(team: Team) -> None:
    _use_up_the_window(team, 85)
    html = team.client(team.member).get("/portal/usage").content.decode()
    (banner,) = _banners(html)
    assert banner.startswith("You have used 85% of your 3-hour request allowance (85 of 100 requests)"), banner
    assert 'class="alert alert-warning allowance-alert"' in html


# --- E-mail verification --------------------------------------------------------------------------------------


LINK = re.compile(r"https?://\S+")


def sign_up(client: Client, email: str) -> object:
    return client.post("/accounts/signup/", {"email": email, "password1": PASSWORD, "password2": PASSWORD})


def test_the_verification_page_offers_a_resend_a_change_of_address_and_a_contact(settings) -> None:  # noqa: ANN001
    settings.PORTAL_SUPPORT_EMAIL = "help@cortensor.example"
    client = Client()
    assert sign_up(client, "typo@exmaple.com").status_code == 302
    page = client.get("/accounts/confirm-email/").content.decode()
    assert '<strong id="pending-address">typo@exmaple.com</strong>' in page
    assert 'action="/portal/verify-email/resend"' in page and 'action="/portal/verify-email/change-address"' in page
    assert '<a href="mailto:help@cortensor.example">help@cortensor.example</a>' in page
    assert 'id="mail-to-terminal"' not in page  # the tests' backend is locmem, not the console
    assert len(mail.outbox) == 1

    resent = client.post("/portal/verify-email/resend", follow=True)
    assert resent.redirect_chain[-1][0] == "/accounts/confirm-email/"
    assert [m.to for m in mail.outbox] == [["typo@exmaple.com"], ["typo@exmaple.com"]]

    changed = client.post("/portal/verify-email/change-address", {"email": "Right@Example.com"}, follow=True)
    assert '<strong id="pending-address">right@example.com</strong>' in changed.content.decode()
    user = User.objects.get(email="right@example.com")
    assert list(EmailAddress.objects.filter(user=user).values_list("email", "verified", "primary")) == [
        ("right@example.com", False, True)
    ]
    assert mail.outbox[-1].to == ["right@example.com"]
    link = next(url for url in LINK.findall(mail.outbox[-1].body) if "/accounts/confirm-email/" in url)
    done = client.post(link.split("testserver", 1)[1], follow=True)
    assert done.status_code == 200 and EmailAddress.objects.get(user=user).verified
    # Once confirmed, the forms act for nobody.
    assert client.post("/portal/verify-email/change-address", {"email": "x@example.com"})["Location"] == "/accounts/login/"
    assert User.objects.get(pk=user.pk).email == "right@example.com"


def test_changing_to_an_address_in_use_changes_nothing_and_says_the_same(settings) -> None:  # noqa: ANN001
    make_user("taken@example.com")
    client = Client()
    sign_up(client, "mine@example.com")
    answer = client.post("/portal/verify-email/change-address", {"email": "taken@example.com"}, follow=True)
    assert "We sent a message to taken@example.com" in answer.content.decode()
    assert User.objects.filter(email="mine@example.com").exists()
    assert mail.outbox[-1].to == ["taken@example.com"] and "confirm-email" not in mail.outbox[-1].body
    refused = client.post("/portal/verify-email/change-address", {"email": "not an address"}, follow=True)
    assert "That is not an e-mail address" in refused.content.decode()
    # Without a sign-up in this session there is nothing to act for.
    assert Client().post("/portal/verify-email/resend")["Location"] == "/accounts/login/"


def test_the_page_says_mail_goes_to_the_terminal_with_the_console_backend(settings) -> None:  # noqa: ANN001
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    settings.PORTAL_SUPPORT_EMAIL = ""
    page = Client().get("/accounts/confirm-email/").content.decode()
    assert "This deployment prints its mail in the terminal" in page


def test_make_runs_banner_says_where_mail_goes() -> None:
    from portal_project.devserver import mail_note

    assert mail_note({}) == "  mail (sign-up confirmations, invitations) is printed in this terminal, not sent\n"
    assert mail_note({"EMAIL_HOST": "smtp.example.com"}) == ""


# --- Invitations ----------------------------------------------------------------------------------------------


def _invite(team: Team, email: str) -> Invitation:
    response = team.client(team.owner).post("/portal/organization", {"email": email, "role": "member"})
    assert response.status_code == 302
    return Invitation.objects.get(organization=team.acme, email=email)


def test_signing_up_from_an_invitation_prefills_the_address_and_joins_without_a_workspace_or_a_second_mail(
    team: Team,
) -> None:
    invitation = _invite(team, "newbie@example.com")
    sent = len(mail.outbox)
    invitee = Client()
    landing = invitee.get(f"/portal/invitations/{invitation.token}").content.decode()
    assert f'href="/portal/invitations/{invitation.token}/sign-up"' in landing
    form = invitee.get(f"/portal/invitations/{invitation.token}/sign-up", follow=True)
    assert form.redirect_chain[-1][0] == "/accounts/signup/"
    assert 'value="newbie@example.com"' in form.content.decode()
    done = sign_up(invitee, "newbie@example.com")
    assert done.status_code == 302  # signed in at once: the link proved the address
    user = User.objects.get(email="newbie@example.com")
    assert EmailAddress.objects.get(user=user).verified
    assert list(Membership.objects.filter(user=user).values_list("organization__slug", "role")) == [("acme", "member")]
    assert len(mail.outbox) == sent  # no verification mail
    page = invitee.get(done["Location"], follow=True).content.decode()
    banners = re.findall(r'<div class="alert alert-success">(.*?)</div>', page)
    assert banners == ["Welcome to Acme: you joined as member."]
    assert "acme backend" in invitee.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()


def test_signing_up_from_an_invitation_with_another_address_confirms_by_mail_and_joins_nothing(team: Team) -> None:
    invitation = _invite(team, "invited@example.com")
    invitee = Client()
    invitee.get(f"/portal/invitations/{invitation.token}/sign-up")
    assert sign_up(invitee, "other@example.com")["Location"] == "/accounts/confirm-email/"
    user = User.objects.get(email="other@example.com")
    assert list(EmailAddress.objects.filter(user=user).values_list("email", "verified")) == [("other@example.com", False)]
    assert list(Membership.objects.filter(user=user).values_list("role", flat=True)) == ["owner"]  # their own workspace
    invitation.refresh_from_db()
    assert invitation.is_pending


# --- Profile: the password form -------------------------------------------------------------------------------


def test_a_wrong_current_password_stays_on_the_profile_page_with_the_error(team: Team) -> None:
    client = team.client(team.member)
    answer = client.post(
        "/portal/profile/password",
        {"oldpassword": "not-it", "password1": "brand-new-secret-42", "password2": "brand-new-secret-42"},
    )
    assert answer.status_code == 400
    page = answer.content.decode()
    assert "<h1>Profile</h1>" in page and 'class="shell"' in page  # the portal's page, not allauth's
    assert re.search(r'id="oldpassword-error">Please type your current password.</p>', page)
    assert User.objects.get(pk=team.member.pk).check_password(PASSWORD)
    mail.outbox.clear()
    changed = client.post(
        "/portal/profile/password",
        {"oldpassword": PASSWORD, "password1": "brand-new-secret-42", "password2": "brand-new-secret-42"},
    )
    assert changed.status_code == 302 and changed["Location"] == "/portal/profile#password"
    assert User.objects.get(pk=team.member.pk).check_password("brand-new-secret-42")
    # The security notice, to the account's own address.
    (notice,) = mail.outbox
    assert notice.to == [team.member.email] and "password" in notice.subject.lower()


# --- allauth's pages in the portal's look ---------------------------------------------------------------------


def _labels(html: str) -> list[str]:
    return [" ".join(re.sub(r"<[^>]+>", "", label).split()) for label in re.findall(r"<label[^>]*>(.*?)</label>", html, re.S)]


def test_sign_in_and_sign_up_use_sentence_case_labels_without_colons() -> None:
    login = Client().get("/accounts/login/").content.decode()
    assert "<h1>Sign in</h1>" in login
    assert _labels(login) == ["Email", "Password", "Remember me"]
    signup = Client().get("/accounts/signup/").content.decode()
    assert "<h1>Create an account</h1>" in signup
    assert _labels(signup) == ["Email", "Password", "Password (again)"]


def test_a_password_error_shows_under_the_password_field_not_the_address() -> None:
    page = (
        Client()
        .post("/accounts/signup/", {"email": "x@example.com", "password1": PASSWORD, "password2": PASSWORD + "x"})
        .content.decode()
    )
    # The error follows the second password's input, after the address and first password fields.
    error = page.index('class="field-error"')
    assert page.index('name="email"') < page.index('name="password2"') < error
    assert "You must type the same password each time." in page[error : error + 200]
    make_user("known@example.com")
    login = Client().post("/accounts/login/", {"login": "known@example.com", "password": "wrong"}).content.decode()
    alert = login.index('class="alert alert-error form-errors"')
    assert login.index('name="password"') < alert < login.index('type="submit"')


def test_the_only_confirmed_address_offers_neither_make_primary_nor_remove(team: Team) -> None:
    client = team.client(team.member)
    page = client.get("/accounts/email/").content.decode()
    assert "member@acme.test" in page and "Confirmed" in page and "Primary" in page
    assert "action_primary" not in page and "action_remove" not in page
    EmailAddress.objects.create(user=team.member, email="second@acme.test", verified=True, primary=False)
    page = client.get("/accounts/email/").content.decode()
    second = page[page.index('data-address="second@acme.test"') :]
    assert 'name="action_primary"' in second and 'name="action_remove"' in second


# --- The first-run checklist ----------------------------------------------------------------------------------


def test_the_checklist_follows_a_new_organization_then_gives_way_to_usage(team: Team) -> None:
    from apikeys.models import ApiKey
    from apikeys.services import apikey_get_or_create_playground
    from tests.support.portal import make_org

    user = make_user("fresh@example.com")
    org = make_org("fresh", owner=user)
    client = Client()
    client.force_login(user)
    page = client.get("/portal/").content.decode()
    assert "Get started with Fresh" in page
    assert 'class="step is-done" id="step-email"' in page
    assert 'class="step " id="step-key"' in page and 'href="/portal/api-keys#create-key"' in page
    assert "Waiting for your first request…" in page and 'data-live-url="/portal/ws/usage?org=' in page
    apikey_get_or_create_playground(organization=org)  # the playground's own key is not "your first key"
    assert 'class="step " id="step-key"' in client.get("/portal/").content.decode()
    key = ApiKey.objects.create(
        organization=org, name="laptop", public_id="pub-fresh", prefix="ctr_x", key_hash="h", last_four="abcd"
    )
    UsageEvent.objects.create(
        request_id="req_first",
        organization=org,
        api_key=key,
        alias="oss-20b",
        route="chat.completions",
        status="ok",
        http_status=200,
    )
    page = client.get("/portal/").content.decode()
    assert page.count('class="step is-done"') == 3 and "We saw <code" in page and "req_first" in page
    assert "data-live-url" not in page  # nothing left to wait for
    # A day after the first request, /portal/ is the usage page.
    UsageEvent.objects.filter(request_id="req_first").update(created_at=timezone.now() - timedelta(days=1, seconds=1))
    assert client.get("/portal/")["Location"] == "/portal/usage"
    # A member who cannot create keys is told whom to ask.
    from tests.support.portal import add_member

    keyless = make_org("keyless", owner=team.outsider)
    ApiKey.objects.filter(organization=keyless).delete()
    add_member(keyless, user, "member")
    client.post("/portal/organization/switch", {"organization": keyless.pk, "next": "/portal/"})
    member_page = client.get("/portal/").content.decode()
    assert "Owners and admins of Keyless create keys: ask one of them for yours." in member_page
