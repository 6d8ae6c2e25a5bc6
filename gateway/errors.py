"""The gateway's error values: one small set of exception classes that every surface renders in its own wire shape.

Every error the API answers is a class here, and each class carries what the docs page says of it (`doc`, and
`codes` for the other codes its raise sites pass): the docs' error table is generated from the classes by
`catalog()`, and tests/test_error_catalog.py fails when code in gateway/ raises one with a code no class documents.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple


class GatewayError(Exception):
    """A failure the customer is told about; the class fixes the status and the type on every surface."""

    status: ClassVar[int] = 500
    openai_type: ClassVar[str] = "api_error"
    openai_code: ClassVar[str | None] = None
    anthropic_type: ClassVar[str] = "api_error"
    anthropic_status: ClassVar[int | None] = None  # when Anthropic's status differs from ours
    envelope_code: ClassVar[str] = "upstream_error"
    default_message: ClassVar[str] = "internal error"
    doc: ClassVar[str] = ""  # what the docs page says of `openai_code` (of the class, when it has none)
    codes: ClassVar[dict[str, str]] = {}  # other codes its raise sites pass with `code=`, and what they mean

    def __init__(
        self,
        message: str | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.param = param
        self.code = code if code is not None else self.openai_code
        self.details = details
        self.headers = headers or {}
        super().__init__(self.message)

    @property
    def status_for_anthropic(self) -> int:
        return self.anthropic_status or self.status


class InternalError(GatewayError):
    """A fault of the gateway itself: the customer gets the request id to quote, never a traceback."""

    status = 500
    envelope_code = "internal_error"
    default_message = "internal error; quote this request id to support"
    doc = "A fault of the gateway itself; quote the request id to support."


class InvalidRequest(GatewayError):
    status = 400
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    envelope_code = "invalid_request"
    default_message = "invalid request"
    doc = "The body is not JSON, or not valid for this route; the error's param names the field."
    codes = {
        "invalid_type": "A field, or the body, has the wrong JSON type.",
        "invalid_value": "A field's value is out of range or not one of the accepted values.",
        "missing_required_parameter": "A required field is missing.",
        "unsupported_parameter": "A field hosted routes do not offer (tools, images, n > 1, …).",
        "unsupported_value": "A value hosted routes do not offer.",
    }


class AuthenticationFailed(GatewayError):
    status = 401
    openai_type = "invalid_request_error"
    openai_code = "invalid_api_key"
    anthropic_type = "authentication_error"
    envelope_code = "invalid_api_key"
    default_message = "invalid or revoked API key"
    doc = "The key is missing, malformed, unknown, revoked or expired."


class PermissionDenied(GatewayError):
    status = 403
    openai_type = "permission_error"
    openai_code = "model_not_allowed"
    anthropic_type = "permission_error"
    envelope_code = "permission_denied"
    default_message = "this API key may not use this model"
    doc = "Your plan does not include this model."
    codes = {
        "account_suspended": "The organization is suspended.",
        "permission_denied": "This key may not make this request (its Unkey permissions).",
        "model_not_priced": "The model has no price on your paid plan yet, so it is not served; use another model.",
    }


class ModelNotFound(GatewayError):
    status = 404
    openai_type = "invalid_request_error"
    openai_code = "model_not_found"
    anthropic_type = "not_found_error"
    envelope_code = "model_not_found"
    default_message = "model not found"
    doc = "No model has this name."


class RequestTooLarge(GatewayError):
    status = 413
    openai_type = "invalid_request_error"
    openai_code = "request_too_large"
    anthropic_type = "request_too_large"
    envelope_code = "invalid_request"
    default_message = "request body too large"
    doc = "The body is larger than the limit (1 MiB by default)."


class RequestTimeout(GatewayError):
    """The client took longer than PORTAL_REQUEST_READ_TIMEOUT_S to send its request (answered by the server layer)."""

    status = 408
    openai_type = "invalid_request_error"
    openai_code = "request_timeout"
    anthropic_type = "invalid_request_error"
    envelope_code = "invalid_request"
    default_message = "the request was not received in time"
    doc = "The request body did not arrive in time."


class RateLimited(GatewayError):
    status = 429
    openai_type = "rate_limit_error"
    openai_code = "rate_limit_exceeded"
    anthropic_type = "rate_limit_error"
    envelope_code = "rate_limited"
    default_message = "rate limit exceeded"
    doc = "Too many requests, tokens or requests at once; wait for retry-after seconds."


class QuotaExceeded(GatewayError):
    status = 429
    openai_type = "insufficient_quota"
    openai_code = "insufficient_quota"
    anthropic_type = "rate_limit_error"
    envelope_code = "quota_exceeded"
    default_message = "quota exceeded"
    doc = "The plan's allowance for this window or week is used up."


class InsufficientBalance(GatewayError):
    """A prepaid plan's balance cannot pay for the request (its prompt and the most its answer may use)."""

    status = 402
    openai_type = "insufficient_quota"
    openai_code = "insufficient_quota"
    anthropic_type = "billing_error"
    envelope_code = "insufficient_quota"
    default_message = "your prepaid balance cannot pay for this request; add credits"
    doc = "Your prepaid balance cannot pay for this request (its prompt plus max_tokens at the model's price); add credits."


