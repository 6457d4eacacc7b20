"""The FIS store interface: :class:`FISEngine` (validation and the writer check shared by every
engine) and the change feed (:class:`Change`, :class:`ChangeFeed`) a node cache polls."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from pcsite_lite.fis.errors import FISPermissionError, FISValueError
from pcsite_lite.fis.names import (
    JSONValue,
    _canon_prefix,
    _check_key,
    _check_table,
    _encode,
    can_write,
    check_namespace,
)
from pcsite_lite.lpm import PrefixError, parse_address

__all__ = ["Change", "ChangeFeed", "FISEngine", "Listener"]


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
