"""API keys in the portal: one URL, /portal/api-keys, serves the page to browsers and JSON to API clients.

Both doors call the same services (apikey_create, apikey_revoke, apikey_list) as manage.py does. A request gets
JSON when its Accept header prefers application/json or its body is JSON; everything else gets the page.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.views.decorators.csrf import csrf_protect
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Organization
from apikeys.issuers import KeyIssuerUnavailable
from apikeys.models import ApiKey, ApiKeyEvent
from apikeys.services import PLAYGROUND_ACTOR_LABEL, apikey_create, apikey_list, apikey_revoke, expiry_in_days
from billing.selectors import models_for_organization
from gateway.errors import catalog as error_catalog  # the docs page's error table
from portal.allowances import allowances_for
from portal.context import (
    ORG_PARAMETER,
    PortalAPIView,
    PortalContext,
    forbidden,
    portal_page,
    rate_limit_usage,
    render_portal,
    too_many_requests,
)
from portal.serializers import ApiKeyCreatedSerializer, ApiKeyCreateSerializer, ApiKeyListQuerySerializer, ApiKeySerializer
from portal_project.proxies import client_ip

KEY_CREATE_GROUP = "portal:key-create"
MANAGERS_ONLY = "Only owners and admins of this organization can create or revoke keys."
# The most keys one page or one API listing shows (the API pages with limit/offset within it).
KEY_LIST_MAX = 500
EXPIRY_CHOICES = [("", "Never"), ("7", "In 7 days"), ("30", "In 30 days"), ("90", "In 90 days"), ("365", "In 1 year")]


def wants_json(request: HttpRequest) -> bool:
    if request.content_type == "application/json":
        return True
    return request.get_preferred_type(["text/html", "application/json"]) == "application/json"


def keys_for_listing(organization: Organization) -> QuerySet[ApiKey]:
    playground = ApiKeyEvent.objects.filter(
        api_key=OuterRef("pk"), action=ApiKeyEvent.Action.CREATE, actor_label=PLAYGROUND_ACTOR_LABEL
    )
    return apikey_list(organization=organization).annotate(is_playground=Exists(playground))


def key_of(organization: Organization, key_id: int) -> ApiKey | None:
    """A key of this organization only: another organization's id is simply not found."""
    return keys_for_listing(organization).filter(pk=key_id).first()


# --- The page ------------------------------------------------------------------------------------


class KeyCreateForm(forms.Form):
    name = forms.CharField(max_length=100, label="Name", widget=forms.TextInput(attrs={"placeholder": "e.g. production backend"}))
    expires_in_days = forms.ChoiceField(choices=EXPIRY_CHOICES, required=False, label="Expires")


# The raw key of a key just created, kept in the session between the POST and the GET it redirects to, and popped
# by that GET: reloading the page neither shows it again nor creates another key (post/redirect/get). A slot older
# than CREATED_KEY_SHOWN_FOR_S (the redirect was never followed) is dropped unseen: the key is then lost, as a key
# whose page was closed is.
CREATED_KEY_SLOT = "portal_created_key"
CREATED_KEY_SHOWN_FOR_S = 300


