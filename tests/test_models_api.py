"""`/v1/models` through the official SDKs against a live gateway: OpenAI's shape, and Anthropic's for `anthropic-version`.

Both show each alias's cap (what a request without max_tokens gets) and context window; the Anthropic shape pages
with `limit` / `after_id` / `before_id`, filters on `lifecycle`, and refuses in Anthropic's error shape.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anthropic
import httpx
import openai
import pytest

from routerpools.models import ModelAlias
from tests.conftest import ALIAS, IssuedKey, LiveGateway, issue_key, wait_until_gateway_caught_up

VERSION = {"anthropic-version": "2023-06-01"}
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def key(gateway: LiveGateway) -> IssuedKey:
    return issue_key(slug="models-org", plan="pro")


def openai_client(gateway: LiveGateway, key: IssuedKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key.raw, max_retries=0, timeout=20)


def anthropic_client(gateway: LiveGateway, key: IssuedKey | str) -> anthropic.Anthropic:
    raw = key if isinstance(key, str) else key.raw
    return anthropic.Anthropic(base_url=gateway.url, api_key=raw, max_retries=0, timeout=20)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_alias(gateway: LiveGateway, alias: str, **fields: Any) -> ModelAlias:
    row = ModelAlias.objects.get(alias=alias)
    for name, value in fields.items():
        setattr(row, name, value)
    row.save()  # a save records a cache change (an update() would not)
    wait_until_gateway_caught_up(gateway)
    return row


def more_aliases(gateway: LiveGateway, count: int) -> list[str]:
    """`count` more aliases on the simulator's pool, each a day newer than the last; newest first, as Anthropic lists."""
    pool = ModelAlias.objects.get(alias=ALIAS).pool
    set_alias(gateway, ALIAS, created_at=EPOCH)
    names = [f"extra-{i}" for i in range(count)]
    for i, name in enumerate(names):
        ModelAlias.objects.create(alias=name, pool=pool, created_at=EPOCH + timedelta(days=i + 1))
    wait_until_gateway_caught_up(gateway)
    return [*reversed(names), ALIAS]


# --- OpenAI's shape ---------------------------------------------------------------------------------------------------


def test_openai_sdk_sees_the_cap_and_context_window_of_each_model(gateway: LiveGateway, key: IssuedKey) -> None:
    client = openai_client(gateway, key)
    (model,) = client.models.list().data
    assert (model.id, model.object, model.owned_by) == (ALIAS, "model", "cortensor")
    # Fields OpenAI's Model does not declare are kept by the SDK (its types allow extra fields).
    assert (model.max_output_tokens, model.context_length, model.display_name) == (4096, None, ALIAS)  # type: ignore[attr-defined]

    set_alias(gateway, ALIAS, max_tokens_cap=700, context_length=32_768, display_name="OSS 20B")
    model = client.models.retrieve(ALIAS)
    assert (model.id, model.max_output_tokens, model.context_length, model.display_name) == (  # type: ignore[attr-defined]
        ALIAS, 700, 32_768, "OSS 20B",
    )  # fmt: skip
    assert [m.max_output_tokens for m in client.models.list()] == [700]  # type: ignore[attr-defined]


