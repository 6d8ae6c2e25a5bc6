"""The portal's defences at the door: bounded JSON, addresses without NUL, security headers, no secret on a debug page."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, ItemsView, Mapping
from pprint import pformat
from types import FrameType
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.views.debug import ExceptionReporter, SafeExceptionReporterFilter
from django.views.static import serve
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser, get_encoding  # type: ignore[attr-defined]  # DRF has it; its stubs omit it

from portal_project.redact import mask_url_credentials

if TYPE_CHECKING:
    from rest_framework.response import Response

# The management API's bodies are one flat object; 64 levels is far beyond any honest client and far below the
# interpreter's recursion limit, which the C decoder hits at ~1,000 levels and raises as RecursionError (a 500).
JSON_MAX_DEPTH = 64

# Strings are skipped whole (so brackets inside them do not count); every other match is one bracket.
_JSON_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


class JSONTooDeep(ValueError):
    pass


def json_depth_check(text: str, max_depth: int = JSON_MAX_DEPTH) -> None:
    """Raise JSONTooDeep when arrays and objects nest deeper than `max_depth`; linear, stops at the first excess."""
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token == "[" or token == "{":
            depth += 1
            if depth > max_depth:
                raise JSONTooDeep(f"nested deeper than {max_depth} levels")
        elif token == "]" or token == "}":
            depth -= 1


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def json_loads_bounded(text: str, *, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """json.loads for text a stranger sent: ValueError (never RecursionError) for anything that is not plain JSON of
    at most `max_depth` levels. NaN and Infinity are refused, as DRF's strict JSON does."""
    json_depth_check(text, max_depth)
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:  # unreachable after the depth check; kept so a lowered recursion limit cannot make a 500
        raise JSONTooDeep(f"nested deeper than {max_depth} levels") from None


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser with the nesting bounded (JSON_MAX_DEPTH): whatever the body, a 400 ParseError, never a 500.

    The size is bounded before this runs: DRF reads a JSON body through Django's `request.body`, which refuses more
    than DATA_UPLOAD_MAX_MEMORY_SIZE (answered 413 by api_exception_handler)."""

    def parse(self, stream: IO[bytes], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        encoding = get_encoding(parser_context or {})
        try:
            return json_loads_bounded(stream.read().decode(encoding))
        except ValueError as exc:  # JSONDecodeError, JSONTooDeep, UnicodeDecodeError
            raise ParseError(f"JSON parse error - {exc}") from None


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus Django's refusals of a body (too large, too many fields) in DRF's error shape."""
    # Imported here: rest_framework.views reads the parser classes setting, which names this module.
    from rest_framework.views import exception_handler

    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge(f"The body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.")
    elif isinstance(exc, TooManyFieldsSent):
        exc = ParseError(f"The body has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} fields.")
    return exception_handler(exc, context)


# --- The middleware ------------------------------------------------------------------------------------------------


def _is_text_encoding(encoding: str | None) -> bool:
    if encoding is None:
        return True
    try:
        "".encode(encoding)  # unlike codecs.lookup(), refuses bytes-to-bytes codecs such as bz2_codec
    except (LookupError, UnicodeError):
        return False
    return True


def _has_nul(request: HttpRequest) -> bool:
    if "\x00" in request.path:
        return True
    return any("\x00" in name or any("\x00" in value for value in values) for name, values in request.GET.lists())


def _wants_json(request: HttpRequest) -> bool:
    return request.get_preferred_type(["text/html", "application/json"]) == "application/json"


