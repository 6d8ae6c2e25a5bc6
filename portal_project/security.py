"""The portal's defences at the door: JSON of bounded size and nesting, addresses without NUL."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser, get_encoding

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

    def parse(self, stream: IO[bytes], media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
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


def _has_nul(request: HttpRequest) -> bool:
    if "\x00" in request.path:
        return True
    return any("\x00" in name or any("\x00" in value for value in values) for name, values in request.GET.lists())


def _wants_json(request: HttpRequest) -> bool:
    return request.get_preferred_type(["text/html", "application/json"]) == "application/json"


class PortalSecurityMiddleware:
    """An address whose path or query holds a NUL character is refused with a 400 before any view sees it.

    NUL: PostgreSQL text cannot hold one, so a lookup with it fails in the database (a 500) wherever a view passes a
    path or query value to a query; no honest address has one. Forms and DRF fields refuse NUL on their own.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if _has_nul(request):
            message = "The address holds a NUL character."
            if _wants_json(request):
                return JsonResponse({"detail": message}, status=400)
            return HttpResponseBadRequest(message, content_type="text/plain")
        return self.get_response(request)
