"""API keys in the portal: one URL, /portal/api-keys, serves the page to browsers and JSON to API clients.

Both doors call the same services (apikey_create, apikey_revoke, apikey_list) as manage.py does. A request gets
JSON when its Accept header prefers application/json or its body is JSON; everything else gets the page.
"""

from __future__ import annotations

from decimal import Decimal
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
from apikeys.models import ApiKey
from apikeys.services import (
    CUSTOMER_KINDS,
    MICROS_PER_DOLLAR,
    CreatedKey,
    KeySettingsInvalid,
    apikey_create,
    apikey_list,
    apikey_revoke,
    apikey_rotate,
    apikey_update,
    expiry_in_days,
)
from billing.selectors import model_offers, models_for_organization
from gateway.errors import catalog as error_catalog  # the docs page's error table
from portal import openapi
from portal.allowances import allowances_for
from portal.authentication import presented_admin_key
from portal.context import (
    ORG_PARAMETER,
    ApiCaller,
    PortalAPIView,
    PortalContext,
    forbidden,
    portal_page,
    rate_limit_usage,
    render_portal,
    too_many_requests,
)
from portal.serializers import (
    ApiKeyCreatedSerializer,
    ApiKeyCreateSerializer,
    ApiKeyListQuerySerializer,
    ApiKeyRotatedSerializer,
    ApiKeyRotateSerializer,
    ApiKeySerializer,
    ApiKeyUpdateSerializer,
)
from portal.views.billing import plan_limits
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
    """The keys an organization's people see and manage: API keys and admin keys, never the playground's own."""
    return apikey_list(organization=organization, kinds=CUSTOMER_KINDS)


def key_of(organization: Organization, key_id: int) -> ApiKey | None:
    """A key of this organization only: another organization's id is simply not found."""
    return keys_for_listing(organization).filter(pk=key_id).first()


# --- The pages -----------------------------------------------------------------------------------

GRACE_CHOICES = [
    ("0", "None: the old key stops now"),
    ("3600", "1 hour"),
    ("86400", "1 day"),
    ("259200", "3 days"),
    ("604800", "7 days"),
]


def _dollars_to_micros(value: Decimal | None) -> int | None:
    # Exact: the field allows 6 decimal places, so this is an integer number of micro-units.
    return None if value is None else int(value * MICROS_PER_DOLLAR)


def micros_to_dollars(value: int | None) -> Decimal | None:
    return None if value is None else (Decimal(value) / MICROS_PER_DOLLAR).normalize()


def _cap_field(label: str) -> forms.DecimalField:
    return forms.DecimalField(
        label=label,
        required=False,
        min_value=Decimal("0.000001"),
        max_value=Decimal(10**9),
        max_digits=16,
        decimal_places=6,
        help_text="US dollars; empty: no cap of its own",
    )


class KeyControlsForm(forms.Form):
    """A key's own controls as the pages take them: dollars, turned into exact micro-units for the service."""

    allowed_models = forms.MultipleChoiceField(
        label="Models", required=False, widget=forms.CheckboxSelectMultiple, help_text="none ticked: every model"
    )
    requests_per_minute = forms.IntegerField(label="Requests per minute", required=False, min_value=1)
    spend_cap_daily = _cap_field("Daily spend cap ($)")
    spend_cap_monthly = _cap_field("Monthly spend cap ($)")

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        models_field = self.fields["allowed_models"]
        assert isinstance(models_field, forms.MultipleChoiceField)
        models_field.choices = [(a.alias, a.alias) for a in models_for_organization(organization)]
        plan = organization.plan
        if plan is not None:
            self.fields["requests_per_minute"].help_text = f"at most the plan's {plan.requests_per_minute}; empty: the plan's"

    def controls(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "allowed_aliases": list(data["allowed_models"]),
            "requests_per_minute": data["requests_per_minute"],
            "spend_cap_daily_micros": _dollars_to_micros(data["spend_cap_daily"]),
            "spend_cap_monthly_micros": _dollars_to_micros(data["spend_cap_monthly"]),
        }

    def add_service_errors(self, exc: KeySettingsInvalid) -> None:
        for name, why in exc.errors.items():
            self.add_error(_FORM_FIELDS.get(name), why)


