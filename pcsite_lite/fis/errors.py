"""The FIS exception family: every error carries a machine-readable ``reason``."""

from __future__ import annotations

__all__ = [
    "FISAuthError",
    "FISError",
    "FISNotReplicatedError",
    "FISPermissionError",
    "FISUnavailableError",
    "FISValueError",
]


class FISError(Exception):
    """Base of FIS errors; ``reason`` is a stable machine-readable code."""

    reason = "fis_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class FISValueError(FISError, ValueError):
    """Bad namespace, table, key, prefix or value (not JSON-compatible, ``None``, ...)."""

    reason = "bad_value"


class FISPermissionError(FISError, PermissionError):
    """The writer may not write that namespace (e.g. a PSP writing :data:`ISP`)."""

    reason = "forbidden"


class FISUnavailableError(FISError):
    """The store cannot be reached (bad path, server down, refused credentials).

    A *platform* fault, never the fault of the service that happened to read: the pipeline
    drops such a packet as ``fis_unavailable`` without counting it against the service or
    billing it, and the control API answers 503 ``unavailable``.
    """

    reason = "unavailable"


class FISAuthError(FISUnavailableError):
    """The store refused our credentials or their permissions (Redis ACL): a configuration
    error of the site, reported at start-up rather than retried."""

    reason = "unauthorized"


class FISNotReplicatedError(FISUnavailableError):
    """A write reached the primary but not the replicas it must reach before it counts as
    acknowledged (``WAIT``): the caller must treat it as failed (it may or may not survive a
    failover) and may retry it (FIS writes are idempotent)."""

    reason = "not_replicated"