class PortalSecurityMiddleware:
    """Every Django response (the portal, allauth, the admin) gets the Content-Security-Policy of settings.PORTAL_CSP.
    Before any view runs, a 400 refuses a request whose Content-Type names a charset that is not a text encoding, or
    whose path or query holds a NUL character.

    Charset: Django takes any codec Python knows as the request's encoding, bz2_codec included, and then fails (a 500)
    decoding a form with it. A urlencoded form in any charset but `utf-8` Django refuses itself, but from inside the
    CSRF check, and then again while rendering its 400 page (whose view checks CSRF too): under daphne, a 500.
    NUL: PostgreSQL text cannot hold one, so a lookup with it fails in the database (a 500) wherever a view passes a
    path or query value to a query; no honest address has one. Forms and DRF fields refuse NUL on their own.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.csp = "; ".join(f"{name} {' '.join(values)}" for name, values in settings.PORTAL_CSP.items())

    def __call__(self, request: HttpRequest) -> HttpResponse:
        problem = self.refusal(request)
        if problem:
            response: HttpResponse = (
                JsonResponse({"detail": problem}, status=400)
                if _wants_json(request)
                else HttpResponseBadRequest(problem, content_type="text/plain; charset=utf-8")
            )
        else:
            response = self.get_response(request)
        # Django's DEBUG pages (technical 404 and 500) style and script themselves inline: left without a policy.
        if not (settings.DEBUG and response.status_code in (404, 500)):
            response.headers.setdefault("Content-Security-Policy", self.csp)
        return response

    @staticmethod
    def refusal(request: HttpRequest) -> str:
        if not _is_text_encoding(request.encoding):
            return "The Content-Type names a charset that is not a text encoding."
        if (
            request.content_type == "application/x-www-form-urlencoded"
            and request.encoding
            and request.encoding.lower() != "utf-8"
        ):
            # Django's own rule, word for word; it raises it from inside the CSRF check, then again from its 400 page.
            return "A form (application/x-www-form-urlencoded) must be UTF-8 encoded: charset=utf-8."
        if _has_nul(request):
            return "The address holds a NUL character."
        return ""


def serve_asset(request: HttpRequest, path: str, document_root: str) -> HttpResponseBase:
    """django.views.static.serve, with a name the filesystem refuses (too long: ENAMETOOLONG) not found, not a 500."""
    try:
        return serve(request, path, document_root=document_root)
    except OSError:
        raise Http404("No such asset.") from None


# --- Debug pages ------------------------------------------------------------------------------------------------------

# Django's names of a secret, and ours: settings, request headers, cookies, POST fields, locals and dictionary keys
# that match show as stars. The second line names what holds a secret inside a URL or a structure.
SECRET_NAMES = re.compile(
    "API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|PEPPER|CREDENTIAL|PRIVATE|(?:^|_)RAW(?:_|$)"
    "|PORTAL_ROUTER|UNKEY|REDIS|CACHES|CHANNEL_LAYERS|DATABASE",
    flags=re.IGNORECASE,
)
# A customer's API key in any text (ctr_<public id>_<secret>, or Unkey's ctr_<random>): its first 12 characters stay,
# as the portal shows them; the rest goes.
_API_KEY = re.compile(r"\b(ctr_[A-Za-z0-9]{12})[A-Za-z0-9_-]{8,}")
_SHORTEST_SCRUBBED = 6  # shorter "secrets" would blank ordinary words all over the page


class _Shown:
    """A value as the debug page shows it (its pformat), already cleansed; pprint(_Shown) is that text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def configured_secrets() -> list[str]:
    """The secret values this process was configured with, longest first, to be blanked wherever they appear."""
    found: list[str | None] = [
        settings.SECRET_KEY,
        *getattr(settings, "SECRET_KEY_FALLBACKS", []),
        getattr(settings, "PORTAL_API_KEY_PEPPER", None),
        getattr(settings, "PORTAL_UNKEY_ROOT_KEY", None),
        getattr(settings, "PORTAL_STRIPE_SECRET_KEY", None),
        getattr(settings, "PORTAL_STRIPE_WEBHOOK_SECRET", None),
        getattr(settings, "PORTAL_METRICS_TOKEN", None),
        getattr(settings, "EMAIL_HOST_PASSWORD", None),
        *(db.get("PASSWORD") for db in settings.DATABASES.values()),
    ]
    for url in (
        getattr(settings, "REDIS_URL", ""),
        getattr(settings, "PORTAL_UNKEY_BASE_URL", ""),
        getattr(settings, "PORTAL_STRIPE_API_BASE", ""),
    ):
        try:
            found.append(urlsplit(url).password)
        except ValueError:
            pass
    router_env = getattr(settings, "PORTAL_ROUTER_ENV", None)
    for alias in getattr(router_env, "aliases", ()):
        found.append(alias.alias_key)
        found.extend(alias.session_keys.values())
        for url in alias.urls:
            parts = urlsplit(url)
            found.extend((parts.username, parts.password))
    return sorted(
        {value for value in found if isinstance(value, str) and len(value) >= _SHORTEST_SCRUBBED}, key=len, reverse=True
    )


