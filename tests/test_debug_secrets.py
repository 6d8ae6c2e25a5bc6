"""Secrets stay off Django's debug pages: the reprs of everything holding one, the settings dump, a traceback's locals.

`make run` serves with DEBUG on, so a 500 there renders the technical page with every frame's locals and the
settings. The tests render that page (django.views.debug.technical_500_response, HTML and text) with the objects
that hold router keys, router URLs with credentials, the Unkey root key, Redis and database passwords, and assert
that not one of the secrets appears while the page still shows what it is for. tests/hostile/test_portal.py does the
same through a DEBUG daphne.
"""

from __future__ import annotations

import json
import sys

import pytest
from django.conf import settings as django_settings
from django.test import RequestFactory
from django.views.debug import get_default_exception_reporter_filter, technical_500_response

from apikeys.unkey import UnkeyClient
from gateway.upstream import Breaker, UpstreamCall, UpstreamPool
from portal_project.redact import mask_url_credentials
from routerpools.config import parse_router_env
from routerpools.models import RouterEndpoint, RouterPool
from routerpools.selectors import AliasRoute, Upstream, routing_table

ROUTER_KEY = "alias-key-5f1d8e2a"
SESSION_KEY = "session-key-9c3b7a41"
URL_PASSWORD = "url-password-77ab12"
UNKEY_ROOT = "unkey_root_3fa9d0c2"
REDIS_PASSWORD = "redis-password-4e8f"
DB_PASSWORD = "db-password-1a2b3c"
PEPPER = "pepper-6d5c4b3a"
METRICS_TOKEN = "metrics-token-0f9e8d"
MAIL_PASSWORD = "smtp-password-2c3d"
SECRET_KEY = "secret-key-" + "q" * 50
FORM_PASSWORD = "hunter2-form"  # a POST field named like a secret
SECRETS = (ROUTER_KEY, SESSION_KEY, URL_PASSWORD, UNKEY_ROOT, REDIS_PASSWORD, DB_PASSWORD, PEPPER, METRICS_TOKEN, MAIL_PASSWORD,
           SECRET_KEY)  # fmt: skip

ROUTER_ENV = {
    "PORTAL_ROUTER_POOLS_JSON": json.dumps({"oss-20b": f"https://gateway:{URL_PASSWORD}@router.internal:5010"}),
    "PORTAL_ROUTER_MODEL_SESSIONS_JSON": json.dumps({"oss-20b": [101, 102]}),
    "PORTAL_ROUTER_MODEL_AUTH_KEYS_JSON": json.dumps({"oss-20b": ROUTER_KEY}),
    "PORTAL_ROUTER_SESSION_AUTH_KEYS_JSON": json.dumps({"102": SESSION_KEY}),
}


def assert_no_secret(text: str) -> None:
    leaked = [secret for secret in SECRETS if secret in text]
    assert not leaked, f"{leaked} in:\n{text[:3000]}"


# --- reprs ------------------------------------------------------------------------------------------------------------


def test_the_env_router_config_masks_keys_and_url_credentials_in_its_repr() -> None:
    config = parse_router_env(ROUTER_ENV)
    for shown in (repr(config), str(config), repr(config.aliases[0]), f"{config.aliases}"):
        assert_no_secret(shown)
        assert "router.internal:5010" in shown  # the host stays: it is what a reader needs
    assert "alias_key=<hidden>" in repr(config.aliases[0]) and "102: <hidden>" in repr(config.aliases[0])
    # The values themselves are untouched.
    assert config.aliases[0].alias_key == ROUTER_KEY and config.aliases[0].urls[0].endswith("@router.internal:5010")


def test_upstreams_and_routes_mask_their_keys_and_url_credentials() -> None:
    upstream = Upstream(
        base_url=f"https://gateway:{URL_PASSWORD}@router.internal:5010", session_id=102, auth_key=SESSION_KEY, weight=1
    )
    route = AliasRoute(
        alias="oss-20b", display_name="OSS", pool_name="p", pool_draining=False, prompt_format="chatml", max_tokens_cap=10,
        context_length=None, timeout_s=10, prompt_type=None, prompt_template="", upstreams=(upstream,), created=0,
    )  # fmt: skip
    pool = UpstreamPool()
    pool.mark_failed(upstream)
    call = UpstreamCall(upstream=upstream, response=None, started=0.0, headers_at=0.0, attempts=1, deadline=0.0)  # type: ignore[arg-type]
    for shown in (repr(upstream), upstream.label, repr(route), repr(call), repr(pool), repr(pool._breakers), repr(Breaker())):
        assert_no_secret(shown)
    assert upstream.label == "https://***@router.internal:5010#102"


def test_the_unkey_client_hides_its_root_key() -> None:
    client = UnkeyClient(root_key=UNKEY_ROOT, api_id="api_1", base_url=f"https://u:{URL_PASSWORD}@unkey.test", timeout_s=1)
    assert_no_secret(repr(client))
    assert "unkey.test" in repr(client)


@pytest.mark.django_db
def test_a_new_api_key_never_shows_in_a_repr() -> None:
    from apikeys.keys import generate_key
    from apikeys.services import apikey_create
    from tests.support.portal import make_org

    new = generate_key()
    created = apikey_create(organization=make_org("repr-co"), name="k")
    for shown, raw in ((repr(new), new.raw), (repr(created), created.raw)):
        assert raw not in shown and raw.split("_", 2)[2] not in shown, shown


