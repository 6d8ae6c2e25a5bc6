"""The gateway's error values: one small set of exception classes that every surface renders in its own wire shape."""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    """A failure the customer is told about; the class fixes the status and the type on every surface."""

    status: ClassVar[int] = 500
    openai_type: ClassVar[str] = "api_error"
    openai_code: ClassVar[str | None] = None
    anthropic_type: ClassVar[str] = "api_error"
    anthropic_status: ClassVar[int | None] = None  # when Anthropic's status differs from ours
    envelope_code: ClassVar[str] = "upstream_error"
    default_message: ClassVar[str] = "internal error"

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


class InvalidRequest(GatewayError):
    status = 400
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    envelope_code = "invalid_request"
    default_message = "invalid request"


class AuthenticationFailed(GatewayError):
    status = 401
    openai_type = "invalid_request_error"
    openai_code = "invalid_api_key"
    anthropic_type = "authentication_error"
    envelope_code = "invalid_api_key"
    default_message = "invalid or revoked API key"


class PermissionDenied(GatewayError):
    status = 403
    openai_type = "permission_error"
    openai_code = "model_not_allowed"
    anthropic_type = "permission_error"
    envelope_code = "permission_denied"
    default_message = "this API key may not use this model"


class ModelNotFound(GatewayError):
    status = 404
    openai_type = "invalid_request_error"
    openai_code = "model_not_found"
    anthropic_type = "not_found_error"
    envelope_code = "model_not_found"
    default_message = "model not found"


class RequestTooLarge(GatewayError):
    status = 413
    openai_type = "invalid_request_error"
    openai_code = "request_too_large"
    anthropic_type = "request_too_large"
    envelope_code = "invalid_request"
    default_message = "request body too large"


class RequestTimeout(GatewayError):
    """The client took longer than PORTAL_REQUEST_READ_TIMEOUT_S to send its request (answered by the server layer)."""

    status = 408
    openai_type = "invalid_request_error"
    openai_code = "request_timeout"
    anthropic_type = "invalid_request_error"
    envelope_code = "invalid_request"
    default_message = "the request was not received in time"


class RateLimited(GatewayError):
    status = 429
    openai_type = "rate_limit_error"
    openai_code = "rate_limit_exceeded"
    anthropic_type = "rate_limit_error"
    envelope_code = "rate_limited"
    default_message = "rate limit exceeded"


class QuotaExceeded(GatewayError):
    status = 429
    openai_type = "insufficient_quota"
    openai_code = "insufficient_quota"
    anthropic_type = "rate_limit_error"
    envelope_code = "quota_exceeded"
    default_message = "quota exceeded"


class UpstreamError(GatewayError):
    status = 502
    openai_type = "api_error"
    openai_code = "upstream_error"
    anthropic_type = "api_error"
    envelope_code = "upstream_error"
    default_message = "the upstream model server failed to answer"


class UpstreamUnavailable(GatewayError):
    status = 503
    openai_type = "api_error"
    openai_code = "upstream_unavailable"
    anthropic_type = "overloaded_error"
    anthropic_status = 529
    envelope_code = "upstream_unavailable"
    default_message = "no upstream model server is available; try again shortly"
