"""The playground: the gateway pipeline behind a session-authenticated, CSRF-checked portal route, charged to the organization."""

from __future__ import annotations

import json

import httpx
import pytest
from django.test import Client

from apikeys.models import ApiKey
from billing.models import Plan
from routerpools.models import ModelAlias
from simulator import simulated_tokens
from tests.support.live import ALIAS, LiveGateway, wait_for, wait_until_gateway_caught_up
from tests.support.portal import Team, ensure_site_and_plans, make_team, portal_settings  # noqa: F401
from usage.models import UsageEvent

CHATML_HI = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
URL = "/portal/playground/chat/completions"


def session_http(gateway: LiveGateway, client: Client, *, csrf: bool = True) -> httpx.Client:
    """An httpx client to the live server carrying the Django test client's session, as a browser would."""
    client.get("/portal/playground")  # sets the CSRF cookie
    cookies = {name: morsel.value for name, morsel in client.cookies.items()}
    headers = {"X-CSRFToken": cookies["csrftoken"], "Referer": f"{gateway.url}/portal/playground"} if csrf else {}
    return httpx.Client(base_url=gateway.url, cookies=cookies, headers=headers, timeout=20)


def chat(stream: bool, model: str = ALIAS) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 9,
        "stream": stream,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.django_db
def test_anonymous_callers_get_403_json_and_no_key_is_made(portal_settings) -> None:  # noqa: ANN001, F811
    ensure_site_and_plans()
    response = Client().post(URL, data=json.dumps(chat(False)), content_type="application/json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_signed_in"
    assert Client().get(URL).status_code == 405  # POST only
    assert not ApiKey.objects.exists()


@pytest.mark.django_db
def test_the_page_offers_the_plans_models_and_no_key(portal_settings) -> None:  # noqa: ANN001, F811
    ensure_site_and_plans()
    team = make_team()
    from routerpools.models import RouterPool

    pool = RouterPool.objects.create(name="p")
    ModelAlias.objects.create(alias="oss-20b", pool=pool)
    page = team.client(team.member).get("/portal/playground").content.decode()
    assert '<option value="oss-20b"' in page and 'data-endpoint="/portal/playground/chat/completions"' in page
    assert "ctr_" not in page


@pytest.fixture
def live_team(gateway: LiveGateway) -> Team:
    ensure_site_and_plans()
    return make_team()


def test_playground_streams_through_the_pipeline_and_charges_the_organization(gateway: LiveGateway, live_team: Team) -> None:
    team = live_team
    # A member, who may not create keys, uses the playground: its key is the portal's, not theirs.
    assert team.client(team.member).post("/portal/api-keys", {"name": "mine"}).status_code == 403
    with session_http(gateway, team.client(team.member)) as http, http.stream("POST", URL, json=chat(True)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        request_id = response.headers["x-request-id"]
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "".join(simulated_tokens(CHATML_HI, 9)[0])
    assert chunks[-1]["usage"]["completion_tokens"] == len(simulated_tokens(CHATML_HI, 9)[0])
    row = wait_for(lambda: UsageEvent.objects.filter(request_id=request_id).first(), timeout=10)
    key = ApiKey.objects.get(pk=row.api_key_id)
    assert row.organization_id == team.acme.pk and row.status == "ok" and row.streamed
    assert key.name == "playground" and key.organization == team.acme and key.created_by is None
    assert key.kind == ApiKey.Kind.PLAYGROUND
    # A second request reuses the same internal key, which no key list shows and no customer can revoke.
    with session_http(gateway, team.client(team.owner)) as http:
        second = http.post(URL, json=chat(False))
    assert second.status_code == 200 and second.json()["object"] == "chat.completion"
    assert ApiKey.objects.filter(organization=team.acme, name="playground").count() == 1
    owner = team.client(team.owner)
    listed = owner.get("/portal/api-keys", HTTP_ACCEPT="application/json").json()
    assert [k["name"] for k in listed] == ["acme backend"]
    assert key.masked not in owner.get("/portal/api-keys", HTTP_ACCEPT="text/html").content.decode()
    assert owner.delete(f"/portal/api-keys/{key.pk}", HTTP_ACCEPT="application/json").status_code == 404
    assert owner.post(f"/portal/api-keys/{key.pk}/revoke").status_code == 404
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None
    # Its use shows in the "by key" split as the playground's, not as a key.
    wait_for(lambda: UsageEvent.objects.filter(api_key=key).count() == 2, timeout=10)
    rows = owner.get("/portal/usage-summary?group_by=key", HTTP_ACCEPT="application/json").json()["rows"]
    assert [(r["key_id"], r["key_name"], r["key_masked"], r["requests"]) for r in rows] == [(key.pk, "Playground", "", 2)]


def test_playground_needs_the_csrf_token(gateway: LiveGateway, live_team: Team) -> None:
    with session_http(gateway, live_team.client(live_team.member), csrf=False) as http:
        response = http.post(URL, json=chat(False))
    assert response.status_code == 403
    assert not ApiKey.objects.filter(name="playground").exists()


def test_playground_applies_the_plan_allow_list(gateway: LiveGateway, live_team: Team) -> None:
    route = ModelAlias.objects.get(alias=ALIAS)
    other = ModelAlias.objects.create(alias="premium-only", pool=route.pool)
    Plan.objects.get(slug="free").allowed_aliases.set([other])
    wait_until_gateway_caught_up(gateway)
    with session_http(gateway, live_team.client(live_team.member)) as http:
        response = http.post(URL, json=chat(False))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "model_not_allowed"


@pytest.mark.django_db
def test_the_code_panel_names_the_docs_base_url_and_key_variable_and_no_key(portal_settings) -> None:  # noqa: ANN001, F811
    """The "View code" panel's snippets are built in the browser from what the page names: the base URL and the key's
    environment variable the docs page uses. The page itself holds neither a key nor a snippet with one."""
    ensure_site_and_plans()
    team = make_team()
    from routerpools.models import RouterPool

    ModelAlias.objects.create(alias="oss-20b", pool=RouterPool.objects.create(name="p"))
    client = team.client(team.member)
    page = client.get("/portal/playground").content.decode()
    docs = client.get("/portal/docs").content.decode()
    assert 'data-base-url="https://api.example.test"' in page and 'data-key-env="CORTENSOR_API_KEY"' in page
    assert '<code class="mono">base_url = https://api.example.test/v1</code>' in docs and "$CORTENSOR_API_KEY" in docs
    assert 'aria-expanded="false" aria-controls="pg-code">View code</button>' in page
    assert '<section class="code-panel" id="pg-code" aria-labelledby="pg-code-title" hidden>' in page
    for api, tab in (("chat", "Chat Completions"), ("responses", "Responses"), ("messages", "Anthropic Messages")):
        assert f'data-tab-label="{tab}" id="pg-code-{api}"' in page
        assert f'data-copy-target="pg-code-{api}-python" aria-label="Copy the Python code">Copy Python</button>' in page
        assert f'data-copy-target="pg-code-{api}-curl" aria-label="Copy the curl command">Copy curl</button>' in page
    assert "ctr_" not in page