class SpendCapReached(GatewayError):
    """A spend cap (the organization's or the key's, per UTC day or calendar month) has no room for the request."""

    status = 429
    openai_type = "insufficient_quota"
    openai_code = "spend_cap_reached"
    anthropic_type = "rate_limit_error"
    envelope_code = "spend_cap_reached"
    default_message = "spend cap reached"
    doc = "A daily or monthly spend cap (the organization's or the key's) is reached; the message says which and when it resets."


class UpstreamError(GatewayError):
    status = 502
    openai_type = "api_error"
    openai_code = "upstream_error"
    anthropic_type = "api_error"
    envelope_code = "upstream_error"
    default_message = "the upstream model server failed to answer"
    doc = "The model server failed to answer; safe to retry."


class UpstreamUnavailable(GatewayError):
    status = 503
    openai_type = "api_error"
    openai_code = "upstream_unavailable"
    anthropic_type = "overloaded_error"
    anthropic_status = 529
    envelope_code = "upstream_unavailable"
    default_message = "no upstream model server is available; try again shortly"
    doc = "No model server is available right now; retry shortly."


class AuthUnavailable(GatewayError):
    """The key issuer (Unkey), or the database for a key this process has not cached, could not say whether the key
    is valid: 503, never a guess either way."""

    status = 503
    openai_type = "api_error"
    openai_code = "auth_unavailable"
    anthropic_type = "api_error"
    envelope_code = "auth_unavailable"
    default_message = "API key verification is temporarily unavailable; try again shortly"
    doc = "The key could not be verified right now (the key service is away); retry shortly."


class LimitsUnavailable(GatewayError):
    """The counters cannot be reached and the limiter is configured to fail closed."""

    status = 503
    openai_type = "api_error"
    openai_code = "limits_unavailable"
    anthropic_type = "api_error"
    envelope_code = "limits_unavailable"
    default_message = "rate limiting is temporarily unavailable; try again shortly"
    doc = "The rate-limit counters cannot be reached right now; retry shortly."


class UsageBacklogFull(GatewayError):
    """The database has been away long enough that the usage rows waiting in memory reached their bound."""

    status = 503
    openai_type = "api_error"
    openai_code = "usage_backlog_full"
    anthropic_type = "api_error"
    envelope_code = "usage_backlog_full"
    default_message = "the service cannot record usage right now, so it takes no billable request; try again shortly"
    doc = "Usage cannot be recorded right now, so no billable request is taken; retry shortly."


class ResponseNotFound(GatewayError):
    status = 404
    openai_type = "invalid_request_error"
    openai_code = "response_not_found"
    anthropic_type = "not_found_error"
    envelope_code = "not_found"
    default_message = "response not found"
    doc = "No stored response of your organization has this id (/v1/responses): never stored, deleted, or expired."
    codes = {"previous_response_not_found": "The previous_response_id names no stored response of your organization."}


class ResponseStoreFull(GatewayError):
    """The database has been away long enough that the stored responses waiting in memory reached their bound."""

    status = 503
    openai_type = "api_error"
    openai_code = "response_store_full"
    anthropic_type = "api_error"
    envelope_code = "response_store_full"
    default_message = "the service cannot store responses right now; try again shortly, or send 'store': false"
    doc = "Responses cannot be stored right now; retry shortly, or send store: false."


class ResponseStoreUnavailable(GatewayError):
    """The database cannot be read: a stored response can be neither found nor ruled out."""

    status = 503
    openai_type = "api_error"
    openai_code = "response_store_unavailable"
    anthropic_type = "api_error"
    envelope_code = "response_store_unavailable"
    default_message = "stored responses cannot be read right now; try again shortly"
    doc = "Stored responses cannot be read right now (previous_response_id, GET); retry shortly."


class CatalogRow(NamedTuple):
    """One line of the docs page's error table (a tuple, so the template unpacks it)."""

    status: int
    openai_type: str
    code: str
    anthropic_type: str  # with Anthropic's status in brackets when it differs from ours
    meaning: str


def _subclasses(cls: type[GatewayError]) -> list[type[GatewayError]]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


def catalog() -> list[CatalogRow]:
    """Every documented code of every error class, by status then code: the docs page's table."""
    rows: list[CatalogRow] = []
    for cls in _subclasses(GatewayError):
        anthropic = cls.anthropic_type + (f" ({cls.anthropic_status})" if cls.anthropic_status else "")
        entries = ([(cls.openai_code or "—", cls.doc)] if cls.doc else []) + list(cls.codes.items())
        rows.extend(CatalogRow(cls.status, cls.openai_type, code, anthropic, meaning) for code, meaning in entries)
    return sorted(rows, key=lambda row: (row.status, row.code != "—", row.code))
