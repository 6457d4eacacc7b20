"""The control API's one error type: an HTTP status plus a stable machine-readable code.

Every error response body is ``{"error": {"code": "<code>", "message": "<text>"}}``. Codes are
part of the API contract (clients branch on them); messages are for people. A refusal by one
of the ``[limits]`` (``docs/security.md``) names the limit and its config key in the message;
429 answers carry ``Retry-After``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final

from pcsock.httpserver import HttpError

__all__ = ["CODES", "ApiError", "ErrorCode", "Json"]

Json = Any  #: a JSON-compatible value (request bodies, answers, error details)


class ErrorCode(StrEnum):
    """Every code the API can answer with (a ``str``: the JSON carries the value)."""

    BAD_REQUEST = "bad_request"  # malformed request line/headers, bad query, bad path parameter
    BAD_JSON = "bad_json"  # body is not a JSON object
    MISSING_FIELD = "missing_field"  # a required body field is absent
    BAD_FIELD = "bad_field"  # a body field has the wrong type or an invalid value
    UNAUTHENTICATED = "unauthenticated"  # no credential, or an unknown one
    FORBIDDEN = "forbidden"  # authenticated, but not allowed to touch this resource
    NOT_FOUND = "not_found"  # no such route or resource (also: another PSP's resource)
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"  # already exists / in use (e.g. a taken service ID)
    GONE = "gone"  # the circuit hop expired
    REQUEST_TIMEOUT = "request_timeout"  # the request did not arrive within limits.request_timeout
    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    BAD_SIGNATURE = "bad_signature"  # service code signature does not verify
    OWNERSHIP_REJECTED = "ownership_rejected"  # the DNSSEC prefix ownership proof does not validate
    SERVICE_REJECTED = "service_rejected"  # service code the sandbox refuses to load
    # a [limits] bound on the body's shape (depth, entries, out hops)
    LIMIT_EXCEEDED = "limit_exceeded"
    HEADERS_TOO_LARGE = "headers_too_large"  # request line + headers over limits.max_header_bytes
    # over the credential's request rate (Retry-After says when to retry)
    RATE_LIMITED = "rate_limited"
    # over the per-address or site-wide connection cap
    TOO_MANY_CONNECTIONS = "too_many_connections"
    NOT_CONFIGURED = "not_configured"  # the site lacks what the call needs (e.g. no trust anchor)
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"


#: Every code the API can answer with, and its HTTP status.
CODES: Final[dict[str, int]] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.BAD_JSON: 400,
    ErrorCode.MISSING_FIELD: 400,
    ErrorCode.BAD_FIELD: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.CONFLICT: 409,
    ErrorCode.GONE: 410,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.BODY_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.BAD_SIGNATURE: 422,
    ErrorCode.OWNERSHIP_REJECTED: 422,
    ErrorCode.SERVICE_REJECTED: 422,
    ErrorCode.LIMIT_EXCEEDED: 400,
    ErrorCode.HEADERS_TOO_LARGE: 431,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.TOO_MANY_CONNECTIONS: 429,
    ErrorCode.NOT_CONFIGURED: 501,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNAVAILABLE: 503,
}


class ApiError(HttpError):
    """A request the control API refuses; ``code`` is a key of :data:`CODES`."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(code, message, status=status if status is not None else CODES[code],
                         retry_after=retry_after)  # fmt: skip
