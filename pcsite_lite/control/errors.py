"""The control API's one error type: an HTTP status plus a stable machine-readable code.

Every error response body is ``{"error": {"code": "<code>", "message": "<text>"}}``. Codes are
part of the API contract (clients branch on them); messages are for people. A refusal by one
of the ``[limits]`` (``docs/security.md``) names the limit and its config key in the message;
429 answers carry ``Retry-After``.
"""

from __future__ import annotations

from typing import Final

from pcsock.httpserver import HttpError

__all__ = ["CODES", "ApiError"]

#: Every code the API can answer with, and its HTTP status.
CODES: Final[dict[str, int]] = {
    "bad_request": 400,  # malformed request line/headers, bad query, bad path parameter
    "bad_json": 400,  # body is not a JSON object
    "missing_field": 400,  # a required body field is absent
    "bad_field": 400,  # a body field has the wrong type or an invalid value
    "unauthenticated": 401,  # no credential, or an unknown one
    "forbidden": 403,  # authenticated, but not allowed to touch this resource
    "not_found": 404,  # no such route or resource (also: another PSP's resource)
    "method_not_allowed": 405,
    "conflict": 409,  # already exists / in use (e.g. a taken service ID)
    "gone": 410,  # the circuit hop expired
    "request_timeout": 408,  # the request did not arrive within limits.request_timeout
    "body_too_large": 413,
    "unsupported_media_type": 415,
    "bad_signature": 422,  # service code signature does not verify
    "ownership_rejected": 422,  # the DNSSEC prefix ownership proof does not validate
    "service_rejected": 422,  # service code the sandbox refuses to load
    "limit_exceeded": 400,  # a [limits] bound on the body's shape (depth, entries, out hops)
    "headers_too_large": 431,  # request line + headers over limits.max_header_bytes
    "rate_limited": 429,  # over the credential's request rate (Retry-After says when to retry)
    "too_many_connections": 429,  # over the per-address or site-wide connection cap
    "not_configured": 501,  # the site lacks what the call needs (e.g. no trust anchor)
    "internal": 500,
    "unavailable": 503,
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