# The service's field names (the API's) to the pages' own.
_FORM_FIELDS = {
    "allowed_models": "allowed_models",
    "requests_per_minute": "requests_per_minute",
    "spend_cap_daily_micros": "spend_cap_daily",
    "spend_cap_monthly_micros": "spend_cap_monthly",
    "name": "name",
    "expires_at": "expires_at",
    "kind": "kind",
}


class KeyCreateForm(KeyControlsForm):
    name = forms.CharField(max_length=100, label="Name", widget=forms.TextInput(attrs={"placeholder": "e.g. production backend"}))
    expires_in_days = forms.ChoiceField(choices=EXPIRY_CHOICES, required=False, label="Expires")
    kind = forms.ChoiceField(
        choices=[(ApiKey.Kind.STANDARD, "API key (for /v1)"), (ApiKey.Kind.ADMIN, "Admin key (for the management API)")],
        initial=ApiKey.Kind.STANDARD,
        required=False,  # absent: an API key
        label="Kind",
    )
    field_order = ["name", "kind", "expires_in_days"]


class KeyEditForm(KeyControlsForm):
    name = forms.CharField(max_length=100, label="Name")
    expires_at = forms.DateTimeField(
        label="Expires (UTC)",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="empty: never",
    )
    field_order = ["name", "expires_at"]


def _render_keys_page(
    request: HttpRequest, ctx: PortalContext, *, form: KeyCreateForm, created: dict[str, Any] | None, status: int
) -> HttpResponse:
    aliases = models_for_organization(ctx.organization)
    default_model = settings.PORTAL_DEFAULT_MODEL if any(a.alias == settings.PORTAL_DEFAULT_MODEL for a in aliases) else None
    response = render_portal(
        request,
        "apikeys/api_keys.html",
        {
            "nav": "keys",
            "keys": list(
                keys_for_listing(ctx.organization).annotate(
                    has_successor=Exists(ApiKey.objects.filter(rotated_from=OuterRef("pk")))  # rotated already: no button
                )[:KEY_LIST_MAX]
            ),
            "form": form,
            "created": created,
            "base_url": settings.PORTAL_PUBLIC_BASE_URL,
            "example_model": default_model or (aliases[0].alias if aliases else "oss-20b"),
            "warnings": [a for a in allowances_for(ctx.organization.pk, ctx.organization.plan, now=timezone.now()) if a.is_near],
        },
        status=status,
    )
    # The one response that carries a raw key must not be kept by the browser or any cache.
    add_never_cache_headers(response)
    return response


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
    if name and same.filter(kind__in=CUSTOMER_KINDS).exists():
        return f"This organization already has an active key named “{name}”: choose another name, or revoke that key first."
    return None


@csrf_protect
@portal_page
def api_keys_page(request: HttpRequest) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    created: dict[str, Any] | None = None
    form = KeyCreateForm(organization=ctx.organization)
    status_code = 200
    if request.method == "POST":
        if not ctx.can_manage_keys:
            return forbidden(request, MANAGERS_ONLY)
        retry_after = rate_limit_usage(request, group=KEY_CREATE_GROUP, rate=settings.PORTAL_RATELIMIT_KEY_CREATE, key="user")
        if retry_after is not None:
            return too_many_requests(request, retry_after)
        form = KeyCreateForm(request.POST, organization=ctx.organization)
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
                        kind=form.cleaned_data["kind"] or ApiKey.Kind.STANDARD,
                        **form.controls(),
                    )
                except KeyIssuerUnavailable:
                    form.add_error(None, "Keys cannot be created right now; please try again in a minute.")
                    status_code = 503
                except KeySettingsInvalid as exc:
                    form.add_service_errors(exc)
                except ValueError as exc:
                    form.add_error("name", str(exc))
                else:
                    return _stash_created_and_redirect(request, ctx, made)
    elif request.method != "GET":
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    else:
        created = _pop_created(request, ctx)
    return _render_keys_page(request, ctx, form=form, created=created, status=status_code)


def _stash_created_and_redirect(request: HttpRequest, ctx: PortalContext, made: CreatedKey) -> HttpResponse:
    request.session[CREATED_KEY_SLOT] = {
        "organization_id": ctx.organization.pk,
        "name": made.api_key.name,
        "kind": made.api_key.kind,
        "raw": made.raw,
        "at": timezone.now().timestamp(),
    }
    return redirect(reverse("portal:api-keys") + "#new-key", permanent=False)


