"""The control API's bounds (``[limits]`` in the site config) and the pure logic enforcing them.

Nothing here touches a socket or a clock of its own: :class:`Limits` is the validated setting,
:func:`json_depth` and :func:`count_entries` measure a request body, :class:`RateLimiter` is a
token bucket per credential. :mod:`.app` and the HTTP server (:mod:`pcsock.httpserver`, which
also holds the connection admission) apply them;
``docs/security.md`` lists every limit with its default.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, fields
from typing import Any, Final

from pcsock.httpserver import ServerLimits, retry_after_header

from .errors import ApiError

__all__ = [
    "DEFAULT_LIMITS",
    "LIMIT_RANGES",
    "Limits",
    "RateLimiter",
    "check_body_shape",
    "count_entries",
    "json_depth",
    "retry_after_header",
]


@dataclass(frozen=True, slots=True)
class Limits(ServerLimits):
    """Every bound of the control API; the names are the keys of ``[limits]``: the HTTP
    server's own (:class:`pcsock.httpserver.ServerLimits`: body and head size, connections,
    timeouts) and these."""

    #: Deepest JSON nesting of a body (``[[1]]`` is 2 deep).
    max_json_depth: int = 32
    #: JSON values in one body (every array element and object member counts one).
    max_entries: int = 10_000
    #: Out hops of one circuit hop (each becomes a replica of every packet).
    max_out_hops: int = 64
    #: Sustained requests per second per credential (0 = unlimited).
    rate: float = 500.0
    #: Requests a credential may make at once above ``rate`` (bucket size).
    burst: int = 1000

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]


DEFAULT_LIMITS: Final = Limits()
#: (low, high) of every ``[limits]`` key, for the config's range checks.
LIMIT_RANGES: Final[dict[str, tuple[float, float]]] = {
    "max_body": (1024, 64 << 20),
    "max_header_bytes": (1024, 1 << 20),
    "max_json_depth": (2, 1000),
    "max_entries": (1, 10_000_000),
    "max_out_hops": (1, 4096),
    "max_connections": (1, 1_000_000),
    "max_connections_per_client": (1, 1_000_000),
    "idle_timeout": (0.1, 3600),
    "header_timeout": (0.1, 3600),
    "request_timeout": (0.1, 3600),
    "rate": (0, 1_000_000),
    "burst": (1, 1_000_000),
}


# --- the body's shape -----------------------------------------------------------------------

#: A JSON string literal (the only place brackets may appear that do not nest).
_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS: Final = re.compile(rb"[\[\]{}]")


def json_depth(body: bytes, limit: int) -> int:
    """The nesting depth of the JSON text ``body``, counted without parsing it, stopping as
    soon as it passes ``limit`` (then ``limit + 1``). Linear time, no recursion: Python's
    parser raises ``RecursionError`` on deep input, so depth is checked before parsing."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(_STRING.sub(b"", body)):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        else:
            depth -= 1
    return deepest


def count_entries(doc: Any) -> int:
    """JSON values below the top level: every array element and every object member."""
    n = 0
    stack = [doc]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            n += len(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            n += len(v)
            stack.extend(v)
    return n


def check_body_shape(body: bytes, limits: Limits) -> Any:
    """Parse a JSON body after checking its depth, then check its entry count; the document.

    Raises :class:`ApiError` ``limit_exceeded`` (400) naming the limit, or ``bad_json``.
    """
    import json

    depth = json_depth(body, limits.max_json_depth)
    if depth > limits.max_json_depth:
        raise ApiError(
            "limit_exceeded",
            f"JSON nested deeper than {limits.max_json_depth} levels (limits.max_json_depth)",
        )
    try:
        doc = json.loads(body) if body else None
    except RecursionError as exc:  # a parser deeper than our count (should not happen)
        raise ApiError("limit_exceeded", "JSON nested too deeply (limits.max_json_depth)") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError("bad_json", f"body is not JSON: {exc}") from exc
    entries = count_entries(doc)
    if entries > limits.max_entries:
        raise ApiError(
            "limit_exceeded",
            f"{entries} JSON values in one request; the limit is {limits.max_entries} "
            "(limits.max_entries)",
        )
    return doc


# --- request rate ---------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per key (a credential, or an address that fails to authenticate).

    ``rate`` tokens per second up to ``burst``; :meth:`take` spends one or raises
    ``rate_limited`` with the seconds until one is available. At most ``max_keys`` buckets are
    kept: the least recently used full ones are forgotten first (a full bucket is what a new
    key gets anyway).
    """

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float],
                 max_keys: int = 4096) -> None:  # fmt: skip
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def take(self, key: Hashable, what: str) -> None:
        if self.rate <= 0:
            return
        now = self.clock()
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
            raise ApiError(
                "rate_limited",
                f"{what} is over {self.rate:g} requests/s (burst {self.burst}; limits.rate, "
                f"limits.burst); retry in {wait:.2f} s",
                retry_after=wait,
            )
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)
