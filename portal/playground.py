"""The portal playground: chat with a model through the gateway's own pipeline, signed in by session instead of a key.

Usage is charged to the organization like any request: the pipeline records it against the organization's
internal "playground" key, whose raw value was thrown away when it was made, so no key ever reaches the page.
The one place outside the gateway that calls into it, and so it lives here, with the project's wiring.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.http import require_POST

from apikeys.issuers import KeyIssuerUnavailable
from apikeys.services import apikey_get_or_create_playground
from billing.selectors import models_for_organization
from gateway.auth import principal_of
from gateway.errors import GatewayError, PermissionDenied, UpstreamUnavailable
from gateway.logs import current_request_id
from gateway.pipeline import handle_completion
from gateway.state import state
from gateway.surfaces import OPENAI_CHAT
from portal.context import NotAMember, PortalContext, portal_context, portal_page, render_portal

# The variable the docs page's examples read the key from: the "View code" panel's snippets read the same one, so a
# shell set up from the docs runs them as they are. The key itself is never on the page.
API_KEY_ENV = "CORTENSOR_API_KEY"
# The "View code" panel's tabs: (element id suffix, tab label, the pip package its Python snippet needs).
CODE_TABS = [
    ("chat", "Chat Completions", "openai"),
    ("responses", "Responses", "openai"),
    ("messages", "Anthropic Messages", "anthropic"),
]


@portal_page
def playground_page(request: HttpRequest) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    models = models_for_organization(ctx.organization)
    return render_portal(
        request,
        "portal/playground.html",
        {
            "nav": "playground",
            "models": models,
            "default_model": settings.PORTAL_DEFAULT_MODEL,
            # The docs page's base URL: the snippets of the "View code" panel call the gateway where apps do.
            "base_url": settings.PORTAL_PUBLIC_BASE_URL,
            "key_env": API_KEY_ENV,
            "code_tabs": CODE_TABS,
        },
    )


class _NotSignedIn(Exception):
    pass


ORG_HEADER = "X-Portal-Organization"  # the organization the page was rendered for (portal.js sends it)


def _playground_key_public_id(request: HttpRequest) -> str:
    # Sync: the session, the memberships and the key row are ORM work, done in a worker thread.
    if not request.user.is_authenticated:
        raise _NotSignedIn
    # The page names its organization, so a member removed while the page was open is refused (NotAMember) instead
    # of being charged to whichever organization the session falls back to.
    organization = portal_context(request, org=request.headers.get(ORG_HEADER) or None).organization
    return apikey_get_or_create_playground(organization=organization).public_id


def _error(err: GatewayError) -> HttpResponse:
    request_id = current_request_id()  # the one id of this HTTP request, made at the ASGI entry
    response = OPENAI_CHAT.error_response(err, request_id=request_id)
    response["x-request-id"] = request_id
    return response


@require_POST
async def playground_completion(request: HttpRequest) -> HttpResponseBase:
    """POST an OpenAI chat completion body; the answer comes back exactly as /v1/chat/completions sends it."""
    try:
        public_id = await sync_to_async(_playground_key_public_id)(request)
    except _NotSignedIn:
        return _error(PermissionDenied("sign in to the portal to use the playground", code="not_signed_in"))
    except NotAMember:
        return _error(PermissionDenied("you are no longer a member of this organization; reload the page", code="not_a_member"))
    except KeyIssuerUnavailable:
        return _error(UpstreamUnavailable("the playground cannot start right now; try again shortly"))
    # The key's record comes from the gateway's own cache and becomes a principal the way /v1 makes one,
    # so the plan, its allow-list and the organization's overrides are exactly what an API key would get.
    await state.ensure_started()
    record = await state.key_record(public_id)
    if record is None or record.revoked:  # revoked between the two lines above: the next request makes a new one
        return _error(UpstreamUnavailable("the playground's key was just revoked; send the message again"))
    if not record.organization_active:
        return _error(PermissionDenied("this organization is suspended", code="account_suspended"))
    try:
        principal = await principal_of(record)
    except GatewayError as err:
        return _error(err)
    return await handle_completion(request, OPENAI_CHAT, principal=principal)
