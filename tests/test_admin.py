"""The Django admin: signed in through allauth (rate limited, locked out, TOTP when required), router auth keys
write-only, never a key hash."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
import subprocess
import sys
import time
import uuid

import pytest
from django.contrib.admin.models import LogEntry
from django.forms import CheckboxInput, MultiWidget, PasswordInput
from django.http import HttpResponse
from django.test import Client
from django.urls import reverse

from accounts.models import Organization, User
from apikeys.models import ApiKey
from billing.models import LedgerEntry
from billing.services import plans_seed_defaults
from routerpools.models import RouterEndpoint, RouterPool, RouterSession
from tests.support.live import ROOT, issue_key

ENDPOINT_KEY = "endpoint-secret-Q7f3ZkA9"
SESSION_KEY = "session-secret-W2p8LmR4"

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff() -> Client:
    user = User.objects.create_superuser(email="staff@example.com", password="not-used-here")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def pool() -> RouterPool:
    pool = RouterPool.objects.create(name="oss-pool")
    RouterEndpoint.objects.create(pool=pool, base_url="http://10.0.0.5:5010", auth_key=ENDPOINT_KEY)
    RouterSession.objects.create(pool=pool, session_id=101, auth_key=SESSION_KEY)
    return pool


def browser_post_data(response) -> dict[str, object]:  # noqa: ANN001
    """What a browser submits for the rendered change form as it is: every field at its shown value.

    Password inputs are submitted empty, as a browser does when the form does not render the value.
    """
    forms = [response.context["adminform"].form]
    data: dict[str, object] = {}
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        for bound in formset.management_form:
            data[bound.html_name] = bound.value()
        forms.extend(formset.forms)
    for form in forms:
        for bound in form:
            widget = bound.field.widget
            if isinstance(widget, PasswordInput):
                data[bound.html_name] = ""
            elif isinstance(widget, CheckboxInput):
                if bound.value():
                    data[bound.html_name] = "on"
            elif isinstance(widget, MultiWidget):  # e.g. a split date and time
                parts = widget.decompress(bound.value())
                for suffix, part in zip(widget.widgets_names, parts, strict=True):
                    data[bound.html_name + suffix] = "" if part is None else str(part)
            elif bound.value() is not None:
                data[bound.html_name] = bound.value()
    data["_save"] = "Save"
    return data


def change_url(obj: object) -> str:
    meta = obj._meta  # type: ignore[attr-defined]
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])  # type: ignore[attr-defined]


def assert_no_key(content: bytes) -> None:
    assert ENDPOINT_KEY.encode() not in content
    assert SESSION_KEY.encode() not in content


# --- RouterEndpoint -----------------------------------------------------------------------------------


def test_endpoint_change_form_never_contains_the_key(staff: Client, pool: RouterPool) -> None:
    endpoint = pool.endpoints.get()
    response = staff.get(change_url(endpoint))
    assert response.status_code == 200
    assert_no_key(response.content)
    assert b'name="auth_key"' in response.content
    assert b'type="password"' in response.content
    changelist = staff.get(reverse("admin:routerpools_routerendpoint_changelist"))
    assert changelist.status_code == 200
    assert_no_key(changelist.content)
    assert b"auth key set" in changelist.content.lower()


def test_endpoint_saved_with_a_blank_key_keeps_it(staff: Client, pool: RouterPool) -> None:
    endpoint = pool.endpoints.get()
    data = browser_post_data(staff.get(change_url(endpoint)))
    assert data["auth_key"] == ""
    data["weight"] = "3"
    response = staff.post(change_url(endpoint), data)
    assert response.status_code == 302, response.content
    endpoint.refresh_from_db()
    assert (endpoint.weight, endpoint.auth_key) == (3, ENDPOINT_KEY)
    history = staff.get(change_url(endpoint).replace("/change/", "/history/"))
    assert history.status_code == 200
    assert_no_key(history.content)


def test_endpoint_saved_with_a_new_key_replaces_it(staff: Client, pool: RouterPool) -> None:
    endpoint = pool.endpoints.get()
    data = browser_post_data(staff.get(change_url(endpoint)))
    data["auth_key"] = "rotated-endpoint-key"
    assert staff.post(change_url(endpoint), data).status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.auth_key == "rotated-endpoint-key"
    page = staff.get(change_url(endpoint))
    assert b"rotated-endpoint-key" not in page.content
    history = staff.get(change_url(endpoint).replace("/change/", "/history/"))
    assert b"rotated-endpoint-key" not in history.content


def test_endpoint_key_can_be_cleared(staff: Client, pool: RouterPool) -> None:
    endpoint = pool.endpoints.get()
    data = browser_post_data(staff.get(change_url(endpoint)))
    data["clear_auth_key"] = "on"
    assert staff.post(change_url(endpoint), data).status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.auth_key == ""


def test_endpoint_added_with_a_key(staff: Client, pool: RouterPool) -> None:
    response = staff.post(
        reverse("admin:routerpools_routerendpoint_add"),
        {
            "pool": pool.pk,
            "base_url": "http://10.0.0.6:5010",
            "auth_key": "fresh-key",
            "weight": "1",
            "enabled": "on",
            "_save": "Save",
        },
    )
    assert response.status_code == 302, response.content
    assert RouterEndpoint.objects.get(base_url="http://10.0.0.6:5010").auth_key == "fresh-key"


# --- RouterSession ------------------------------------------------------------------------------------


def test_session_change_form_never_contains_the_key(staff: Client, pool: RouterPool) -> None:
    session = pool.sessions.get()
    response = staff.get(change_url(session))
    assert response.status_code == 200
    assert_no_key(response.content)
    changelist = staff.get(reverse("admin:routerpools_routersession_changelist"))
    assert_no_key(changelist.content)


def test_session_blank_keeps_and_new_value_replaces(staff: Client, pool: RouterPool) -> None:
    session = pool.sessions.get()
    data = browser_post_data(staff.get(change_url(session)))
    del data["enabled"]  # untick the box
    assert staff.post(change_url(session), data).status_code == 302
    session.refresh_from_db()
    assert (session.enabled, session.auth_key) == (False, SESSION_KEY)

    data = browser_post_data(staff.get(change_url(session)))
    data["auth_key"] = "rotated-session-key"
    assert staff.post(change_url(session), data).status_code == 302
    session.refresh_from_db()
    assert session.auth_key == "rotated-session-key"
    assert b"rotated-session-key" not in staff.get(change_url(session)).content


# --- RouterPool with its inlines ------------------------------------------------------------------------


def test_pool_page_with_inlines_never_contains_keys_and_keeps_them(staff: Client, pool: RouterPool) -> None:
    response = staff.get(change_url(pool))
    assert response.status_code == 200
    assert_no_key(response.content)
    data = browser_post_data(response)
    data["draining"] = "on"
    saved = staff.post(change_url(pool), data)
    assert saved.status_code == 302, saved.content
    pool.refresh_from_db()
    assert pool.draining is True
    assert pool.endpoints.get().auth_key == ENDPOINT_KEY
    assert pool.sessions.get().auth_key == SESSION_KEY


def test_pool_inline_new_value_replaces_only_that_key(staff: Client, pool: RouterPool) -> None:
    data = browser_post_data(staff.get(change_url(pool)))
    data["sessions-0-auth_key"] = "rotated-inline-key"
    assert staff.post(change_url(pool), data).status_code == 302
    assert pool.sessions.get().auth_key == "rotated-inline-key"
    assert pool.endpoints.get().auth_key == ENDPOINT_KEY
    assert b"rotated-inline-key" not in staff.get(change_url(pool)).content


# --- API keys ---------------------------------------------------------------------------------------------


def test_api_key_admin_never_shows_the_hash(staff: Client) -> None:
    plans_seed_defaults()
    key = issue_key(slug="acme")
    row = ApiKey.objects.get(pk=key.key_id)
    page = staff.get(change_url(row))
    assert page.status_code == 200
    assert row.key_hash.encode() not in page.content
    assert key.raw.encode() not in page.content
    assert row.prefix.encode() in page.content
    listing = staff.get(reverse("admin:apikeys_apikey_changelist"))
    assert row.key_hash.encode() not in listing.content


# --- the ledger: staff credits and adjustments ------------------------------------------------------------


def test_a_credit_added_in_the_admin_is_written_by_the_ledger_service(staff: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    import billing.admin

    org = Organization.objects.create(slug="acme", name="Acme")
    calls: list[dict[str, object]] = []
    service = billing.admin.ledger_entry_add
    monkeypatch.setattr(billing.admin, "ledger_entry_add", lambda **kw: calls.append(kw) or service(**kw))
    add = reverse("admin:billing_ledgerentry_add")
    response = staff.post(
        add, {"organization": org.pk, "kind": "credit", "amount_micros": 5_000_000, "memo": "prepaid", "_save": "Save"}
    )
    assert response.status_code == 302, response.content[:2000]
    entry = LedgerEntry.objects.get(organization=org)
    assert (entry.kind, entry.amount_micros, entry.memo, entry.created_by.email) == (
        "credit",
        5_000_000,
        "prepaid",
        "staff@example.com",
    )
    assert [call["kind"] for call in calls] == ["credit"]
    assert LogEntry.objects.get(object_id=str(entry.pk)).object_repr == str(entry)
    # Only credits and adjustments are offered; a debit is refused by the form and nothing is written.
    refused = staff.post(add, {"organization": org.pk, "kind": "debit", "amount_micros": -5, "memo": "", "_save": "Save"})
    assert refused.status_code == 200
    assert LedgerEntry.objects.filter(organization=org).count() == 1


# --- The door: allauth's sign-in, its limits, and TOTP for staff ---------------------------------------------------

STAFF_PASSWORD = "staff-pass-phrase-41"


@pytest.fixture
def door(settings):  # noqa: ANN001, ANN201
    """Limits on as in production (fresh counters), a fast hasher, and a staff account made as createsuperuser makes
    it: no confirmed-address record."""
    from tests.support.portal import ensure_site_and_plans

    settings.RATELIMIT_CACHE_PREFIX = f"rl-admin-{uuid.uuid4().hex}:"
    # allauth keeps its own counters (failed sign-ins per account and per address) in the cache: a fresh namespace.
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "KEY_PREFIX": f"admin-{uuid.uuid4().hex[:8]}"},
    }
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.MFA_TOTP_TOLERANCE = 1  # three codes valid at once, so a test need not wait for the next period
    ensure_site_and_plans()
    return User.objects.create_superuser(email=f"ops-{uuid.uuid4().hex[:8]}@example.com", password=STAFF_PASSWORD)


def staff_sign_in(client: Client, email: str, password: str = STAFF_PASSWORD, *, next_url: str = "/admin/") -> HttpResponse:
    return client.post(f"/accounts/login/?next={next_url}", {"login": email, "password": password})


def signed_in_to_admin(client: Client) -> bool:
    return client.get("/admin/").status_code == 200


def test_the_admin_has_no_password_form_of_its_own(door: User) -> None:
    client = Client()
    assert client.get("/admin/")["Location"] == "/admin/login/?next=/admin/"
    assert (
        client.get("/admin/login/?next=/admin/billing/plan/")["Location"] == "/accounts/login/?next=%2Fadmin%2Fbilling%2Fplan%2F"
    )
    assert client.get("/admin/login/?next=https://evil.example/")["Location"] == "/accounts/login/?next=%2Fadmin%2F"
    # The old form's POST signs no one in, whatever it carries.
    posted = client.post("/admin/login/", {"username": door.email, "password": STAFF_PASSWORD})
    assert posted.status_code == 302 and posted["Location"].startswith("/accounts/login/")
    assert not signed_in_to_admin(client)


def test_forty_wrong_passwords_then_the_right_one_does_not_get_in(door: User) -> None:
    client = Client()
    for i in range(40):
        client.post("/admin/login/", {"username": door.email, "password": f"guess-{i}"})
    client.post("/admin/login/?next=/admin/", {"username": door.email, "password": STAFF_PASSWORD})
    assert not signed_in_to_admin(client)
    # Through the one door there is, allauth's form, the same guessing is cut off.
    statuses = [staff_sign_in(client, door.email, f"guess-{i}").status_code for i in range(40)]
    assert statuses[:10] == [200] * 10 and set(statuses[10:]) == {429}  # the portal's sign-in limit, per address
    right = staff_sign_in(client, door.email)
    assert right.status_code == 429
    assert not signed_in_to_admin(client)


def test_guessing_from_many_addresses_locks_the_account(door: User) -> None:
    for i in range(40):
        Client(REMOTE_ADDR=f"198.51.100.{i + 1}").post(
            "/accounts/login/?next=/admin/", {"login": door.email, "password": f"guess-{i}"}
        )
    client = Client(REMOTE_ADDR="192.0.2.200")  # an address that never guessed, with the right password
    response = staff_sign_in(client, door.email)
    assert response.status_code == 200 and "Too many failed login attempts" in response.content.decode()
    assert not signed_in_to_admin(client)


def test_staff_sign_in_through_allauth_lands_in_the_admin(door: User, settings) -> None:  # noqa: ANN001
    from allauth.account.models import EmailAddress

    settings.PORTAL_ADMIN_REQUIRE_MFA = False  # what `make run` (DEBUG) has
    client = Client()
    response = staff_sign_in(client, door.email)
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert signed_in_to_admin(client)
    assert not EmailAddress.objects.filter(user=door, verified=True).exists()  # signed in; no address made verified


def test_a_signed_in_customer_is_refused_not_looped(door: User) -> None:
    customer = User.objects.create_user(email="customer@example.com", password="x")
    client = Client()
    client.force_login(customer)
    assert client.get("/admin/")["Location"] == "/admin/login/?next=/admin/"
    refused = client.get("/admin/login/?next=/admin/")
    assert refused.status_code == 403 and "This account has no access to the admin." in refused.content.decode()


def totp(secret: str, counter: int) -> str:
    """RFC 6238 (SHA-1, 6 digits, 30 s), written out here rather than borrowed from the code under test."""
    digest = hmac.new(base64.b32decode(secret, casefold=True), struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    return f"{(struct.unpack('>I', digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 1_000_000:06d}"


class Codes:
    """Fresh codes of one secret from the valid window, never one already used (allauth refuses a replay)."""

    def __init__(self, secret: str) -> None:
        self.secret, self.used = secret, set()

    def next(self) -> str:
        now = int(time.time()) // 30
        code = next(c for c in (totp(self.secret, now + d) for d in (0, 1, -1)) if c not in self.used)
        self.used.add(code)
        return code

    def wrong(self) -> str:
        now = int(time.time()) // 30
        valid = {totp(self.secret, now + d) for d in (-2, -1, 0, 1, 2)}
        return next(c for c in ("000000", "111111", "222222") if c not in valid)


def test_with_mfa_required_staff_set_up_totp_and_every_admin_session_passes_it(door: User, settings) -> None:  # noqa: ANN001
    settings.PORTAL_ADMIN_REQUIRE_MFA = True
    client = Client()
    assert staff_sign_in(client, door.email)["Location"] == "/admin/"
    # A password is not enough: no authenticator yet, so the admin sends staff to set one up.
    assert client.get("/admin/")["Location"] == "/admin/login/?next=/admin/"
    setup = client.get("/admin/login/?next=/admin/", follow=True)
    assert (
        setup.redirect_chain[-1][0] == "/accounts/reauthenticate/?next=%2Faccounts%2F2fa%2Ftotp%2Factivate%2F"
    )  # allauth's rule
    assert "The admin needs two-factor authentication" in setup.content.decode()
    activate = client.post(setup.redirect_chain[-1][0], {"password": STAFF_PASSWORD}, follow=True)
    assert activate.redirect_chain[-1][0] == "/accounts/2fa/totp/activate/"
    secret = client.session["mfa.totp.secret"]
    assert secret in activate.content.decode()  # shown for apps that cannot scan the QR code
    codes = Codes(secret)
    assert client.post("/accounts/2fa/totp/activate/", {"code": codes.wrong()}).status_code == 200
    activated = client.post("/accounts/2fa/totp/activate/", {"code": codes.next()})
    assert activated.status_code == 302
    # This session signed in with a password only: the admin asks for a code before it lets it in.
    assert not signed_in_to_admin(client)
    ask = client.get("/admin/login/?next=/admin/accounts/user/")
    assert ask["Location"] == "/accounts/2fa/reauthenticate/?next=%2Fadmin%2Faccounts%2Fuser%2F"
    wrong = client.post(ask["Location"], {"code": codes.wrong()})
    assert wrong.status_code == 200 and not signed_in_to_admin(client)
    passed = client.post(ask["Location"], {"code": codes.next()})
    assert passed.status_code == 302 and passed["Location"] == "/admin/accounts/user/"
    assert signed_in_to_admin(client)

    # A new sign-in asks for the code as part of signing in, and then the admin opens at once.
    fresh = Client()
    step = staff_sign_in(fresh, door.email)
    assert step.status_code == 302 and step["Location"] == "/accounts/2fa/authenticate/"
    assert not signed_in_to_admin(fresh)
    done = fresh.post("/accounts/2fa/authenticate/", {"code": codes.next()})
    assert done.status_code == 302 and done["Location"] == "/admin/"
    assert signed_in_to_admin(fresh)
    # A session that never passed the second factor (signed in some other way) stays out.
    other = Client()
    other.force_login(door)
    assert other.get("/admin/login/?next=/admin/")["Location"].startswith("/accounts/2fa/reauthenticate/")
    assert not signed_in_to_admin(other)


def test_with_mfa_off_a_password_is_enough_and_customers_may_still_use_totp(door: User, settings) -> None:  # noqa: ANN001
    from tests.support.portal import make_org, make_user

    settings.PORTAL_ADMIN_REQUIRE_MFA = False
    client = Client()
    staff_sign_in(client, door.email)
    assert signed_in_to_admin(client)
    customer = make_user("careful@example.com")
    make_org("careful", owner=customer)
    portal = Client()
    portal.force_login(customer)
    assert 'href="/accounts/2fa/"' in portal.get("/portal/profile").content.decode()
    assert portal.get("/accounts/2fa/").status_code == 200
    assert portal.get("/portal/api-keys", HTTP_ACCEPT="text/html").status_code == 200  # never required of customers


@pytest.mark.parametrize(
    ("debug", "value", "expected"), [("0", None, "True"), ("1", None, "False"), ("0", "0", "False"), ("1", "1", "True")]
)
def test_mfa_for_the_admin_defaults_to_on_unless_debug(debug: str, value: str | None, expected: str) -> None:
    from tests.test_config import base_env

    env = base_env(DEBUG=debug, PORTAL_ADMIN_REQUIRE_MFA=value)
    code = "import django; django.setup(); from django.conf import settings; print(settings.PORTAL_ADMIN_REQUIRE_MFA)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == expected


def test_a_malformed_mfa_setting_stops_start_up() -> None:
    from tests.test_config import base_env

    env = base_env(PORTAL_ADMIN_REQUIRE_MFA="maybe")
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert re.fullmatch(r"configuration error: PORTAL_ADMIN_REQUIRE_MFA: .*\n", result.stderr)
