"""The portal playground: chat with a model through the gateway's own pipeline, signed in by session instead of a key.

Usage is charged to the organization like any request: the pipeline records it against the organization's
internal "playground" key, whose raw value was thrown away when it was made, so no key ever reaches the page.
The one place outside the gateway that calls into it, and so it lives here, with the project's wiring.
"""

from __future__ import annotations

from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_POST

from accounts.portal import PortalContext, models_for_organization, portal_context, portal_page, render_portal
from apikeys.services import apikey_get_or_create_playground
from gateway.auth import Principal
from gateway.errors import GatewayError, PermissionDenied
from gateway.pipeline import handle_completion, new_request_id
from gateway.state import state
from gateway.surfaces import OPENAI_CHAT


@portal_page
def playground_page(request: HttpRequest) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    return render_portal(
        request,
        "portal/playground.html",
        {"nav": "playground", "models": models_for_organization(ctx.organization)},
    )


@dataclass(frozen=True, slots=True)
class _Caller:
    organization_id: int
    organization_slug: str
    organization_active: bool
    plan_id: int | None
    key_id: int


class _NotSignedIn(Exception):
    pass


def _caller(request: HttpRequest) -> _Caller:
    # Sync: the session, the memberships and the key row are ORM work, done in a worker thread.
    if not request.user.is_authenticated:
        raise _NotSignedIn
    org = portal_context(request).organization
    key = apikey_get_or_create_playground(organization=org)
    return _Caller(org.pk, org.slug, org.is_active, org.plan_id, key.pk)


def _error(err: GatewayError, status: int | None = None) -> HttpResponse:
    request_id = new_request_id()
    response = OPENAI_CHAT.error_response(err, request_id=request_id)
    if status is not None:
        response.status_code = status
    response["x-request-id"] = request_id
    return response


@require_POST
async def playground_completion(request: HttpRequest) -> HttpResponse:
    """POST an OpenAI chat completion body; the answer comes back exactly as /v1/chat/completions sends it."""
    try:
        caller = await sync_to_async(_caller)(request)
    except _NotSignedIn:
        return _error(PermissionDenied("sign in to the portal to use the playground", code="not_signed_in"))
    if not caller.organization_active:
        return _error(PermissionDenied("this organization is suspended", code="account_suspended"))
    # The plan comes from the gateway's own cache, loaded first, so the allow-list is the one /v1 applies.
    await state.ensure_started()
    principal = Principal(
        key_id=caller.key_id,
        organization_id=caller.organization_id,
        organization_slug=caller.organization_slug,
        plan=state.plan(caller.plan_id),
    )
    return await handle_completion(request, OPENAI_CHAT, principal=principal)
