"""Settings for the test suite: the normal settings, with defaults pointing at the real local services."""

from __future__ import annotations

import os

# Set before the settings are read: pytest-django loads them before any conftest runs.
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/portal")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production")
os.environ.setdefault("PORTAL_API_KEY_PEPPER", "test-pepper")
os.environ.setdefault("PORTAL_METRICS_TOKEN", "test-metrics-token-not-for-production")  # tests/support/live.py METRICS_TOKEN
os.environ.setdefault("ALLOWED_HOSTS", "localhost,127.0.0.1,testserver")
# Tests reach the admin with force_login (no second factor); tests/test_admin.py turns the requirement on.
os.environ.setdefault("PORTAL_ADMIN_REQUIRE_MFA", "0")
# Only in the pytest process itself (pytest sets PYTEST_VERSION): the live gateways it starts load these
# settings too, with an environment stripped of PYTEST_* and holding their own maps, which they must keep.
if "PYTEST_VERSION" in os.environ:
    for _var in (
        "PORTAL_ROUTER_POOLS_JSON",
        "PORTAL_ROUTER_MODEL_SESSIONS_JSON",
        "PORTAL_ROUTER_MODEL_AUTH_KEYS_JSON",
        "PORTAL_ROUTER_SESSION_AUTH_KEYS_JSON",
        "PORTAL_DEFAULT_MODEL",
    ):
        os.environ.pop(_var, None)  # the test process routes nowhere itself; live gateways get their own maps

from portal_project.settings import *  # noqa: E402, F403

# The suite renders pages without running `collectstatic` first: the plain storage links static files by their own
# names (the manifest storage would raise for every one). The production storage (hashed names, the manifest) is
# tested on a live daphne with portal_project.settings after a real collectstatic (tests/test_static_files.py).
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
# Nothing collected: WhiteNoise would warn on every request client that its directory is missing. (None where the
# base settings set a Path, which Django allows; mypy typed the name from the base.)
STATIC_ROOT = None  # type: ignore[assignment]
