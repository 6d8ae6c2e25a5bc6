"""The management API's OpenAPI schema: valid, every call with an example of its request and answer and the admin-key
scheme; the docs page links it, and its curl examples work as copied with a real admin key."""

from __future__ import annotations

import html
import os
import re
import subprocess

import pytest
from django.test import Client
from drf_spectacular.validation import validate_schema

from apikeys.models import ApiKey
from apikeys.services import apikey_create
from tests.support.live import LiveGateway
from tests.support.portal import Team, ensure_site_and_plans, make_team, portal_settings  # noqa: F401

OPERATIONS = {
    ("/portal/api-keys", "get"): "api_keys_list",
    ("/portal/api-keys", "post"): "api_keys_create",
    ("/portal/api-keys/{key_id}", "get"): "api_keys_retrieve",
    ("/portal/api-keys/{key_id}", "patch"): "api_keys_update",
    ("/portal/api-keys/{key_id}", "delete"): "api_keys_revoke",
    ("/portal/api-keys/{key_id}/rotate", "post"): "api_keys_rotate",
    ("/portal/usage-summary", "get"): "usage_summary",
}


@pytest.fixture
def team(db, portal_settings) -> Team:  # noqa: ANN001, F811
    ensure_site_and_plans()
    return make_team()


def schema_with(client: Client) -> dict:
    response = client.get("/portal/api/schema", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    return response.json()


def test_the_schema_validates_and_documents_every_call_with_examples_and_the_admin_key(team: Team) -> None:
    raw = apikey_create(organization=team.acme, name="ops", kind="admin").raw
    schema = schema_with(Client(HTTP_AUTHORIZATION=f"Bearer {raw}"))  # a script can fetch it with its admin key
    assert schema == schema_with(team.client(team.member))
    validate_schema(schema)  # raises on an invalid OpenAPI 3 document
    assert schema["components"]["securitySchemes"]["adminKey"]["type"] == "http"
    assert schema["components"]["securitySchemes"]["adminKey"]["scheme"] == "bearer"
    found = {
        (path, method): op["operationId"]
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if path.startswith(("/portal/api-keys", "/portal/usage-summary"))
    }
    assert found == OPERATIONS
    for (path, method), _ in OPERATIONS.items():
        op = schema["paths"][path][method]
        assert {"adminKey": []} in op["security"], (path, method)
        assert op.get("summary"), (path, method)
        answers = [r for code, r in op["responses"].items() if code in ("200", "201")]
        assert len(answers) == 1 and answers[0]["content"]["application/json"].get("examples"), (path, method)
        if method in ("post", "patch"):
            assert op["requestBody"]["content"]["application/json"].get("examples"), (path, method)
    created = schema["paths"]["/portal/api-keys"]["post"]["responses"]["201"]["content"]["application/json"]["examples"]
    assert all(example["value"]["key"].startswith("ctr_") for example in created.values())


def test_the_docs_page_links_the_schema_with_a_curl_example_using_an_admin_key(team: Team) -> None:
    page = team.client(team.member).get("/portal/docs").content.decode()
    assert 'href="https://api.example.test/portal/api/schema"' in page
    assert 'id="management-api"' in page
    assert 'curl https://api.example.test/portal/api-keys -H "Authorization: Bearer $CORTENSOR_ADMIN_KEY"' in html.unescape(page)


def _example(page: str, element_id: str) -> str:
    block = re.search(rf'<pre id="{element_id}"><code>(.*?)</code></pre>', page, re.S)
    assert block is not None, element_id
    return html.unescape(block.group(1))


def test_the_docs_curl_examples_run_as_copied(gateway: LiveGateway, settings) -> None:  # noqa: ANN001
    ensure_site_and_plans()
    settings.PORTAL_PUBLIC_BASE_URL = gateway.url
    team = make_team()
    raw = apikey_create(organization=team.acme, name="ops", kind="admin").raw
    page = team.client(team.owner).get("/portal/docs").content.decode()
    env = {"PATH": os.environ["PATH"], "CORTENSOR_ADMIN_KEY": raw}

    def run(element_id: str) -> str:
        script = _example(page, element_id).replace("export CORTENSOR_ADMIN_KEY=cta_…", ": the key is in the environment")
        done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert '"acme backend"' in run("ex-admin-list")
    created = run("ex-admin-create")
    assert '"key":"ctr_' in created.replace(" ", "")
    key = ApiKey.objects.get(name="backend")
    assert key.spend_cap_daily_micros == 5_000_000 and key.created_by is None
    usage = run("ex-admin-usage")
    assert '"group_by":"key"' in usage.replace(" ", "") and '"openapi":"3' in usage.replace(" ", "")
