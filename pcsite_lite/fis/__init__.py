"""Forwarding information store (FIS): per-service key-value and longest-prefix tables (§2.3).

Services read the FIS on the per-packet path (``fetch(key)``, ``lookup(table, prefix)`` in the
paper's Table 1); PSPs and the ISP write it on line through the control API. The package's
modules (every public name is importable from ``pcsite_lite.fis``):

* ``errors`` — the exception family (:class:`FISError` and its ``reason`` codes).
* ``names`` — namespaces, keys, the writer rule, JSON values and their frozen copies.
* ``engine`` — :class:`FISEngine`, the store interface. Every engine shares the validation and
  the writer check of this base class and implements a few raw ``_``-methods; and the change
  feed (:class:`Change`, :class:`ChangeFeed`) node caches poll.
* ``sqlite_engine`` — :class:`SqliteFIS` (SQLite in WAL mode; the embedded default, shared
  safely by every process on one machine); ``redis_engine`` — :class:`RedisFIS` (a real Redis
  server, for compute nodes on several machines); :func:`open_engine` opens either from a URL.
* ``cache`` — :class:`CachedFIS`, the node-local read cache each compute node (worker
  process) keeps. A hit is a dict lookup plus one call of the injected clock; no syscall, no
  lock (one cache per thread: a worker is single-threaded). Updates made through the same
  engine object invalidate at once; updates by other processes or machines are seen within
  ``staleness`` seconds of the clock (default 5 ms): the cache polls the engine's change feed
  at most once per ``staleness`` (SQLite: ``PRAGMA data_version`` + a change log; Redis:
  pub/sub messages already received).

Naming: :func:`namespace` (``"psp/service"``), the ISP namespace :data:`ISP` (``"isp"``) that
every service may read and only the ISP may write, and :func:`label_key`.

Data model
    ``get/put/delete(ns, key[, value])``: keys are ``str`` (1..1024 characters). Integer keys
    such as circuit labels map to their decimal text: ``label_key(7) == "7"``.
    ``lpm_put/lpm_delete(ns, table, prefix[, value])`` and ``lookup(ns, table, addr)``: per
    namespace, any number of named IPv4 longest-prefix tables; prefixes are ``"a.b.c.d/len"``
    (host bits zero), addresses ``int`` (fast) or dotted quads.
    Values are JSON-compatible (``dict`` with ``str`` keys, ``list``, ``str``, ``int``, finite
    ``float``, ``bool``; ``None`` only inside containers, because ``None`` means "absent").
    Values returned by :class:`CachedFIS` are shared, deeply read-only (:class:`FrozenDict`,
    :class:`FrozenList`: they compare equal to plain dicts and lists and ``json.dumps`` them).

Who may write (enforced here, in :class:`FISEngine`, for every engine)
    Every write names its ``writer``: :data:`ISP` may write any namespace; a PSP named ``p``
    may write only namespaces ``"p/<service>"``. Anything else raises :class:`FISPermissionError`.
    The control API passes the authenticated principal; a service's own writes (the Packet API's
    ``store``) pass the service's PSP, so they too stay in that PSP's namespaces. Who may
    *read* a namespace is the Packet API's decision (a service reads its own namespace and
    :data:`ISP`): :func:`can_read` states the rule.

ISP-published tables
    Namespace :data:`ISP`; the well-known table :data:`CONGESTION` is an LPM table mapping a
    destination prefix to ``{"level": 0.0..1.0}`` (1.0 = congested), for adaptive forwarding.

>>> fis = SqliteFIS(":memory:")
>>> ns = namespace("acme", "srouting")
>>> fis.put(ns, label_key(7), {"out_label": 9, "next_hop": "198.18.2.1"}, writer="acme")
>>> fis.lpm_put(ISP, CONGESTION, "198.18.2.0/24", {"level": 0.8}, writer=ISP)
>>> cache = CachedFIS(fis)
>>> cache.get(ns, "7")["next_hop"], cache.lookup(ISP, CONGESTION, "198.18.2.9")["level"]
('198.18.2.1', 0.8)
>>> fis.put(ISP, "x", 1, writer="acme")  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
...
pcsite_lite.fis.FISPermissionError: writer 'acme' may not write namespace 'isp'
>>> cache.put(ns, "7", {"out_label": 10, "next_hop": "198.18.3.1"}, writer="acme")
>>> cache.get(ns, "7")["out_label"]
10
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from pcsite_lite.fis.cache import DEFAULT_STALENESS, CachedFIS, NamespaceView
from pcsite_lite.fis.engine import Change, ChangeFeed, FISEngine
from pcsite_lite.fis.errors import (
    FISAuthError,
    FISError,
    FISNotReplicatedError,
    FISPermissionError,
    FISUnavailableError,
    FISValueError,
)
from pcsite_lite.fis.names import (
    CONGESTION,
    ISP,
    FrozenDict,
    FrozenList,
    JSONValue,
    can_read,
    can_write,
    check_namespace,
    label_key,
    namespace,
)
from pcsite_lite.fis.redis_engine import SENTINEL_SCHEME, RedisFIS
from pcsite_lite.fis.sqlite_engine import SqliteFIS

__all__ = [
    "CONGESTION",
    "DEFAULT_STALENESS",
    "ISP",
    "CachedFIS",
    "Change",
    "ChangeFeed",
    "FISAuthError",
    "FISEngine",
    "FISError",
    "FISNotReplicatedError",
    "FISPermissionError",
    "FISUnavailableError",
    "FISValueError",
    "FrozenDict",
    "FrozenList",
    "JSONValue",
    "NamespaceView",
    "RedisFIS",
    "SqliteFIS",
    "can_read",
    "can_write",
    "check_namespace",
    "label_key",
    "namespace",
    "open_engine",
]


def open_engine(url: str) -> FISEngine:
    """Open a FIS engine from a URL (what daemon configs and tests pass between processes).

    ``sqlite:///abs/path.db``, ``sqlite:relative.db`` or ``sqlite::memory:`` -> :class:`SqliteFIS`;
    ``redis://host:port/db``, ``rediss://...``, ``unix:///path/redis.sock`` or
    ``redis+sentinel://host:port[,host:port]/PRIMARY[/db]`` (a replicated primary found through
    its Sentinels) -> :class:`RedisFIS`. Query parameters of the Redis forms: ``prefix=NAME``
    (the key prefix, default ``pcfis``), ``wait=N`` (acknowledge a write once N replicas have
    it) and ``wait_ms=MS`` (how long to wait for them, default 1000).

    >>> open_engine("sqlite::memory:").namespaces()
    []
    """
    scheme, sep, rest = url.partition(":")
    if not sep:
        raise FISValueError(f"FIS URL needs a scheme (sqlite:, redis:, unix:): {url!r}")
    if scheme == "sqlite":
        path = rest[2:] if rest.startswith("//") else rest
        return SqliteFIS(path or ":memory:")
    if scheme in ("redis", "rediss", "unix", SENTINEL_SCHEME):
        base, _, qs = url.partition("?")
        query = dict(parse_qsl(qs))
        prefix = query.pop("prefix", "pcfis")
        try:
            wait = int(query.pop("wait", "0"))
            wait_ms = int(query.pop("wait_ms", "1000"))
        except ValueError:
            raise FISValueError(f"FIS URL: wait and wait_ms must be integers: {url!r}") from None
        rest_q = urlencode(query)
        return RedisFIS(
            f"{base}?{rest_q}" if rest_q else base,
            prefix=prefix,
            wait_replicas=wait,
            wait_timeout=wait_ms / 1000,
        )
    raise FISValueError(
        f"unknown FIS URL scheme {scheme!r} (sqlite, redis, rediss, unix, {SENTINEL_SCHEME})"
    )
