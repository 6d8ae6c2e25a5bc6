"""The Django admin keeps router auth keys write-only and never shows a key hash."""

from __future__ import annotations

import pytest
from django.forms import CheckboxInput, MultiWidget, PasswordInput
from django.test import Client
from django.urls import reverse

from accounts.models import User
from apikeys.models import ApiKey
from billing.services import plans_seed_defaults
from routerpools.models import RouterEndpoint, RouterPool, RouterSession
from tests.conftest import issue_key

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
        {"pool": pool.pk, "base_url": "http://10.0.0.6:5010", "auth_key": "fresh-key", "weight": "1", "enabled": "on", "_save": "Save"},
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
