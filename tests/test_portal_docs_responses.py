"""The portal's docs page shows the Responses API route, with examples that run as written."""

from __future__ import annotations

import html

import pytest

from tests.support.portal import ensure_site_and_plans, make_team, portal_settings  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _portal(portal_settings) -> None:  # noqa: ANN001, F811
    ensure_site_and_plans()


def test_docs_show_the_responses_route_with_examples() -> None:
    from routerpools.models import ModelAlias, RouterPool

    ModelAlias.objects.create(alias="oss-20b", pool=RouterPool.objects.create(name="pool-a"))
    team = make_team()
    page = html.unescape(team.client(team.member).get("/portal/docs").content.decode())
    assert "POST /v1/responses" in page and 'GET</code>/<code class="mono">DELETE /v1/responses/{id}' in page
    assert "curl https://api.example.test/v1/responses \\\n" in page
    assert '"input": "Summarize Cortensor.", "max_output_tokens": 48' in page
    assert "client.responses.create(" in page and "previous_response_id=response.id" in page
    assert "client.responses.stream(" in page and 'event.type == "response.output_text.delta"' in page
    assert 'AsyncOpenAI(base_url="https://api.example.test/v1"' in page and "Runner.run_sync(agent" in page
    assert '<code class="mono small">response_not_found</code>' in page
    assert '<code class="mono small">previous_response_not_found</code>' in page


def test_the_python_examples_compile() -> None:
    from portal.views.apikeys import quickstart_examples

    blocks = dict(
        (block_id, code) for _, tab in quickstart_examples(base_url="https://x.test", model="m") for block_id, _, code in tab
    )
    for block_id in ("ex-openai", "ex-openai-responses", "ex-openai-agents"):
        compile(
            blocks[block_id] if block_id != "ex-openai-responses" else blocks["ex-openai"] + "\n" + blocks[block_id],
            block_id,
            "exec",
        )