def _pop_created(request: HttpRequest, ctx: PortalContext) -> dict[str, Any] | None:
    slot = request.session.pop(CREATED_KEY_SLOT, None)
    # Shown only in the organization it was made for (the user may have switched in another tab).
    fresh = isinstance(slot, dict) and timezone.now().timestamp() - float(slot.get("at", 0)) <= CREATED_KEY_SHOWN_FOR_S
    if fresh and slot["organization_id"] == ctx.organization.pk:
        return slot
    return None


def _managed_key(request: HttpRequest, key_id: int) -> ApiKey | HttpResponse:
    """The organization's key for a manager's page, or the 404 / 403 page to answer with."""
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    key = key_of(ctx.organization, key_id)
    if key is None:
        return render_portal(request, "portal/not_found.html", {"what": "key"}, status=404)
    if not ctx.can_manage_keys:
        return forbidden(request, MANAGERS_ONLY)
    return key


@portal_page
def api_key_revoke_page(request: HttpRequest, key_id: int) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    key = _managed_key(request, key_id)
    if isinstance(key, HttpResponse):
        return key
    if request.method == "POST":
        apikey_revoke(api_key=key, actor=ctx.user, actor_label="portal", source_ip=client_ip(request))
        messages.success(request, f"Key “{key.name}” ({key.masked}) is revoked. Requests with it are refused from now on.")
        return redirect("portal:api-keys")
    return render_portal(request, "apikeys/revoke_confirm.html", {"nav": "keys", "key": key})


@csrf_protect
@portal_page
def api_key_edit_page(request: HttpRequest, key_id: int) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    key = _managed_key(request, key_id)
    if isinstance(key, HttpResponse):
        return key
    initial = {
        "name": key.name,
        "expires_at": key.expires_at,
        "allowed_models": list(key.allowed_aliases),
        "requests_per_minute": key.requests_per_minute,
        "spend_cap_daily": micros_to_dollars(key.spend_cap_daily_micros),
        "spend_cap_monthly": micros_to_dollars(key.spend_cap_monthly_micros),
    }
    status_code = 200
    if request.method == "POST" and key.status == "active":
        form = KeyEditForm(request.POST, organization=ctx.organization, initial=initial)
        status_code = 400
        if form.is_valid():
            changes: dict[str, Any] = {"name": form.cleaned_data["name"], "expires_at": form.cleaned_data["expires_at"]}
            if key.kind == ApiKey.Kind.STANDARD:
                changes.update(form.controls())
            try:
                apikey_update(api_key=key, actor=ctx.user, actor_label="portal", source_ip=client_ip(request), **changes)
            except KeySettingsInvalid as exc:
                form.add_service_errors(exc)
            else:
                messages.success(request, f"Key “{form.cleaned_data['name']}” is saved; the gateway applies it within a second.")
                return redirect("portal:api-keys")
    else:
        form = KeyEditForm(organization=ctx.organization, initial=initial)
    return render_portal(request, "apikeys/edit.html", {"nav": "keys", "key": key, "form": form}, status=status_code)


class RotateForm(forms.Form):
    grace_seconds = forms.TypedChoiceField(choices=GRACE_CHOICES, coerce=int, initial="86400", label="The old key keeps working")


@csrf_protect
@portal_page
def api_key_rotate_page(request: HttpRequest, key_id: int) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    key = _managed_key(request, key_id)
    if isinstance(key, HttpResponse):
        return key
    form = RotateForm(request.POST if request.method == "POST" else None)
    status_code = 200
    if request.method == "POST" and form.is_valid():
        try:
            created = apikey_rotate(
                api_key=key,
                grace_seconds=form.cleaned_data["grace_seconds"],
                actor=ctx.user,
                actor_label="portal",
                source_ip=client_ip(request),
            )
        except KeyIssuerUnavailable:
            form.add_error(None, "Keys cannot be created right now; please try again in a minute.")
            status_code = 503
        except KeySettingsInvalid as exc:
            form.add_error(None, " ".join(exc.errors.values()))
            status_code = 400
        else:
            old = ApiKey.objects.get(pk=key.pk)
            until = f"{old.expires_at:%Y-%m-%d %H:%M} UTC" if old.expires_at else "never"
            messages.success(request, f"Key “{key.name}” is rotated. The old key {old.masked} works until {until}.")
            return _stash_created_and_redirect(request, ctx, created)
    elif request.method == "POST":
        status_code = 400
    return render_portal(request, "apikeys/rotate_confirm.html", {"nav": "keys", "key": key, "form": form}, status=status_code)