def test_a_router_endpoint_shows_its_url_without_credentials() -> None:
    endpoint = RouterEndpoint(
        pool=RouterPool(name="p"), base_url=f"https://gateway:{URL_PASSWORD}@router.internal", auth_key=ROUTER_KEY
    )
    assert_no_secret(str(endpoint) + repr(endpoint))


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("redis://:pw@redis:6379/0", "redis://***@redis:6379/0"),
        ("postgres://portal:pw@db:5432/portal", "postgres://***@db:5432/portal"),
        ("see https://a:b@h/x and http://c@h2/", "see https://***@h/x and http://***@h2/"),
        ("https://router.internal:5010/x?to=a@b.c", "https://router.internal:5010/x?to=a@b.c"),
        ("mail ops@cortensor.app", "mail ops@cortensor.app"),
    ],
)
def test_url_credentials_are_masked_and_nothing_else(text: str, masked: str) -> None:
    assert mask_url_credentials(text) == masked


# --- the technical 500 page ---------------------------------------------------------------------------------------------


@pytest.fixture
def secret_settings(settings):  # noqa: ANN001, ANN201
    """Settings as a production-like deployment with every kind of secret would have them, DEBUG on."""
    redis_url = f"redis://:{REDIS_PASSWORD}@redis.internal:6379/0"
    settings.DEBUG = True
    settings.SECRET_KEY = SECRET_KEY
    settings.PORTAL_ROUTER_ENV = parse_router_env(ROUTER_ENV)
    settings.REDIS_URL = redis_url
    settings.CACHES = {**settings.CACHES, "other": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url}}
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}}
    settings.PORTAL_API_KEY_PEPPER = PEPPER
    settings.PORTAL_UNKEY_ROOT_KEY = UNKEY_ROOT
    settings.PORTAL_UNKEY_BASE_URL = f"https://u:{URL_PASSWORD}@unkey.test"
    settings.PORTAL_METRICS_TOKEN = METRICS_TOKEN
    settings.EMAIL_HOST_PASSWORD = MAIL_PASSWORD
    settings.DATABASE_URL = f"postgres://portal:{DB_PASSWORD}@db:5432/portal"  # as a deployment might add it
    settings.SENTRY_DSN = f"https://public:{URL_PASSWORD}@sentry.example/1"  # any URL-valued setting
    return settings


def crashed_page(accept: str, **locals_: object) -> str:
    """The technical 500 page of an exception raised in a frame holding `locals_`."""

    def view_that_crashes(**held: object) -> None:
        headers = {"authorization": f"Bearer {ROUTER_KEY}", "content-type": "application/json"}  # noqa: F841
        url = f"https://gateway:{URL_PASSWORD}@router.internal:5010/api/v3/completions/102"  # noqa: F841
        auth_key = SESSION_KEY  # noqa: F841
        message = f"Bearer {ROUTER_KEY}"  # noqa: F841 -- a secret in a local whose name says nothing
        raise RuntimeError("the router refused the request")

    request = RequestFactory().post(
        "/portal/api-keys?org=acme", data={"name": "k", "password": FORM_PASSWORD}, HTTP_ACCEPT=accept,
        HTTP_AUTHORIZATION=f"Bearer {ROUTER_KEY}",
    )  # fmt: skip
    try:
        view_that_crashes(**locals_)
    except RuntimeError:
        response = technical_500_response(request, *sys.exc_info())
    assert response.status_code == 500
    return response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("accept", ["text/html", "text/plain"])
def test_the_debug_500_page_shows_no_secret(secret_settings, accept: str) -> None:  # noqa: ANN001
    from apikeys.services import apikey_create
    from routerpools.services import router_pools_sync
    from tests.support.portal import make_org

    router_pools_sync(config=secret_settings.PORTAL_ROUTER_ENV)
    route = routing_table()["oss-20b"]
    created = apikey_create(organization=make_org("debug-co"), name="k")
    secret_part = created.raw.split("_", 2)[2]
    page = crashed_page(
        accept,
        created=created,  # a customer's new key, between its creation and the response that shows it once
        note=f"sent {created.raw} to the client",  # and the key inside some other text
        config=secret_settings.PORTAL_ROUTER_ENV,
        route=route,
        upstream=route.upstreams[0],
        endpoint=RouterEndpoint.objects.first(),
        unkey=UnkeyClient(root_key=UNKEY_ROOT, api_id="api_1", base_url="https://unkey.test", timeout_s=1),
        redis_url=secret_settings.REDIS_URL,
    )
    assert_no_secret(page)
    assert secret_part not in page
    # Still a debug page: the exception, the frames, the settings by name, the hosts that help.
    assert "the router refused the request" in page and "view_that_crashes" in page
    assert "PORTAL_ROUTER_ENV" in page and "REDIS_URL" in page
    if accept == "text/html":  # the text page has no locals
        assert "router.internal" in page and "Upstream(https://***@router.internal:5010#10" in page
    assert FORM_PASSWORD not in page  # POST fields named like secrets too


def test_the_project_filter_is_the_default_and_hides_the_settings_it_names(secret_settings) -> None:  # noqa: ANN001
    assert django_settings.DEFAULT_EXCEPTION_REPORTER_FILTER == "portal_project.security.SecretsFilter"
    safe = get_default_exception_reporter_filter().get_safe_settings()
    assert_no_secret(repr(safe))
    for name in ("PORTAL_ROUTER_ENV", "REDIS_URL", "CACHES", "CHANNEL_LAYERS", "DATABASE_URL", "PORTAL_UNKEY_ROOT_KEY",
                 "PORTAL_UNKEY_BASE_URL", "PORTAL_METRICS_TOKEN", "EMAIL_HOST_PASSWORD", "PORTAL_API_KEY_PEPPER", "SECRET_KEY"):  # fmt: skip
        assert safe[name] == "********************", name
    assert safe["SENTRY_DSN"] == "https://***@sentry.example/1"  # an unlisted URL keeps its host, loses its credentials
    assert safe["ALLOWED_HOSTS"] == django_settings.ALLOWED_HOSTS  # not everything is hidden
