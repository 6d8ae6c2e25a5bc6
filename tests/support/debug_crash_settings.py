"""Settings of a DEBUG daphne for tests/hostile/test_portal.py: the project's own, plus a view that crashes."""

from __future__ import annotations

from portal_project.settings import *  # noqa: F403

ROOT_URLCONF = "tests.support.debug_crash_urls"
