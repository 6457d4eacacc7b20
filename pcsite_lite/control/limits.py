"""The control API's bounds (``[limits]`` in the site config) and the pure logic enforcing them.

Nothing here touches a socket or a clock of its own: :class:`Limits` is the validated setting,
:func:`json_depth` and :func:`count_entries` measure a request body, :class:`RateLimiter` is a
token bucket per credential, :class:`ConnectionTable` is connection admission (site-wide and
per-address caps, least-recently-active eviction). :mod:`.app` and :mod:`.server` apply them;
``docs/security.md`` lists every limit with its default.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, fields
from typing import Any, Final

from .errors import ApiError

__all__ = [
    "DEFAULT_LIMITS",
    "LIMIT_RANGES",
    "Conn",
    "ConnectionTable",
    "Limits",
    "RateLimiter",
    "check_body_shape",
    "count_entries",
    "json_depth",
    "retry_after_header",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """Every bound of the control API; the names are the keys of ``[limits]``."""

    #: Largest request body (bytes); service code uploads are the big ones.
    max_body: int = 1 << 20
    #: Request line plus headers (bytes); more is 431 ``headers_too_large``.
    max_header_bytes: int = 16 * 1024
    #: Deepest JSON nesting of a body (``[[1]]`` is 2 deep).
    max_json_depth: int = 32
    #: JSON values in one body (every array element and object member counts one).
    max_entries: int = 10_000
    #: Out hops of one circuit hop (each becomes a replica of every packet).
    max_out_hops: int = 64
    #: Open connections in all; at the cap the least recently active idle one is closed.
    max_connections: int = 1024
    #: Open connections from one client address; more are refused with 429.
    max_connections_per_client: int = 32
    #: Seconds a connection may wait for (the first byte of) its next request.
    idle_timeout: float = 15.0
    #: Seconds from a request's first byte to the end of its headers.
    header_timeout: float = 5.0
    #: Seconds from a request's first byte to the end of its body, and to send the answer.
    request_timeout: float = 30.0
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


# --- connections ----------------------------------------------------------------------------


class Conn:
    """One admitted connection: its client address and a way to close it from outside."""

    __slots__ = ("busy", "cancel", "client", "evicted", "gone")

    def __init__(self, client: str, cancel: Callable[[], None]) -> None:
        self.client = client
        self.cancel = cancel
        self.busy = False  #: a request is being answered (never evicted then)
        self.evicted = False  #: closed by the table to make room
        self.gone = False  #: no longer counted (evicted or released)


class ConnectionTable:
    """Admission of connections under a site-wide and a per-address cap.

    A new connection from an address at ``per_client`` is refused. At ``total``, the least
    recently active connection that is not answering a request is evicted to make room (an
    idle flood cannot lock legitimate clients out); only when every connection is busy is the
    new one refused. Connections mark activity with :meth:`touch` and :meth:`set_busy`.
    """

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._per: dict[str, int] = {}
        self._lru: OrderedDict[Conn, None] = OrderedDict()  # evictable, oldest first
        self._open = 0  #: admitted and not evicted nor released
        self.evictions = 0
        self.refusals = 0

    def __len__(self) -> int:
        return self._open

    def count(self, client: str) -> int:
        return self._per.get(client, 0)

    def admit(self, client: str, cancel: Callable[[], None]) -> tuple[Conn | None, str]:
        """A :class:`Conn`, or None and the reason it was refused."""
        if self._per.get(client, 0) >= self.per_client:
            self.refusals += 1
            return None, (
                f"{self.per_client} connections from {client} are open "
                "(limits.max_connections_per_client)"
            )
        while self._open >= self.total:
            if not self.evict_oldest():
                self.refusals += 1
                return None, f"all {self.total} connections are busy (limits.max_connections)"
        conn = Conn(client, cancel)
        self._per[client] = self._per.get(client, 0) + 1
        self._lru[conn] = None
        self._open += 1
        return conn, ""

    def evict_oldest(self) -> bool:
        """Close the least recently active non-busy connection; False if there is none."""
        if not self._lru:
            return False
        conn, _ = self._lru.popitem(last=False)
        conn.evicted = True
        self._forget(conn)
        self.evictions += 1
        conn.cancel()
        return True

    def touch(self, conn: Conn) -> None:
        if conn in self._lru:
            self._lru.move_to_end(conn)

    def set_busy(self, conn: Conn, busy: bool) -> None:
        if conn.gone:
            return
        conn.busy = busy
        if busy:
            self._lru.pop(conn, None)
        else:
            self._lru[conn] = None  # most recently active

    def release(self, conn: Conn) -> None:
        if not conn.gone:
            self._lru.pop(conn, None)
            self._forget(conn)

    def _forget(self, conn: Conn) -> None:
        conn.gone = True
        self._open -= 1
        n = self._per.get(conn.client, 0) - 1
        if n > 0:
            self._per[conn.client] = n
        else:
            self._per.pop(conn.client, None)


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` takes whole seconds: round up, at least 1."""
    return str(max(1, math.ceil(seconds)))