def test_without_anthropic_version_the_shape_stays_openais(gateway: LiveGateway, key: IssuedKey) -> None:
    """x-api-key alone (or an empty anthropic-version) is not the Anthropic SDK: OpenAI's list, no paging."""
    for headers in ({"x-api-key": key.raw}, {"x-api-key": key.raw, "anthropic-version": ""}):
        response = httpx.get(f"{gateway.url}/v1/models?limit=0", headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["object"] == "list" and "request-id" not in response.headers


# --- Anthropic's shape ---------------------------------------------------------------------------------------------


def test_anthropic_sdk_lists_and_retrieves_models(gateway: LiveGateway, key: IssuedKey) -> None:
    created = set_alias(gateway, ALIAS, max_tokens_cap=2048, context_length=131_072, display_name="OSS 20B").created_at
    client = anthropic_client(gateway, key)

    raw = client.models.with_raw_response.list()
    page = raw.parse()
    (model,) = page.data
    assert isinstance(model, anthropic.types.ModelInfo)
    assert (model.type, model.id, model.display_name, model.lifecycle) == ("model", ALIAS, "OSS 20B", "active")
    assert model.created_at == created.replace(microsecond=0)
    assert (model.max_tokens, model.max_input_tokens) == (2048, 131_072)
    assert (page.has_more, page.first_id, page.last_id) == (False, ALIAS, ALIAS)
    rid = raw.headers["x-request-id"]
    assert rid.startswith("req_") and raw.headers["request-id"] == rid
    assert "anthropic-ratelimit-requests-limit" in raw.headers and "x-ratelimit-limit-requests" not in raw.headers

    one = client.models.retrieve(ALIAS)
    assert one == model

    # The wire, exactly: ModelInfo's fields (lifecycle is required by the SDK), RFC 3339 times, the page's cursors.
    body = httpx.get(f"{gateway.url}/v1/models", headers={"x-api-key": key.raw, **VERSION}, timeout=10).json()
    entry = {
        "type": "model",
        "id": ALIAS,
        "display_name": "OSS 20B",
        "created_at": rfc3339(created),
        "lifecycle": "active",
        "max_input_tokens": 131_072,
        "max_tokens": 2048,
    }
    assert body == {"data": [entry], "has_more": False, "first_id": ALIAS, "last_id": ALIAS}
    retrieved = httpx.get(
        f"{gateway.url}/v1/models/{ALIAS}", headers={"authorization": f"Bearer {key.raw}", **VERSION}, timeout=10
    )
    assert retrieved.json() == entry


def test_anthropic_pages_newest_first_with_both_cursors(gateway: LiveGateway, key: IssuedKey) -> None:
    newest_first = more_aliases(gateway, 4)
    client = anthropic_client(gateway, key)

    # The SDK's auto-pagination follows last_id as after_id until has_more is false.
    assert [m.id for m in client.models.list(limit=2)] == newest_first
    assert [m.id for m in client.models.list()] == newest_first  # 20 a page by default

    first = client.models.list(limit=2)
    assert ([m.id for m in first.data], first.has_more, first.first_id, first.last_id) == (
        newest_first[:2], True, newest_first[0], newest_first[1],
    )  # fmt: skip
    last = client.models.list(after_id=newest_first[2], limit=2)
    assert ([m.id for m in last.data], last.has_more) == (newest_first[3:], False)
    # before_id pages backwards: the `limit` entries just before it, has_more when more are before those.
    before = client.models.list(before_id=newest_first[4], limit=2)
    assert ([m.id for m in before.data], before.has_more, before.first_id) == (newest_first[2:4], True, newest_first[2])
    # The SDK follows first_id as before_id: pages come newest-last, each in list order.
    assert [m.id for m in client.models.list(before_id=newest_first[4], limit=2)] == newest_first[2:4] + newest_first[:2]
    assert [m.id for m in client.models.list(before_id=newest_first[0]).data] == []

    # Every alias is active: a filter without `active` lists nothing, one with it everything.
    assert client.models.list(lifecycle=["retired", "deprecated"]).data == []
    empty = client.models.list(lifecycle=["retired"])
    assert (empty.has_more, empty.first_id, empty.last_id) == (False, None, None)
    assert [m.id for m in client.models.list(lifecycle=["active", "retired"], limit=1000)] == newest_first


def test_anthropic_lists_only_the_models_of_the_plan(gateway: LiveGateway) -> None:
    from billing.models import Plan

    more_aliases(gateway, 1)
    plan = Plan.objects.create(slug="only-one", name="Only one", requests_per_minute=100)
    plan.allowed_aliases.set(ModelAlias.objects.filter(alias="extra-0"))
    limited = issue_key(slug="limited-models", plan="only-one")
    wait_until_gateway_caught_up(gateway)
    client = anthropic_client(gateway, limited)
    assert [m.id for m in client.models.list()] == ["extra-0"]
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve(ALIAS)


def anthropic_error(exc: anthropic.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    rid = exc.response.headers["x-request-id"]
    assert body["request_id"] == rid and exc.response.headers["request-id"] == rid
    assert body["type"] == "error" and set(body) == {"type", "error", "request_id"}
    return body["error"]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"after_id": "no-such-model"}, "after_id"),
        ({"before_id": "no-such-model"}, "before_id"),
        ({"after_id": ALIAS, "before_id": ALIAS}, "before_id"),
        ({"lifecycle": ["gone"]}, "lifecycle"),
    ],
    ids=["limit-0", "limit-1001", "after-unknown", "before-unknown", "both-cursors", "bad-lifecycle"],
)
def test_anthropic_bad_paging_is_a_400_in_anthropics_shape(
    gateway: LiveGateway, key: IssuedKey, params: dict[str, Any], named: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        anthropic_client(gateway, key).models.list(**params)
    error = anthropic_error(info.value)
    assert error["type"] == "invalid_request_error" and error["message"].startswith(named), error


def test_anthropic_errors_come_in_anthropics_shape(gateway: LiveGateway, key: IssuedKey) -> None:
    client = anthropic_client(gateway, key)
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert anthropic_error(missing.value) == {"type": "not_found_error", "message": "the model 'no-such-model' does not exist"}

    with pytest.raises(anthropic.AuthenticationError) as bad_key:
        anthropic_client(gateway, "ctr_not-a-real-key").models.list()
    assert anthropic_error(bad_key.value)["type"] == "authentication_error"

    posted = httpx.post(f"{gateway.url}/v1/models", headers={"x-api-key": key.raw, **VERSION}, timeout=10)
    assert posted.status_code == 405 and posted.headers["allow"] == "GET"
    assert (
        posted.json()["error"]["type"] == "invalid_request_error" and posted.json()["request_id"] == posted.headers["request-id"]
    )
