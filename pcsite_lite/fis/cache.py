"""The node-local read cache each compute node keeps over a FIS engine."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any, Final

from pcsite_lite.fis.engine import Change, FISEngine
from pcsite_lite.fis.errors import FISError, FISUnavailableError, FISValueError
from pcsite_lite.fis.names import ISP, JSONValue, check_namespace, freeze
from pcsite_lite.lpm import LpmTable, PrefixError, parse_address

__all__ = ["DEFAULT_STALENESS", "CachedFIS", "NamespaceView"]

DEFAULT_STALENESS: Final = 0.005  #: seconds a CachedFIS may lag other processes' writes
_MISS: Any = object()


class CachedFIS:
    """Node-local read cache over an engine (one per compute-node process).

    ``get``/``lookup`` answer from memory; a miss reads the engine once and remembers the answer
    (absence included). Writes go through to the engine and invalidate at once. Other writers'
    updates are applied when ``clock()`` has advanced ``staleness`` seconds past the last poll of
    the engine's change feed, so a read never returns a value older than ``staleness`` seconds
    of that clock (plus Redis pub/sub delivery delay for
    :class:`~pcsite_lite.fis.redis_engine.RedisFIS`).
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

    def cached(self, ns: str, key: str) -> Any:
        """The value ``get`` would answer from memory (the very object), or ``None`` if the
        key is not cached: lets a mirror of decisions (``pcsite_lite.native``) tell which of
        the values it used an update replaced, without reading the engine."""
        return self._kv.get((ns, key))

    def refresh_if_due(self) -> None:
        """:meth:`refresh` if ``staleness`` has passed since the last poll (what every read
        does first; the native switch calls it once per batch)."""
        if self._clock() >= self._deadline:
            self.refresh()

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

    >>> from pcsite_lite.fis import SqliteFIS
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