# --- The JSON API ----------------------------------------------------------------------------------

ADMIN_KEYS_BY_SESSION = "An admin key cannot create or manage admin keys; owners and admins do that in the portal."


def _invalid(exc: KeySettingsInvalid) -> ValidationError:
    return ValidationError({name: [why] for name, why in exc.errors.items()})


def _key_data(key: ApiKey, serializer: type[ApiKeySerializer] = ApiKeySerializer, raw: str | None = None) -> dict[str, Any]:
    data = dict(serializer(key).data)
    if raw is not None:
        data["key"] = raw
    return data


def _created_response(data: dict[str, Any]) -> Response:
    response = Response(data, status=status.HTTP_201_CREATED)
    response["Cache-Control"] = "no-store"
    return response


def _issuer_unavailable() -> Response:
    return Response(
        {"detail": "Keys cannot be created right now; try again in a minute."}, status=status.HTTP_503_SERVICE_UNAVAILABLE
    )


def _api_keys(caller: ApiCaller) -> QuerySet[ApiKey]:
    """The keys a caller reaches: an admin key reaches API keys only, a member API and admin keys."""
    if caller.admin_key is not None:
        return apikey_list(organization=caller.organization, kinds=[ApiKey.Kind.STANDARD])
    return keys_for_listing(caller.organization)


def _rate_limited(request: Request) -> Response | None:
    retry_after = rate_limit_usage(request, group=KEY_CREATE_GROUP, rate=settings.PORTAL_RATELIMIT_KEY_CREATE, key="user")
    if retry_after is None:
        return None
    return Response(
        {"detail": f"Too many keys created; try again in {retry_after} seconds."},
        status=status.HTTP_429_TOO_MANY_REQUESTS,
        headers={"Retry-After": str(retry_after)},
    )


