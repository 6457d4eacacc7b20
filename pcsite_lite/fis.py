"""Forwarding information store (FIS): per-service key-value and longest-prefix tables (§2.3).

Services read the FIS on the per-packet path (``fetch(key)``, ``lookup(table, prefix)`` in the
paper's Table 1); PSPs and the ISP write it on line through the control API. Three layers:

* :class:`FISEngine` — the store interface. Every engine shares the validation and the
  writer check of this base class and implements a few raw ``_``-methods.
  :class:`SqliteFIS` (SQLite in WAL mode; the embedded default, shared safely by every process
  on one machine) lives here, ``pcsite_lite.fis_redis.RedisFIS`` (a real Redis server, for
  compute nodes on several machines) next door.
* :class:`CachedFIS` — the node-local read cache each compute node (worker process) keeps. A
  hit is a dict lookup plus one call of the injected clock; no syscall, no lock (one cache per
  thread: a worker is single-threaded). Updates made
  through the same engine object invalidate at once; updates by other processes or machines are
  seen within ``staleness`` seconds of the clock (default 5 ms): the cache polls the engine's
  change feed at most once per ``staleness`` (SQLite: ``PRAGMA data_version`` + a change log;
  Redis: pub/sub messages already received).
* Naming: :func:`namespace` (``"psp/service"``), the ISP namespace :data:`ISP` (``"isp"``)
  that every service may read and only the ISP may write, and :func:`label_key`.

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

import functools
import json
import math
import os
import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from pcsite_lite.lpm import LpmTable, PrefixError, format_prefix, parse_address, parse_prefix

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
    "FISPermissionError",
    "FISUnavailableError",
    "FISValueError",
    "FrozenDict",
    "FrozenList",
    "JSONValue",
    "NamespaceView",
    "SqliteFIS",
    "can_read",
    "can_write",
    "check_namespace",
    "label_key",
    "namespace",
    "open_engine",
]

JSONValue: TypeAlias = Any  #: a JSON-compatible value (see the module docstring)

ISP: Final = "isp"  #: the ISP's namespace and the ISP's writer identity
CONGESTION: Final = "congestion"  #: ISP LPM table: prefix -> {"level": 0.0..1.0}
DEFAULT_STALENESS: Final = 0.005  #: seconds a CachedFIS may lag other processes' writes
MAX_KEY_LEN: Final = 1024

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")


# --- errors ---------------------------------------------------------------------------------
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


# --- naming ---------------------------------------------------------------------------------
def namespace(psp: str, service: str) -> str:
    """The FIS namespace of one PSP's service: ``"psp/service"``.

    Names are 1..64 of ``[A-Za-z0-9_.-]`` (starting alphanumeric); ``psp`` may not be ``"isp"``.

    >>> namespace("acme", "srouting")
    'acme/srouting'
    """
    for what, name in (("psp", psp), ("service", service)):
        if not isinstance(name, str) or not _NAME.match(name):
            raise FISValueError(f"bad {what} name {name!r} (1..64 of [A-Za-z0-9_.-])")
    if psp == ISP:
        raise FISValueError(f"psp name {ISP!r} is reserved for the ISP")
    return f"{psp}/{service}"


def check_namespace(ns: str) -> str:
    """Return ``ns`` if it is :data:`ISP` or ``"psp/service"``; raise :class:`FISValueError`."""
    if ns == ISP:
        return ns
    if isinstance(ns, str):
        psp, sep, service = ns.partition("/")
        if sep and _NAME.match(psp) and _NAME.match(service) and psp != ISP:
            return ns
    raise FISValueError(f"bad namespace {ns!r} (expected 'isp' or 'psp/service')")


def label_key(label: int) -> str:
    """FIS key of an integer label (circuit label, service ID): its decimal text.

    >>> label_key(0x00ABCDEF)
    '11259375'
    """
    if not isinstance(label, int) or isinstance(label, bool) or label < 0:
        raise FISValueError(f"label must be a non-negative int: {label!r}")
    return str(label)


def can_write(writer: str, ns: str) -> bool:
    """Whether ``writer`` (:data:`ISP` or a PSP name) may write namespace ``ns``."""
    if writer == ISP:
        return True
    return ns != ISP and ns.partition("/")[0] == writer


def can_read(service_ns: str, ns: str) -> bool:
    """Whether the service owning ``service_ns`` may read ``ns``: its own and :data:`ISP`."""
    return ns == service_ns or ns == ISP


def _check_table(table: str) -> str:
    if not isinstance(table, str) or not _NAME.match(table):
        raise FISValueError(f"bad table name {table!r} (1..64 of [A-Za-z0-9_.-])")
    return table


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LEN:
        raise FISValueError(
            f"FIS keys are str of 1..{MAX_KEY_LEN} characters "
            f"(int labels: use label_key()): {key!r}"[:200]
        )
    return key


def _canon_prefix(prefix: str | tuple[int, int]) -> tuple[int, int, str]:
    try:
        net, plen = parse_prefix(prefix)
    except PrefixError as exc:
        raise FISValueError(str(exc)) from None
    return net, plen, format_prefix(net, plen, check=False)


def _check_json(value: object, depth: int = 0) -> None:
    if depth > 32:
        raise FISValueError("value nested too deeply (max 32)")
    if value is None:
        if depth == 0:
            raise FISValueError("value None is not storable (None means absent); delete instead")
        return
    t = type(value)
    if t is str or t is bool or t is int:
        return
    if t is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise FISValueError(f"non-finite float {value!r} is not JSON")
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_json(item, depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise FISValueError(f"JSON object keys must be str, got {k!r}")
            _check_json(item, depth + 1)
        return
    raise FISValueError(f"value of type {t.__name__} is not JSON-compatible")


def _encode(value: JSONValue) -> str:
    _check_json(value)
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _read_only(*_a: object, **_k: object) -> Any:
    raise TypeError("FIS values from the cache are read-only (copy them to modify)")


class FrozenDict(dict):
    """A read-only ``dict`` (what :class:`CachedFIS` returns for JSON objects).

    Compares equal to plain dicts and serialises with ``json.dumps``; ``dict(v)`` copies it.
    """

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only


class FrozenList(list):
    """A read-only ``list`` (what :class:`CachedFIS` returns for JSON arrays)."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only


