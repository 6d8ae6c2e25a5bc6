"""Static files with DEBUG off: collectstatic's hashed names, served by WhiteNoise from a live daphne with the
production settings, cacheable for good, and linked by the pages."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from simulator import SimulatorServer
from tests.support.live import ROOT, LiveGateway, live_gateway_env

IMMUTABLE = "max-age=315360000, public, immutable"  # WhiteNoise's header for a file whose name carries its hash


@pytest.fixture
def collected(transactional_db, tmp_path: Path, simulator: SimulatorServer) -> Iterator[tuple[LiveGateway, dict[str, str]]]:  # noqa: ANN001
    """collectstatic into a temporary STATIC_ROOT, then a daphne on it: (the gateway, the manifest's name map)."""
    env = live_gateway_env(
        simulator.base_url,
        DJANGO_SETTINGS_MODULE="portal_project.settings",  # the production settings, not the suite's
        PORTAL_STATIC_ROOT=str(tmp_path / "static"),
        DEBUG="0",
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"collectstatic failed:\n{done.stdout}\n{done.stderr}"
    manifest = json.loads((tmp_path / "static" / "staticfiles.json").read_text())["paths"]
    gateway = LiveGateway(env=env).start()
    try:
        yield gateway, manifest
    finally:
        gateway.stop()


@pytest.mark.slow
def test_admin_and_portal_css_are_served_under_hashed_names_for_good_and_the_pages_link_them(collected) -> None:  # noqa: ANN001
    gateway, manifest = collected
    admin_css, portal_css = manifest["admin/css/base.css"], manifest["portal/portal.css"]
    assert admin_css != "admin/css/base.css" and portal_css.startswith("portal/portal.") and portal_css.endswith(".css")
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for name, original in ((admin_css, "admin/css/base.css"), (portal_css, "portal/portal.css")):
            response = client.get(f"/static/{name}", headers={"accept-encoding": "gzip"})
            assert response.status_code == 200, (name, response.status_code)
            assert response.headers["content-type"].startswith("text/css")
            assert response.headers["cache-control"] == IMMUTABLE, response.headers
            assert response.headers.get("content-encoding") == "gzip"  # the compressed copy collectstatic wrote
            source = (ROOT / "static" / original) if original.startswith("portal/") else None
            if source is not None:
                assert response.text == source.read_text()
        # The unhashed name is still served (an old link), but only briefly cacheable: it changes with a deploy.
        plain = client.get("/static/portal/portal.css")
        assert plain.status_code == 200 and "immutable" not in plain.headers["cache-control"]

        page = client.get("/accounts/login/")
        assert page.status_code == 200, gateway.log()[-3000:]
        assert f'href="/static/{portal_css}"' in page.text
        assert f'src="/static/{manifest["portal/portal.js"]}"' in page.text