class ApiKeyCollection(PortalAPIView):
    """GET lists the organization's keys (masked); POST creates one and returns the raw key once."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not wants_json(request) and presented_admin_key(request) is None:
            return api_keys_page(request)
        return super().dispatch(request, *args, **kwargs)

    @extend_schema(
        parameters=[ORG_PARAMETER, ApiKeyListQuerySerializer],
        responses=ApiKeySerializer(many=True),
        operation_id="api_keys_list",
        summary="List API keys",
        description="Newest first, at most `limit` keys from `offset`; the X-Total-Count header says how many there are. "
        "With an admin key: the organization's API keys; signed in: its admin keys too. The playground's key is never listed.",
        examples=[openapi.LIST_EXAMPLE],
    )
    def get(self, request: Request) -> Response:
        paging = ApiKeyListQuerySerializer(data=request.query_params, context={"max_limit": KEY_LIST_MAX})
        paging.is_valid(raise_exception=True)
        keys = _api_keys(self.portal(request))
        start, limit = paging.validated_data["offset"], paging.validated_data["limit"]
        return Response(
            ApiKeySerializer(keys[start : start + limit], many=True).data, headers={"X-Total-Count": str(keys.count())}
        )

    @extend_schema(
        parameters=[ORG_PARAMETER],
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyCreatedSerializer},
        operation_id="api_keys_create",
        summary="Create an API key",
        description="Returns the raw key in `key`, this once. Per-key controls are checked against the organization's: "
        "models it may use, at most the plan's requests per minute, caps at most the organization's.",
        examples=[openapi.CREATE_REQUEST_EXAMPLE, openapi.CREATED_EXAMPLE],
    )
    def post(self, request: Request) -> Response:
        caller = self.portal(request)
        if not caller.can_manage_keys:
            raise PermissionDenied(MANAGERS_ONLY)
        limited = _rate_limited(request)
        if limited is not None:
            return limited
        body = ApiKeyCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        values = dict(body.validated_data)
        if values["kind"] == ApiKey.Kind.ADMIN and not caller.can_manage_admin_keys:
            raise PermissionDenied(ADMIN_KEYS_BY_SESSION)
        duplicate = duplicate_name_error(caller.organization, body.validated_data["name"])
        if duplicate:
            raise ValidationError({"name": [duplicate]})
        try:
            created = apikey_create(
                organization=caller.organization,
                name=values["name"],
                created_by=caller.user,
                expires_at=values["expires_at"],
                actor_label=caller.actor_label("portal api"),
                source_ip=client_ip(request),
                kind=values["kind"],
                allowed_aliases=values.get("allowed_models"),
                requests_per_minute=values.get("requests_per_minute"),
                spend_cap_daily_micros=values.get("spend_cap_daily_micros"),
                spend_cap_monthly_micros=values.get("spend_cap_monthly_micros"),
            )
        except KeyIssuerUnavailable:
            return _issuer_unavailable()
        except KeySettingsInvalid as exc:
            raise _invalid(exc) from None
        except ValueError as exc:
            raise ValidationError({"name": [str(exc)]}) from None
        return _created_response(_key_data(created.api_key, ApiKeyCreatedSerializer, created.raw))


class ApiKeyDetail(PortalAPIView):
    """GET shows one key (masked); PATCH changes its settings; DELETE revokes it. Another organization's key, and the
    playground's, are not found."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if request.method == "GET" and not wants_json(request) and presented_admin_key(request) is None:
            return redirect("portal:api-keys")
        return super().dispatch(request, *args, **kwargs)

    def _key(self, caller: ApiCaller, key_id: int) -> ApiKey:
        key = _api_keys(caller).filter(pk=key_id).first()
        if key is None:
            raise NotFound("No such key.")
        return key

    def _managed(self, request: Request, key_id: int) -> tuple[ApiCaller, ApiKey]:
        caller = self.portal(request)
        key = self._key(caller, key_id)
        if not caller.can_manage_keys:
            raise PermissionDenied(MANAGERS_ONLY)
        return caller, key

    @extend_schema(
        parameters=[ORG_PARAMETER],
        responses=ApiKeySerializer,
        operation_id="api_keys_retrieve",
        summary="Show an API key",
        examples=[openapi.KEY_EXAMPLE],
    )
    def get(self, request: Request, key_id: int) -> Response:
        return Response(ApiKeySerializer(self._key(self.portal(request), key_id)).data)

    @extend_schema(
        parameters=[ORG_PARAMETER],
        request=ApiKeyUpdateSerializer,
        responses=ApiKeySerializer,
        operation_id="api_keys_update",
        summary="Change an API key's settings",
        description="Only the fields sent change; null clears a control (back to the organization's) or the expiry. "
        "The gateway applies the change within about a second.",
        examples=[openapi.UPDATE_REQUEST_EXAMPLE, openapi.UPDATED_EXAMPLE],
    )
    def patch(self, request: Request, key_id: int) -> Response:
        caller, key = self._managed(request, key_id)
        body = ApiKeyUpdateSerializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        values = dict(body.validated_data)
        if "allowed_models" in values:
            values["allowed_aliases"] = values.pop("allowed_models")
        try:
            updated = apikey_update(
                api_key=key,
                actor=caller.user,
                actor_label=caller.actor_label("portal api"),
                source_ip=client_ip(request),
                **values,
            )
        except KeySettingsInvalid as exc:
            raise _invalid(exc) from None
        return Response(ApiKeySerializer(updated).data)

    @extend_schema(
        parameters=[ORG_PARAMETER],
        request=None,
        responses={200: ApiKeySerializer},  # the revoked key (spectacular's default for DELETE would be an empty 204)
        operation_id="api_keys_revoke",
        summary="Revoke an API key",
        description="Requests with it are refused (401) within about a second. Revoking again changes nothing.",
        examples=[openapi.REVOKED_EXAMPLE],
    )
    def delete(self, request: Request, key_id: int) -> Response:
        caller, key = self._managed(request, key_id)
        revoked = apikey_revoke(
            api_key=key, actor=caller.user, actor_label=caller.actor_label("portal api"), source_ip=client_ip(request)
        )
        return Response(ApiKeySerializer(revoked).data)