def duplicate_name_error(organization: Organization, name: str) -> str | None:
    """Two active keys of one organization with one name cannot be told apart in the list or the usage breakdown."""
    name = name.strip()
    active = Q(revoked_at__isnull=True) & (Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
    same = apikey_list(organization=organization).filter(active, name__iexact=name)
    if name and same.exclude(events__actor_label=PLAYGROUND_ACTOR_LABEL).exists():
        return f"This organization already has an active key named “{name}”: choose another name, or revoke that key first."
    return None


@csrf_protect
@portal_page
def api_keys_page(request: HttpRequest) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    created: dict[str, Any] | None = None
    form = KeyCreateForm()
    status_code = 200
    if request.method == "POST":
        if not ctx.can_manage_keys:
            return forbidden(request, MANAGERS_ONLY)
        retry_after = rate_limit_usage(request, group=KEY_CREATE_GROUP, rate=settings.PORTAL_RATELIMIT_KEY_CREATE, key="user")
        if retry_after is not None:
            return too_many_requests(request, retry_after)
        form = KeyCreateForm(request.POST)
        status_code = 400
        if form.is_valid():
            days = form.cleaned_data["expires_in_days"]
            duplicate = duplicate_name_error(ctx.organization, form.cleaned_data["name"])
            if duplicate:
                form.add_error("name", duplicate)
            else:
                try:
                    made = apikey_create(
                        organization=ctx.organization,
                        name=form.cleaned_data["name"],
                        created_by=ctx.user,
                        expires_at=expiry_in_days(int(days)) if days else None,
                        actor_label="portal",
                        source_ip=client_ip(request),
                    )
                except KeyIssuerUnavailable:
                    form.add_error(None, "Keys cannot be created right now; please try again in a minute.")
                    status_code = 503
                except ValueError as exc:
                    form.add_error("name", str(exc))
                else:
                    request.session[CREATED_KEY_SLOT] = {
                        "organization_id": ctx.organization.pk,
                        "name": made.api_key.name,
                        "raw": made.raw,
                        "at": timezone.now().timestamp(),
                    }
                    return redirect(reverse("portal:api-keys") + "#new-key", permanent=False)
    elif request.method != "GET":
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    else:
        slot = request.session.pop(CREATED_KEY_SLOT, None)
        # Shown only in the organization it was made for (the user may have switched in another tab).
        fresh = isinstance(slot, dict) and timezone.now().timestamp() - float(slot.get("at", 0)) <= CREATED_KEY_SHOWN_FOR_S
        if fresh and slot["organization_id"] == ctx.organization.pk:
            created = slot
    aliases = models_for_organization(ctx.organization)
    default_model = settings.PORTAL_DEFAULT_MODEL if any(a.alias == settings.PORTAL_DEFAULT_MODEL for a in aliases) else None
    response = render_portal(
        request,
        "apikeys/api_keys.html",
        {
            "nav": "keys",
            "keys": list(keys_for_listing(ctx.organization)[:KEY_LIST_MAX]),
            "form": form,
            "created": created,
            "base_url": settings.PORTAL_PUBLIC_BASE_URL,
            "example_model": default_model or (aliases[0].alias if aliases else "oss-20b"),
            "warnings": [a for a in allowances_for(ctx.organization.pk, ctx.organization.plan, now=timezone.now()) if a.is_near],
        },
        status=status_code,
    )
    # The response that carries a raw key must not be kept by the browser or any cache.
    add_never_cache_headers(response)
    return response


@portal_page
def api_key_revoke_page(request: HttpRequest, key_id: int) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    key = key_of(ctx.organization, key_id)
    if key is None:
        return render_portal(request, "portal/not_found.html", {"what": "key"}, status=404)
    if not ctx.can_manage_keys:
        return forbidden(request, MANAGERS_ONLY)
    if request.method == "POST":
        apikey_revoke(api_key=key, actor=ctx.user, actor_label="portal", source_ip=client_ip(request))
        messages.success(request, f"Key “{key.name}” ({key.masked}) is revoked. Requests with it are refused from now on.")
        return redirect("portal:api-keys")
    return render_portal(request, "apikeys/revoke_confirm.html", {"nav": "keys", "key": key})


# --- The JSON API ----------------------------------------------------------------------------------


class ApiKeyCollection(PortalAPIView):
    """GET lists the organization's keys (masked); POST creates one and returns the raw key once."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not wants_json(request):
            return api_keys_page(request)
        return super().dispatch(request, *args, **kwargs)

    @extend_schema(
        parameters=[ORG_PARAMETER, ApiKeyListQuerySerializer],
        responses=ApiKeySerializer(many=True),
        operation_id="api_keys_list",
        description="Newest first, at most `limit` keys from `offset`; the X-Total-Count header says how many there are.",
    )
    def get(self, request: Request) -> Response:
        paging = ApiKeyListQuerySerializer(data=request.query_params, context={"max_limit": KEY_LIST_MAX})
        paging.is_valid(raise_exception=True)
        ctx = self.portal(request)
        keys = keys_for_listing(ctx.organization)
        start, limit = paging.validated_data["offset"], paging.validated_data["limit"]
        return Response(
            ApiKeySerializer(keys[start : start + limit], many=True).data, headers={"X-Total-Count": str(keys.count())}
        )

    @extend_schema(
        parameters=[ORG_PARAMETER],
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyCreatedSerializer},
        operation_id="api_keys_create",
    )
    def post(self, request: Request) -> Response:
        ctx = self.portal(request)
        if not ctx.can_manage_keys:
            raise PermissionDenied(MANAGERS_ONLY)
        retry_after = rate_limit_usage(request, group=KEY_CREATE_GROUP, rate=settings.PORTAL_RATELIMIT_KEY_CREATE, key="user")
        if retry_after is not None:
            return Response(
                {"detail": f"Too many keys created; try again in {retry_after} seconds."},
                status=status.HTTP_429_TOO_MANY_REQUESTS,
                headers={"Retry-After": str(retry_after)},
            )
        body = ApiKeyCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        duplicate = duplicate_name_error(ctx.organization, body.validated_data["name"])
        if duplicate:
            raise ValidationError({"name": [duplicate]})
        try:
            created = apikey_create(
                organization=ctx.organization,
                name=body.validated_data["name"],
                created_by=ctx.user,
                expires_at=body.validated_data["expires_at"],
                actor_label="portal api",
                source_ip=client_ip(request),
            )
        except KeyIssuerUnavailable:
            return Response(
                {"detail": "Keys cannot be created right now; try again in a minute."}, status=status.HTTP_503_SERVICE_UNAVAILABLE
            )
        except ValueError as exc:
            raise ValidationError({"name": [str(exc)]}) from None
        data = ApiKeyCreatedSerializer(created.api_key).data
        data["key"] = created.raw
        response = Response(data, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response


class ApiKeyDetail(PortalAPIView):
    """GET shows one key (masked); DELETE revokes it. Another organization's key is not found."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if request.method == "GET" and not wants_json(request):
            return redirect("portal:api-keys")
        return super().dispatch(request, *args, **kwargs)

    def _key(self, ctx: PortalContext, key_id: int) -> ApiKey:
        key = key_of(ctx.organization, key_id)
        if key is None:
            raise NotFound("No such key.")
        return key

    @extend_schema(parameters=[ORG_PARAMETER], responses=ApiKeySerializer, operation_id="api_keys_retrieve")
    def get(self, request: Request, key_id: int) -> Response:
        ctx = self.portal(request)
        return Response(ApiKeySerializer(self._key(ctx, key_id)).data)

    @extend_schema(parameters=[ORG_PARAMETER], responses=ApiKeySerializer, operation_id="api_keys_revoke")
    def delete(self, request: Request, key_id: int) -> Response:
        ctx = self.portal(request)
        key = self._key(ctx, key_id)
        if not ctx.can_manage_keys:
            raise PermissionDenied(MANAGERS_ONLY)
        revoked = apikey_revoke(api_key=key, actor=ctx.user, actor_label="portal api", source_ip=client_ip(request))
        revoked.is_playground = key.is_playground  # type: ignore[attr-defined]
        return Response(ApiKeySerializer(revoked).data)


# --- The quickstart ---------------------------------------------------------------------------------


def quickstart_examples(*, base_url: str, model: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """The docs page's examples, by tab: (element id, caption, code), all with this deployment's base URL."""
    v1 = f"{base_url}/v1"
    curl = [
        (
            "ex-curl",
            "curl · chat completion",
            f"""curl {v1}/chat/completions \\
  -H "Authorization: Bearer $CORTENSOR_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Summarize Cortensor in one sentence."}}], "max_tokens": 48}}'""",
        ),
        (
            "ex-curl-stream",
            "curl · streaming (server-sent events)",
            f"""curl -N {v1}/chat/completions \\
  -H "Authorization: Bearer $CORTENSOR_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{{"model": "{model}", "stream": true, "messages": [{{"role": "user", "content": "Stream a short reply."}}], "max_tokens": 48}}'""",
        ),
        (
            "ex-curl-responses",
            "curl · OpenAI Responses API",
            f"""curl {v1}/responses \\
  -H "Authorization: Bearer $CORTENSOR_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{{"model": "{model}", "instructions": "Answer in one sentence.", "input": "Summarize Cortensor.", "max_output_tokens": 48}}'""",
        ),
        (
            "ex-curl-messages",
            "curl · Anthropic messages, streaming",
            f"""curl -N {v1}/messages \\
  -H "x-api-key: $CORTENSOR_API_KEY" \\
  -H "anthropic-version: 2023-06-01" \\
  -H "Content-Type: application/json" \\
  -d '{{"model": "{model}", "max_tokens": 48, "stream": true, "messages": [{{"role": "user", "content": "Stream a short reply."}}]}}'""",
        ),
    ]
    openai_py = [
        (
            "ex-openai",
            "pip install openai",
            f"""import os
from openai import OpenAI

client = OpenAI(base_url="{v1}", api_key=os.environ["CORTENSOR_API_KEY"])

completion = client.chat.completions.create(
    model="{model}",
    messages=[{{"role": "user", "content": "Summarize Cortensor in one sentence."}}],
    max_tokens=48,
)
print(completion.choices[0].message.content)""",
        ),
        (
            "ex-openai-stream",
            "Streaming",
            f"""stream = client.chat.completions.create(
    model="{model}",
    messages=[{{"role": "user", "content": "Stream a short reply."}}],
    max_tokens=48,
    stream=True,
    stream_options={{"include_usage": True}},
)
for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    elif chunk.usage:
        print(f"\\n{{chunk.usage.total_tokens}} tokens")""",
        ),
    ]
    openai_py.append(
        (
            "ex-openai-responses",
            "Responses API: a conversation that continues, and a stream",
            f"""response = client.responses.create(
    model="{model}",
    instructions="Answer in one sentence.",
    input="Summarize Cortensor.",
    max_output_tokens=48,
)
print(response.output_text)

# Stored unless you send store=False: continue from its id, the earlier turns are sent for you.
follow_up = client.responses.create(model="{model}", input="Now in five words.", previous_response_id=response.id)
print(follow_up.output_text)

with client.responses.stream(model="{model}", input="Stream a short reply.", max_output_tokens=48) as stream:
    for event in stream:
        if event.type == "response.output_text.delta":
            print(event.delta, end="", flush=True)""",
        )
    )
    openai_py.append(
        (
            "ex-openai-agents",
            "pip install openai-agents",
            f"""import os
from agents import Agent, Runner, set_default_openai_client, set_tracing_disabled
from openai import AsyncOpenAI

set_default_openai_client(AsyncOpenAI(base_url="{v1}", api_key=os.environ["CORTENSOR_API_KEY"]), use_for_tracing=False)
set_tracing_disabled(True)  # traces would go to OpenAI

agent = Agent(name="Assistant", instructions="Answer in one sentence.", model="{model}")
print(Runner.run_sync(agent, "Summarize Cortensor.").final_output)""",
        )
    )
    anthropic_py = [
        (
            "ex-anthropic",
            "pip install anthropic",
            f"""import os
from anthropic import Anthropic

client = Anthropic(base_url="{base_url}", api_key=os.environ["CORTENSOR_API_KEY"])

message = client.messages.create(
    model="{model}",
    max_tokens=48,
    messages=[{{"role": "user", "content": "Summarize Cortensor in one sentence."}}],
)
print(message.content[0].text)""",
        ),
        (
            "ex-anthropic-stream",
            "Streaming",
            f"""with client.messages.stream(
    model="{model}",
    max_tokens=48,
    messages=[{{"role": "user", "content": "Stream a short reply."}}],
) as stream:
    for text in stream.text_stream:
        print(text, end="", flush=True)""",
        ),
    ]
    node = [
        (
            "ex-node",
            "npm install openai",
            f"""import OpenAI from "openai";

const client = new OpenAI({{ baseURL: "{v1}", apiKey: process.env.CORTENSOR_API_KEY }});

const completion = await client.chat.completions.create({{
  model: "{model}",
  messages: [{{ role: "user", content: "Summarize Cortensor in one sentence." }}],
  max_tokens: 48,
}});
console.log(completion.choices[0].message.content);

const stream = await client.chat.completions.create({{
  model: "{model}",
  messages: [{{ role: "user", content: "Stream a short reply." }}],
  max_tokens: 48,
  stream: true,
}});
for await (const chunk of stream) process.stdout.write(chunk.choices[0]?.delta?.content ?? "");""",
        ),
    ]
    return [("curl", curl), ("Python · OpenAI", openai_py), ("Python · Anthropic", anthropic_py), ("Node · OpenAI", node)]


@portal_page
def docs_page(request: HttpRequest) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    aliases = models_for_organization(ctx.organization)
    names = [a.alias for a in aliases]
    model = request.GET.get("model")
    if model not in names:
        model = settings.PORTAL_DEFAULT_MODEL if settings.PORTAL_DEFAULT_MODEL in names else (names[0] if names else "oss-20b")
    base = settings.PORTAL_PUBLIC_BASE_URL
    return render_portal(
        request,
        "portal/docs.html",
        {
            "nav": "docs",
            "models": aliases,
            "model": model,
            "base_url": base,
            "openai_base_url": f"{base}/v1",
            "error_codes": error_catalog(),  # generated from the error classes, so it cannot drift from them
            "examples": quickstart_examples(base_url=base, model=model),
            "plan": ctx.organization.plan,
        },
    )