def freeze(value: JSONValue) -> JSONValue:
    """Deep read-only copy: dicts become :class:`FrozenDict`, lists :class:`FrozenList`."""
    if isinstance(value, dict):
        return FrozenDict((k, freeze(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return FrozenList(freeze(v) for v in value)
    return value


# --- change notification --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Change:
    """One update: ``kind`` "kv" (``table`` is "") or "lpm" (``key`` is the canonical prefix)."""

    kind: Literal["kv", "lpm"]
    ns: str
    table: str
    key: str


class ChangeFeed(ABC):
    """Changes made by anyone (any process/machine) since the feed was opened.

    :meth:`poll` does not wait for changes; it returns the changes seen since the last poll, or
    ``None`` when the feed lost track for good (change log pruned past it, store reset), in
    which case the reader must forget everything it cached. While the store is unreachable it
    raises :class:`FISUnavailableError`: nothing is known to have changed, and once the store
    is back the feed catches up from its :attr:`position` (the change log's offset).
    """

    @abstractmethod
    def poll(self) -> list[Change] | None: ...

    @property
    def position(self) -> tuple[str, int] | None:
        """``(store epoch, change number)`` the reader is up to date with, or ``None``."""
        return None

    def resume(self, position: tuple[str, int]) -> bool:
        """Continue from an earlier :attr:`position` (a snapshot's): the next polls return
        every change after it. False when the position belongs to another store (epoch)."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the feed's resources."""


Listener = Callable[[Change], None]


# --- the engine interface -------------------------------------------------------------------
class FISEngine(ABC):
    """A FIS store. Public methods validate, check the writer, then call the raw methods.

    Engines are per-process objects: open a new one in each worker process (after ``fork``).
    Listeners added with :meth:`add_listener` are called synchronously after each write made
    through *this* object; :meth:`watch` reports every write, whoever made it.
    """

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    # raw operations: strings in, strings out; arguments already validated
    @abstractmethod
    def _get(self, ns: str, key: str) -> str | None: ...
    @abstractmethod
    def _put(self, ns: str, items: list[tuple[str, str]]) -> None: ...
    @abstractmethod
    def _delete(self, ns: str, key: str) -> bool: ...
    @abstractmethod
    def _lpm_get(self, ns: str, table: str, net: int, plen: int) -> str | None: ...
    @abstractmethod
    def _lpm_put(self, ns: str, table: str, rows: list[tuple[int, int, str, str]]) -> None: ...
    @abstractmethod
    def _lpm_delete(self, ns: str, table: str, net: int, plen: int, prefix: str) -> bool: ...
    @abstractmethod
    def _lookup(self, ns: str, table: str, addr: int) -> str | None: ...
    @abstractmethod
    def _items(self, ns: str) -> Iterator[tuple[str, str]]: ...
    @abstractmethod
    def _lpm_items(self, ns: str, table: str) -> Iterator[tuple[str, str]]: ...
    @abstractmethod
    def _drop(self, ns: str) -> list[Change]: ...
    @abstractmethod
    def namespaces(self) -> list[str]:
        """Namespaces holding at least one entry, sorted."""

    @abstractmethod
    def tables(self, ns: str) -> list[str]:
        """LPM table names in ``ns`` holding at least one prefix, sorted."""

    @abstractmethod
    def watch(self) -> ChangeFeed:
        """Open a feed of all changes from now on (see :class:`ChangeFeed`)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> FISEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # notification hook
    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(change)`` after every write made through this engine object."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def _notify(self, changes: Iterable[Change]) -> None:
        for change in changes:
            for listener in list(self._listeners):
                listener(change)

    @staticmethod
    def _authorize(writer: str, ns: str) -> None:
        check_namespace(ns)
        if not isinstance(writer, str) or not can_write(writer, ns):
            raise FISPermissionError(f"writer {writer!r} may not write namespace {ns!r}")

    # key-value
    def get(self, ns: str, key: str) -> JSONValue | None:
        """Value of ``key`` in ``ns``, or ``None``."""
        raw = self._get(check_namespace(ns), _check_key(key))
        return None if raw is None else json.loads(raw)

    def put(self, ns: str, key: str, value: JSONValue, *, writer: str) -> None:
        """Set ``key`` to ``value`` in ``ns`` (``writer`` must pass :func:`can_write`)."""
        self.put_many(ns, [(key, value)], writer=writer)

    def put_many(self, ns: str, items: Iterable[tuple[str, JSONValue]], *, writer: str) -> None:
        """Set several keys atomically (one transaction)."""
        self._authorize(writer, ns)
        rows = [(_check_key(k), _encode(v)) for k, v in items]
        if rows:
            self._put(ns, rows)
            self._notify(Change("kv", ns, "", k) for k, _ in rows)

    def delete(self, ns: str, key: str, *, writer: str) -> bool:
        """Remove ``key``; return whether it existed."""
        self._authorize(writer, ns)
        existed = self._delete(ns, _check_key(key))
        if existed:
            self._notify([Change("kv", ns, "", key)])
        return existed

    def items(self, ns: str) -> Iterator[tuple[str, JSONValue]]:
        """All ``(key, value)`` of ``ns``, sorted by key."""
        for k, raw in self._items(check_namespace(ns)):
            yield k, json.loads(raw)

    # longest prefix
    def lpm_put(
        self, ns: str, table: str, prefix: str | tuple[int, int], value: JSONValue, *, writer: str
    ) -> None:
        """Set the value of ``prefix`` in LPM table ``table`` of ``ns``."""
        self.lpm_put_many(ns, table, [(prefix, value)], writer=writer)

    def lpm_put_many(
        self,
        ns: str,
        table: str,
        items: Iterable[tuple[str | tuple[int, int], JSONValue]],
        *,
        writer: str,
    ) -> None:
        """Set several prefixes atomically."""
        self._authorize(writer, ns)
        _check_table(table)
        rows = [(*_canon_prefix(p), _encode(v)) for p, v in items]
        if rows:
            self._lpm_put(ns, table, rows)
            self._notify(Change("lpm", ns, table, r[2]) for r in rows)

    def lpm_delete(
        self, ns: str, table: str, prefix: str | tuple[int, int], *, writer: str
    ) -> bool:
        """Remove ``prefix`` from the table; return whether it existed."""
        self._authorize(writer, ns)
        _check_table(table)
        net, plen, text = _canon_prefix(prefix)
        existed = self._lpm_delete(ns, table, net, plen, text)
        if existed:
            self._notify([Change("lpm", ns, table, text)])
        return existed

    def lpm_get(self, ns: str, table: str, prefix: str | tuple[int, int]) -> JSONValue | None:
        """Exact-match value of ``prefix`` (no longest-prefix search), or ``None``."""
        net, plen, _ = _canon_prefix(prefix)
        raw = self._lpm_get(check_namespace(ns), _check_table(table), net, plen)
        return None if raw is None else json.loads(raw)

    def lookup(self, ns: str, table: str, addr: int | str) -> JSONValue | None:
        """Value of the longest prefix in ``table`` containing ``addr``, or ``None``."""
        try:
            a = parse_address(addr)
        except PrefixError as exc:
            raise FISValueError(str(exc)) from None
        raw = self._lookup(check_namespace(ns), _check_table(table), a)
        return None if raw is None else json.loads(raw)

    def lpm_items(self, ns: str, table: str) -> Iterator[tuple[str, JSONValue]]:
        """All ``(prefix, value)`` of the table (prefixes canonical text)."""
        for p, raw in self._lpm_items(check_namespace(ns), _check_table(table)):
            yield p, json.loads(raw)

    def drop_namespace(self, ns: str, *, writer: str) -> int:
        """Delete every key and table of ``ns``; return the number of entries removed."""
        self._authorize(writer, ns)
        changes = self._drop(ns)
        self._notify(changes)
        return len(changes)


# --- SQLite engine ----------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lpm (
    ns TEXT NOT NULL, tbl TEXT NOT NULL, k INTEGER NOT NULL, prefix TEXT NOT NULL,
    value TEXT NOT NULL, PRIMARY KEY (ns, tbl, k)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, ns TEXT NOT NULL,
    tbl TEXT NOT NULL, key TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
"""


def _lpm_k(net: int, plen: int) -> int:
    # one integer per (network, length): unique, and an index probe per candidate length
    return (net << 6) | plen


def _sqlite_faults(fn: Callable[..., Any]) -> Callable[..., Any]:
    """SQLite's operational errors (the write lock held past ``timeout``, I/O errors) are the
    platform's: :class:`FISUnavailableError`, like an unreachable Redis."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            path = getattr(self, "path", None) or self._engine.path
            raise FISUnavailableError(f"FIS engine unavailable: SQLite {path!r}: {exc}") from None

    return wrapper


class SqliteFIS(FISEngine):
    """The embedded FIS: one SQLite file in WAL mode, shared by every process on the machine.

    Each process opens its own ``SqliteFIS(path)``. Writes are serialised by SQLite
    (``BEGIN IMMEDIATE``, waiting up to ``timeout`` seconds for the lock); readers never block
    writers (WAL). Every write also appends to a ``changes`` log (the last
    ``keep_changes`` entries are kept) that :meth:`watch` feeds read.
    ``":memory:"`` gives a private store for tests and examples.
    """

    def __init__(self, path: str = ":memory:", *, timeout: float = 5.0, keep_changes: int = 10000):
        super().__init__()
        self.path = str(path)
        self._timeout = timeout
        self._keep = keep_changes
        self._lock = threading.RLock()
        self._writes = 0
        try:
            self._conn = self._connect()
            self._conn.executescript(_SCHEMA)
            # the store's identity: a snapshot taken of another store must not resume here
            self._conn.execute(
                "INSERT OR IGNORE INTO meta (k, v) VALUES ('epoch', ?)", (os.urandom(8).hex(),)
            )
            self.epoch: str = self._conn.execute("SELECT v FROM meta WHERE k = 'epoch'").fetchone()[
                0
            ]
        except sqlite3.Error as exc:
            raise FISUnavailableError(f"cannot open FIS database {self.path!r}: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
        if self.path != ":memory:":
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _write(self, fn: Callable[[sqlite3.Connection], Any], changes: list[Change]) -> Any:
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                result = fn(c)
                if changes:
                    c.executemany(
                        "INSERT INTO changes (kind, ns, tbl, key) VALUES (?, ?, ?, ?)",
                        [(ch.kind, ch.ns, ch.table, ch.key) for ch in changes],
                    )
                    self._writes += 1
                    if self._writes % 256 == 0:
                        c.execute(
                            "DELETE FROM changes WHERE seq <= (SELECT max(seq) FROM changes) - ?",
                            (self._keep,),
                        )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return result

    def _read_one(self, sql: str, args: tuple[Any, ...]) -> Any:
        with self._lock:
            row = self._conn.execute(sql, args).fetchone()
        return None if row is None else row[0]

    @_sqlite_faults
    def _get(self, ns: str, key: str) -> str | None:
        return self._read_one("SELECT value FROM kv WHERE ns = ? AND key = ?", (ns, key))

    @_sqlite_faults
    def _put(self, ns: str, items: list[tuple[str, str]]) -> None:
        self._write(
            lambda c: c.executemany(
                "INSERT OR REPLACE INTO kv (ns, key, value) VALUES (?, ?, ?)",
                [(ns, k, v) for k, v in items],
            ),
            [Change("kv", ns, "", k) for k, _ in items],
        )

    @_sqlite_faults
    def _delete(self, ns: str, key: str) -> bool:
        return bool(
            self._write(
                lambda c: c.execute("DELETE FROM kv WHERE ns = ? AND key = ?", (ns, key)).rowcount,
                [Change("kv", ns, "", key)],
            )
        )

    @_sqlite_faults
    def _lpm_get(self, ns: str, table: str, net: int, plen: int) -> str | None:
        return self._read_one(
            "SELECT value FROM lpm WHERE ns = ? AND tbl = ? AND k = ?",
            (ns, table, _lpm_k(net, plen)),
        )

    @_sqlite_faults
    def _lpm_put(self, ns: str, table: str, rows: list[tuple[int, int, str, str]]) -> None:
        self._write(
            lambda c: c.executemany(
                "INSERT OR REPLACE INTO lpm (ns, tbl, k, prefix, value) VALUES (?, ?, ?, ?, ?)",
                [(ns, table, _lpm_k(net, plen), text, v) for net, plen, text, v in rows],
            ),
            [Change("lpm", ns, table, r[2]) for r in rows],
        )

    @_sqlite_faults
    def _lpm_delete(self, ns: str, table: str, net: int, plen: int, prefix: str) -> bool:
        return bool(
            self._write(
                lambda c: (
                    c.execute(
                        "DELETE FROM lpm WHERE ns = ? AND tbl = ? AND k = ?",
                        (ns, table, _lpm_k(net, plen)),
                    ).rowcount
                ),
                [Change("lpm", ns, table, prefix)],
            )
        )

    _LOOKUP_SQL = (
        "SELECT value FROM lpm WHERE ns = ? AND tbl = ? AND k IN ("
        + ",".join("?" * 33)
        + ") ORDER BY k & 63 DESC LIMIT 1"
    )

    @_sqlite_faults
    def _lookup(self, ns: str, table: str, addr: int) -> str | None:
        ks = [_lpm_k(addr & ((0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF), n) for n in range(33)]
        return self._read_one(self._LOOKUP_SQL, (ns, table, *ks))

    @_sqlite_faults
    def _items(self, ns: str) -> Iterator[tuple[str, str]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT key, value FROM kv WHERE ns = ? ORDER BY key", (ns,)
            ).fetchall()
        return iter(rows)

    @_sqlite_faults
    def _lpm_items(self, ns: str, table: str) -> Iterator[tuple[str, str]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT prefix, value FROM lpm WHERE ns = ? AND tbl = ? ORDER BY k", (ns, table)
            ).fetchall()
        return iter(rows)

    @_sqlite_faults
    def _drop(self, ns: str) -> list[Change]:
        with self._lock:
            keys = self._conn.execute("SELECT key FROM kv WHERE ns = ?", (ns,)).fetchall()
            prefixes = self._conn.execute(
                "SELECT tbl, prefix FROM lpm WHERE ns = ?", (ns,)
            ).fetchall()
            changes = [Change("kv", ns, "", k) for (k,) in keys] + [
                Change("lpm", ns, t, p) for t, p in prefixes
            ]

            def drop(c: sqlite3.Connection) -> None:
                c.execute("DELETE FROM kv WHERE ns = ?", (ns,))
                c.execute("DELETE FROM lpm WHERE ns = ?", (ns,))

            self._write(drop, changes)
        return changes

    @_sqlite_faults
    def namespaces(self) -> list[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT ns FROM kv UNION SELECT ns FROM lpm ORDER BY 1"
            ).fetchall()
        return [r[0] for r in rows]

    @_sqlite_faults
    def tables(self, ns: str) -> list[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT DISTINCT tbl FROM lpm WHERE ns = ? ORDER BY 1", (check_namespace(ns),)
            ).fetchall()
        return [r[0] for r in rows]

    def watch(self) -> ChangeFeed:
        return _SqliteFeed(self)


class _SqliteFeed(ChangeFeed):
    """Polls ``PRAGMA data_version`` (changes when *another* connection commits) and, when it
    moved, reads the change log past the last sequence number seen. Uses its own connection so
    writes through the engine's connection are seen too."""

    def __init__(self, engine: SqliteFIS) -> None:
        self._engine = engine
        if engine.path == ":memory:":
            # a private in-memory store has only the engine's connection: watch its own writes
            self._conn = engine._conn
            self._shared = True
        else:
            self._conn = engine._connect()
            self._shared = False
        self._version = -1
        self._seq = self._max_seq()

    def _max_seq(self) -> int:
        row = self._conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'changes'"
        ).fetchone()
        return int(row[0]) if row else 0

    @_sqlite_faults
    def poll(self) -> list[Change] | None:
        with self._engine._lock if self._shared else _NOLOCK:
            if not self._shared:
                version = self._conn.execute("PRAGMA data_version").fetchone()[0]
                if version == self._version:
                    return []
                self._version = version
            rows = self._conn.execute(
                "SELECT seq, kind, ns, tbl, key FROM changes WHERE seq > ? ORDER BY seq",
                (self._seq,),
            ).fetchall()
            if not rows:
                if self._max_seq() > self._seq:  # everything past us was pruned
                    self._seq = self._max_seq()
                    return None
                return []
            lost = rows[0][0] != self._seq + 1
            self._seq = rows[-1][0]
        if lost:
            return None
        return [Change(kind, ns, tbl, key) for _, kind, ns, tbl, key in rows]

    @property
    def position(self) -> tuple[str, int] | None:
        return (self._engine.epoch, self._seq)

    def resume(self, position: tuple[str, int]) -> bool:
        epoch, seq = position
        if epoch != self._engine.epoch:
            return False
        self._seq = int(seq)
        self._version = -1  # read the log on the next poll
        return True

    def close(self) -> None:
        if not self._shared:
            self._conn.close()


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NOLOCK = _NoLock()


def open_engine(url: str) -> FISEngine:
    """Open a FIS engine from a URL (what daemon configs and tests pass between processes).

    ``sqlite:///abs/path.db``, ``sqlite:relative.db`` or ``sqlite::memory:`` -> :class:`SqliteFIS`;
    ``redis://host:port/db``, ``rediss://...`` or ``unix:///path/redis.sock`` ->
    ``pcsite_lite.fis_redis.RedisFIS``; a ``prefix=NAME`` query parameter selects the Redis key
    prefix (default ``pcfis``).

    >>> open_engine("sqlite::memory:").namespaces()
    []
    """
    scheme, sep, rest = url.partition(":")
    if not sep:
        raise FISValueError(f"FIS URL needs a scheme (sqlite:, redis:, unix:): {url!r}")
    if scheme == "sqlite":
        path = rest[2:] if rest.startswith("//") else rest
        return SqliteFIS(path or ":memory:")
    if scheme in ("redis", "rediss", "unix"):
        from urllib.parse import parse_qsl, urlencode

        from pcsite_lite.fis_redis import RedisFIS

        base, _, qs = url.partition("?")
        query = parse_qsl(qs)
        prefix = next((v for k, v in query if k == "prefix"), "pcfis")
        rest_q = urlencode([(k, v) for k, v in query if k != "prefix"])
        return RedisFIS(f"{base}?{rest_q}" if rest_q else base, prefix=prefix)
    raise FISValueError(f"unknown FIS URL scheme {scheme!r} (sqlite, redis, rediss, unix)")


# --- node-local cache -------------------------------------------------------------------------
_MISS: Any = object()


class CachedFIS:
    """Node-local read cache over an engine (one per compute-node process).

    ``get``/``lookup`` answer from memory; a miss reads the engine once and remembers the answer
    (absence included). Writes go through to the engine and invalidate at once. Other writers'
    updates are applied when ``clock()`` has advanced ``staleness`` seconds past the last poll of
    the engine's change feed, so a read never returns a value older than ``staleness`` seconds
    of that clock (plus Redis pub/sub delivery delay for :class:`~pcsite_lite.fis_redis.RedisFIS`).
    ``clock`` is injectable so a sans-IO pipeline or a test can drive time; call
    :meth:`refresh` to poll now. ``max_entries`` bounds the key-value part (oldest evicted first);
    LPM tables are held whole, loaded on the first lookup.

    While the engine is unreachable the cache keeps answering from what it holds (``available``
    is False, ``outages`` counts the times it went away); a miss raises
    :class:`FISUnavailableError`. When the engine is back, the change feed catches up from its
    position in the change log and only what changed is dropped; the cache is flushed only if
    the log no longer reaches back that far or the store was reset. :meth:`save_snapshot` /
    :meth:`load_snapshot` keep the cached entries (and the log position they are valid at) in a
    file, so a process restarted while the engine is away starts with them.
    """

    def __init__(
        self,
        engine: FISEngine,
        *,
        staleness: float = DEFAULT_STALENESS,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 100_000,
    ) -> None:
        self.engine = engine
        self.staleness = staleness
        self._clock = clock
        self._max = max_entries
        self._kv: dict[tuple[str, str], JSONValue] = {}
        self._lpm: dict[tuple[str, str], LpmTable[JSONValue]] = {}
        self._feed = engine.watch()
        self._deadline = clock() + staleness
        #: counters for metrics and tests
        self.misses = 0
        self.polls = 0
        self.invalidations = 0
        self.flushes = 0
        self.outages = 0  #: times the engine was found unreachable (after being reachable)
        #: False while the change feed cannot reach the engine (reads answer from memory)
        self.available = True
        self.unavailable_reason = ""  #: why, the last time it became unavailable
        #: entries changed since the last snapshot (see :meth:`save_snapshot`)
        self.dirty = False
        engine.add_listener(self._on_change)

    # --- per-packet reads (hot path) ---------------------------------------------------------
    def get(self, ns: str, key: str) -> JSONValue | None:
        """Value of ``key`` in ``ns`` (read-only), or ``None``."""
        if self._clock() >= self._deadline:
            self.refresh()
        v = self._kv.get((ns, key), _MISS)
        if v is _MISS:
            return self._fill(ns, key)
        return v

    def lookup(self, ns: str, table: str, addr: int | str) -> JSONValue | None:
        """Value of the longest prefix of ``table`` in ``ns`` containing ``addr``, or ``None``."""
        if self._clock() >= self._deadline:
            self.refresh()
        t = self._lpm.get((ns, table))
        if t is None:
            t = self._load(ns, table)
        if addr.__class__ is not int or not 0 <= addr <= 0xFFFFFFFF:
            try:
                addr = parse_address(addr)
            except PrefixError as exc:
                raise FISValueError(str(exc)) from None
        return t.search(addr)

    def view(self, ns: str) -> NamespaceView:
        """A view bound to one namespace (what a service's ``fetch``/``lookup`` call)."""
        return NamespaceView(self, check_namespace(ns))

    # --- misses and invalidation -------------------------------------------------------------
    def _fill(self, ns: str, key: str) -> JSONValue | None:
        self.misses += 1
        v = self.engine.get(ns, key)  # FISUnavailableError while the engine is away
        v = None if v is None else freeze(v)
        if len(self._kv) >= self._max:
            del self._kv[next(iter(self._kv))]
        self._kv[(ns, key)] = v
        self.dirty = True
        return v

    def _load(self, ns: str, table: str) -> LpmTable[JSONValue]:
        self.misses += 1
        t: LpmTable[JSONValue] = LpmTable()
        for prefix, value in self.engine.lpm_items(ns, table):
            t.insert(prefix, freeze(value))
        self._lpm[(ns, table)] = t
        self.dirty = True
        return t

    def _on_change(self, change: Change) -> None:
        self.invalidations += 1
        self.dirty = True
        if change.kind == "kv":
            self._kv.pop((change.ns, change.key), None)
            return
        t = self._lpm.get((change.ns, change.table))
        if t is not None:
            try:
                value = self.engine.lpm_get(change.ns, change.table, change.key)
            except FISUnavailableError:  # cannot patch it now: reload the table when needed
                del self._lpm[(change.ns, change.table)]
                return
            if value is None:
                t.discard(change.key)
            else:
                t.insert(change.key, freeze(value))

    def refresh(self) -> None:
        """Apply every change other writers made since the last poll (normally automatic).

        Never raises for an unreachable engine: the cache keeps what it holds until the feed
        can catch up again.
        """
        self.polls += 1
        self._deadline = self._clock() + self.staleness
        try:
            changes = self._feed.poll()
        except FISUnavailableError as exc:
            if self.available:
                self.available = False
                self.outages += 1
                self.unavailable_reason = str(exc)
            return
        self.available = True
        if changes is None:
            self.flush()
            return
        try:
            for change in changes:
                self._on_change(change)
        except FISError:  # a change record that names no valid entry: trust nothing cached
            self.flush()

    def flush(self) -> None:
        """Forget everything cached."""
        self.flushes += 1
        self._kv.clear()
        self._lpm.clear()
        self.dirty = True

    # --- snapshots (a restart while the engine is away) --------------------------------------
    def snapshot(self) -> dict[str, Any] | None:
        """What the cache holds and the change-log position it is valid at (JSON-able), or
        ``None`` when the feed has no position yet (it never reached the engine)."""
        position = self._feed.position
        if position is None:
            return None
        return {
            "format": 1,
            "position": list(position),
            "kv": [[ns, key, value] for (ns, key), value in self._kv.items()],
            "lpm": [[ns, table, list(t.items())] for (ns, table), t in self._lpm.items()],
        }

    def save_snapshot(self, path: str | os.PathLike[str]) -> bool:
        """Write :meth:`snapshot` to ``path`` atomically (temp file + rename); False when there
        is nothing valid to write. Clears :attr:`dirty`."""
        snap = self.snapshot()
        if snap is None:
            return False
        tmp = f"{os.fspath(path)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # providers' data
        with os.fdopen(fd, "w") as f:
            json.dump(snap, f, separators=(",", ":"))
        os.replace(tmp, path)
        self.dirty = False
        return True

    def load_snapshot(self, path: str | os.PathLike[str]) -> int:
        """Fill the cache from a :meth:`save_snapshot` file and resume the change feed from its
        position (changes after it are applied as the feed catches up). Returns the number of
        entries loaded: 0 when the file is missing, unreadable, or of another store."""
        try:
            with open(path) as f:
                snap = json.load(f)
            epoch, seq = snap["position"]
            kv = [(str(ns), str(key), value) for ns, key, value in snap["kv"]]
            lpm = [(str(ns), str(t), [(str(p), v) for p, v in rows]) for ns, t, rows in snap["lpm"]]
        except (OSError, ValueError, TypeError, KeyError):
            return 0
        if snap.get("format") != 1 or not self._feed.resume((str(epoch), int(seq))):
            return 0
        n = 0
        for ns, key, value in kv[: self._max]:
            self._kv[(ns, key)] = None if value is None else freeze(value)
            n += 1
        for ns, table, rows in lpm:
            t: LpmTable[JSONValue] = LpmTable()
            try:
                for prefix, value in rows:
                    t.insert(prefix, freeze(value))
            except PrefixError:
                continue
            self._lpm[(ns, table)] = t
            n += len(rows)
        return n

    def close(self) -> None:
        """Stop listening (the engine stays open: it belongs to the caller)."""
        self.engine.remove_listener(self._on_change)
        self._feed.close()

    # --- write-through (control path) --------------------------------------------------------
    def put(self, ns: str, key: str, value: JSONValue, *, writer: str) -> None:
        self.engine.put(ns, key, value, writer=writer)

    def delete(self, ns: str, key: str, *, writer: str) -> bool:
        return self.engine.delete(ns, key, writer=writer)

    def lpm_put(
        self, ns: str, table: str, prefix: str | tuple[int, int], value: JSONValue, *, writer: str
    ) -> None:
        self.engine.lpm_put(ns, table, prefix, value, writer=writer)

    def lpm_delete(
        self, ns: str, table: str, prefix: str | tuple[int, int], *, writer: str
    ) -> bool:
        return self.engine.lpm_delete(ns, table, prefix, writer=writer)

    def __len__(self) -> int:
        return len(self._kv) + sum(len(t) for t in self._lpm.values())


class NamespaceView:
    """Reads of one namespace through a :class:`CachedFIS` (plus the ISP namespace).

    >>> fis = SqliteFIS(); fis.put("acme/fw", "blocked", True, writer="acme")
    >>> v = CachedFIS(fis).view("acme/fw")
    >>> v.fetch("blocked"), v.fetch("nope")
    (True, None)
    """

    __slots__ = ("_cache", "ns")

    def __init__(self, cache: CachedFIS, ns: str) -> None:
        self._cache = cache
        self.ns = ns

    def fetch(self, key: str) -> JSONValue | None:
        return self._cache.get(self.ns, key)

    def lookup(self, table: str, addr: int | str) -> JSONValue | None:
        return self._cache.lookup(self.ns, table, addr)

    def isp_fetch(self, key: str) -> JSONValue | None:
        return self._cache.get(ISP, key)

    def isp_lookup(self, table: str, addr: int | str) -> JSONValue | None:
        return self._cache.lookup(ISP, table, addr)