class ApiKeyRotate(PortalAPIView):
    """POST makes a new key with the same settings; the old one works until the grace period ends. Browsers get the
    confirmation page at the same URL."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not wants_json(request) and presented_admin_key(request) is None:
            return api_key_rotate_page(request, *args, **kwargs)
        return super().dispatch(request, *args, **kwargs)

    @extend_schema(
        parameters=[ORG_PARAMETER],
        request=ApiKeyRotateSerializer,
        responses={201: ApiKeyRotatedSerializer},
        operation_id="api_keys_rotate",
        summary="Rotate an API key",
        description="A new key (returned in `key`, this once) with the old one's name, settings and expiry, and "
        "`rotated_from` naming it; the old key keeps working for `grace_seconds` (0 to 7 days), then is refused (401).",
        examples=[openapi.ROTATE_REQUEST_EXAMPLE, openapi.ROTATED_EXAMPLE],
    )
    def post(self, request: Request, key_id: int) -> Response:
        caller = self.portal(request)
        key = _api_keys(caller).filter(pk=key_id).first()
        if key is None:
            raise NotFound("No such key.")
        if not caller.can_manage_keys:
            raise PermissionDenied(MANAGERS_ONLY)
        limited = _rate_limited(request)
        if limited is not None:
            return limited
        body = ApiKeyRotateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            created = apikey_rotate(
                api_key=key,
                grace_seconds=body.validated_data["grace_seconds"],
                actor=caller.user,
                actor_label=caller.actor_label("portal api"),
                source_ip=client_ip(request),
            )
        except KeyIssuerUnavailable:
            return _issuer_unavailable()
        except KeySettingsInvalid as exc:
            raise _invalid(exc) from None
        data = _key_data(created.api_key, ApiKeyCreatedSerializer, created.raw)
        data["old_key"] = ApiKeySerializer(ApiKey.objects.get(pk=key.pk)).data
        return _created_response(data)


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


def management_examples(*, base_url: str, model: str) -> list[tuple[str, str, str]]:
    """The docs page's management API examples: curl with an admin key from $CORTENSOR_ADMIN_KEY."""
    keys = f"{base_url}{reverse('portal:api-keys')}"
    auth = '-H "Authorization: Bearer $CORTENSOR_ADMIN_KEY"'
    return [
        (
            "ex-admin-list",
            "curl · list API keys",
            f"""export CORTENSOR_ADMIN_KEY=cta_…   # from API keys, kind "Admin key"; shown once
curl {keys} {auth}""",
        ),
        (
            "ex-admin-create",
            "curl · create a key for one model with a $5 daily cap (the raw key is in the answer, once)",
            f"""curl {keys} {auth} \\
  -H "Content-Type: application/json" \
  -d '{{"name": "backend", "allowed_models": ["{model}"], "spend_cap_daily_micros": 5000000}}'""",
        ),
        (
            "ex-admin-rotate",
            "curl · rotate key 42, the old one working for a day",
            f"""curl -X POST {keys}/42/rotate {auth} \\
  -H "Content-Type: application/json" -d '{{"grace_seconds": 86400}}'""",
        ),
        (
            "ex-admin-usage",
            "curl · usage by key, and the OpenAPI schema",
            f"""curl "{base_url}{reverse("portal:usage-summary")}?group_by=key&from=2026-12-01" {auth}
curl {base_url}{reverse("portal:api-schema")} {auth} -H 'Accept: application/json'""",
        ),
    ]


@portal_page
def docs_page(request: HttpRequest) -> HttpResponse:
    ctx: PortalContext = request.portal  # type: ignore[attr-defined]
    offers = model_offers(ctx.organization)
    names = [offer.alias for offer in offers]
    model = request.GET.get("model")
    if model not in names:
        model = settings.PORTAL_DEFAULT_MODEL if settings.PORTAL_DEFAULT_MODEL in names else (names[0] if names else "oss-20b")
    base = settings.PORTAL_PUBLIC_BASE_URL
    return render_portal(
        request,
        "portal/docs.html",
        {
            "nav": "docs",
            "models": offers,
            "offers": offers,
            "model": model,
            "base_url": base,
            "openai_base_url": f"{base}/v1",
            "error_codes": error_catalog(),  # generated from the error classes, so it cannot drift from them
            "examples": quickstart_examples(base_url=base, model=model),
            "plan": ctx.organization.plan,
            "schema_url": f"{base}{reverse('portal:api-schema')}",
            "management_examples": management_examples(base_url=base, model=model),
            "plan_limits": plan_limits(ctx.organization.plan) if ctx.organization.plan is not None else [],
        },
    )
