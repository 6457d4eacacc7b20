"""The embedded FIS engine: SQLite in WAL mode, shared safely by every process on one machine."""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

from pcsite_lite.fis.engine import Change, ChangeFeed, FISEngine
from pcsite_lite.fis.errors import FISUnavailableError
from pcsite_lite.fis.names import check_namespace

__all__ = ["SqliteFIS"]

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