class SecretsFilter(SafeExceptionReporterFilter):
    """What Django's debug pages and error reports show, with secrets hidden, DEBUG on or off.

    Django's filter hides settings, headers and cookies whose names look secret, and, with DEBUG off only, the
    variables and POST fields marked with its decorators. This one also hides, always: settings, locals, POST fields
    and dictionary keys named as in SECRET_NAMES; the user and password part of any URL; anything shaped like one of
    our API keys; and the secret values this process was configured with (router keys, root keys, passwords, tokens)
    wherever they appear in a value's repr.
    """

    cleansed_substitute = "********************"
    hidden_settings = SECRET_NAMES

    def is_active(self, request: HttpRequest | None) -> bool:
        # `make run` serves with DEBUG on: its pages are shown, shared and screenshotted like any other.
        return True

    def scrub(self, text: str) -> str:
        text = mask_url_credentials(text)
        if "ctr_" in text:
            text = _API_KEY.sub(r"\1…", text)
        for secret in configured_secrets():
            if secret in text:
                text = text.replace(secret, self.cleansed_substitute)
        return text

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        cleansed = super().cleanse_setting(key, value)
        if cleansed is self.cleansed_substitute or isinstance(cleansed, dict | list | tuple):
            return cleansed  # containers: their members went through here one by one
        if isinstance(cleansed, str):
            return self.scrub(cleansed)
        if callable(value) or isinstance(cleansed, int | float | bool | type(None)):
            return cleansed
        try:
            shown = pformat(cleansed)
        except Exception as exc:  # a broken __repr__ must not break the error page
            shown = f"Error in formatting: {exc.__class__.__name__}"
        return _Shown(self.scrub(shown))

    def get_post_parameters(self, request: HttpRequest | None) -> Any:
        parameters = super().get_post_parameters(request)
        if request is None:
            return parameters
        parameters = parameters.copy()
        for name in list(parameters):
            if SECRET_NAMES.search(name):
                parameters[name] = self.cleansed_substitute
        return parameters

    def get_traceback_frame_variables(self, request: HttpRequest | None, tb_frame: FrameType) -> ItemsView[str, Any]:
        # Items of a dict, as Django's own returns (and its stubs declare); the reporter only iterates the pairs.
        return {
            name: self.cleanse_setting(name, value) for name, value in super().get_traceback_frame_variables(request, tb_frame)
        }.items()


class SecretsReporter(ExceptionReporter):
    """Django's reporter, with the exception's own message (and its causes') scrubbed by SecretsFilter."""

    def get_traceback_data(self) -> dict[str, Any]:
        data = super().get_traceback_data()
        scrub = self.filter.scrub if isinstance(self.filter, SecretsFilter) else mask_url_credentials
        for name in ("exception_value", "exception_notes"):
            if isinstance(data.get(name), str):
                data[name] = scrub(data[name])
        for frame in data.get("frames", []):
            if frame.get("exc_cause") is not None:
                frame["exc_cause"] = scrub(str(frame["exc_cause"]))
        if "request_GET_items" in data:
            hidden = self.filter.cleansed_substitute
            data["request_GET_items"] = [
                (name, hidden if SECRET_NAMES.search(name) else scrub(value)) for name, value in data["request_GET_items"]
            ]
        if "request_insecure_uri" in data:
            data["request_insecure_uri"] = scrub(data["request_insecure_uri"])
        return data
