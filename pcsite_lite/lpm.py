"""Longest-prefix-match table for IPv4 (the FIS's ``lookup(table, prefix)``, paper §2.3).

Two structures, kept in step by every insert and delete:

* one ``dict`` per prefix length (network address ``int`` -> value): exact get, delete,
  length and ordered iteration are O(1) dict operations;
* for the longest-prefix search, the ``pytricia`` C radix tree (a well-kept PyPI package, wheels
  for CPython on Linux) when it is installed. ``benchmarks/fis.py`` measured it ~1.9x faster than
  the pure-Python search (``lpm_vs_pytricia``; see ``docs/fis.md``). Without it, the search
  probes the per-length dicts: a tuple of ``(mask, dict)`` pairs for the lengths present,
  longest first, plays the role of a length bitmap, so a table using a handful of lengths
  (/8, /16, /24, /32) answers in a few hundred nanoseconds and the worst case (all 33 lengths)
  is 33 dict probes.

``tests/fis/test_lpm.py`` proves both searches against a brute-force scan with hypothesis.
:data:`BACKEND` says which search this process uses; ``LpmTable(accelerated=False)`` forces the
pure-Python one.

Prefixes are written ``"a.b.c.d/len"`` (a bare address means ``/32``) or given as
``(network_int, length)``; host bits must be zero. Addresses are ``int`` (fast path, what
:func:`pcsock.wire.parse` yields) or dotted quads. Values are any object except ``None`` (which
means "no match").

>>> t = LpmTable()
>>> t.insert("198.18.0.0/15", "testnet")
>>> t.insert("198.18.1.0/24", "site-b")
>>> t.lookup("198.18.1.7"), t.lookup("198.19.0.1"), t.lookup("10.0.0.1")
('site-b', 'testnet', None)
>>> t.lookup_prefix("198.18.1.7")
('198.18.1.0/24', 'site-b')
>>> t.delete("198.18.1.0/24")
>>> t.lookup("198.18.1.7"), len(t)
('testnet', 1)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from typing import Any, Final, Generic, TypeVar

try:
    import pytricia as _pytricia
except ImportError:  # pragma: no cover - exercised where pytricia is absent
    _pytricia = None

__all__ = [
    "BACKEND",
    "LpmTable",
    "PrefixError",
    "format_prefix",
    "parse_address",
    "parse_prefix",
]

V = TypeVar("V")

_ALL = 0xFFFFFFFF
#: the longest-prefix search in use: "pytricia" (C radix tree) or "python" (per-length dicts)
BACKEND: Final = "pytricia" if _pytricia is not None else "python"
#: MASKS[n] is the netmask of a /n prefix as an int.
MASKS: tuple[int, ...] = tuple((_ALL << (32 - n)) & _ALL for n in range(33))


class PrefixError(ValueError):
    """A prefix or address that is not valid IPv4 (message says why)."""


def parse_address(addr: str | int) -> int:
    """Dotted quad (or int) to a 32-bit int; :class:`PrefixError` if it is not one."""
    if isinstance(addr, int) and not isinstance(addr, bool):
        if 0 <= addr <= _ALL:
            return addr
        raise PrefixError(f"IPv4 address out of range: {addr}")
    if not isinstance(addr, str):
        raise PrefixError(f"not an IPv4 address: {addr!r}")
    try:
        return int(ipaddress.IPv4Address(addr))
    except ValueError as exc:
        raise PrefixError(f"not an IPv4 address: {addr!r}") from exc


def parse_prefix(prefix: str | tuple[int, int]) -> tuple[int, int]:
    """``"a.b.c.d/len"`` (or a bare address = /32, or ``(net, len)``) to ``(net, len)``.

    Raises :class:`PrefixError` for a malformed prefix or one with host bits set.

    >>> parse_prefix("10.1.0.0/16")
    (167837696, 16)
    """
    if isinstance(prefix, tuple):
        if len(prefix) != 2:
            raise PrefixError(f"prefix tuple must be (network, length): {prefix!r}")
        net, plen = prefix
        if not isinstance(plen, int) or isinstance(plen, bool) or not 0 <= plen <= 32:
            raise PrefixError(f"prefix length must be 0..32: {plen!r}")
        net = parse_address(net)
    elif isinstance(prefix, str):
        addr, sep, length = prefix.partition("/")
        net = parse_address(addr)
        if not sep:
            plen = 32
        elif length.isdigit() and len(length) <= 2 and int(length) <= 32:
            plen = int(length)
        else:
            raise PrefixError(f"prefix length must be 0..32: {prefix!r}")
    else:
        raise PrefixError(f"not an IPv4 prefix: {prefix!r}")
    if net & ~MASKS[plen] & _ALL:
        raise PrefixError(f"host bits set in prefix {format_prefix(net, plen, check=False)}")
    return net, plen


def format_prefix(net: int, plen: int, *, check: bool = True) -> str:
    """``(net, len)`` to the canonical ``"a.b.c.d/len"`` text used as FIS keys."""
    if check:
        net, plen = parse_prefix((net, plen))
    return f"{net >> 24 & 255}.{net >> 16 & 255}.{net >> 8 & 255}.{net & 255}/{plen}"


class LpmTable(Generic[V]):
    """Mutable IPv4 longest-prefix-match table (see the module docstring).

    ``search`` is the bound longest-prefix function for an already validated ``int`` address
    (``0 <= addr <= 0xFFFFFFFF``): what a per-packet caller that checked the address uses.
    """

    __slots__ = ("_by_len", "_probe", "_size", "_tree", "search")

    def __init__(self, *, accelerated: bool = True) -> None:
        self._by_len: list[dict[int, V]] = [{} for _ in range(33)]
        self._probe: tuple[tuple[int, dict[int, V]], ...] = ()
        self._size = 0
        self._tree: Any = None
        self.search: Callable[[int], V | None]
        if accelerated and _pytricia is not None:
            self._tree = _pytricia.PyTricia(32)
            self.search = self._tree.get
        else:
            self.search = self._search

    # --- updates ------------------------------------------------------------------------
    def insert(self, prefix: str | tuple[int, int], value: V) -> None:
        """Add or replace the value of ``prefix``."""
        if value is None:
            raise ValueError("LPM values must not be None (None means 'no match')")
        net, plen = parse_prefix(prefix)
        d = self._by_len[plen]
        if self._tree is not None:
            self._tree.insert(format_prefix(net, plen, check=False), value)
        if net not in d:
            self._size += 1
            if not d:
                d[net] = value
                self._rebuild()
                return
        d[net] = value

    def delete(self, prefix: str | tuple[int, int]) -> None:
        """Remove ``prefix``; :class:`KeyError` if it is not in the table."""
        net, plen = parse_prefix(prefix)
        d = self._by_len[plen]
        del d[net]  # KeyError if absent
        if self._tree is not None:
            self._tree.delete(format_prefix(net, plen, check=False))
        self._size -= 1
        if not d:
            self._rebuild()

    def discard(self, prefix: str | tuple[int, int]) -> bool:
        """Remove ``prefix`` if present; return whether it was."""
        try:
            self.delete(prefix)
        except KeyError:
            return False
        return True

    def clear(self) -> None:
        for d in self._by_len:
            d.clear()
        self._probe = ()
        self._size = 0
        if self._tree is not None:
            self._tree = _pytricia.PyTricia(32)
            self.search = self._tree.get

    def _rebuild(self) -> None:
        self._probe = tuple(
            (MASKS[n], self._by_len[n]) for n in range(32, -1, -1) if self._by_len[n]
        )

    # --- queries ------------------------------------------------------------------------
    def _search(self, addr: int) -> V | None:
        for mask, d in self._probe:
            v = d.get(addr & mask)
            if v is not None:
                return v
        return None

    def lookup(self, addr: int | str) -> V | None:
        """Value of the longest prefix containing ``addr``, or ``None``."""
        if addr.__class__ is not int or not 0 <= addr <= 0xFFFFFFFF:
            addr = parse_address(addr)  # raises PrefixError
        return self.search(addr)

    def lookup_prefix(self, addr: int | str) -> tuple[str, V] | None:
        """``(prefix, value)`` of the longest match for ``addr``, or ``None``."""
        a = parse_address(addr)
        for mask, d in self._probe:
            v = d.get(a & mask)
            if v is not None:
                return format_prefix(a & mask, MASKS.index(mask), check=False), v
        return None

    def get(self, prefix: str | tuple[int, int]) -> V | None:
        """Exact-match value of ``prefix`` (no longest-prefix search), or ``None``."""
        net, plen = parse_prefix(prefix)
        return self._by_len[plen].get(net)

    def __contains__(self, prefix: object) -> bool:
        try:
            net, plen = parse_prefix(prefix)  # type: ignore[arg-type]
        except PrefixError:
            return False
        return net in self._by_len[plen]

    def __len__(self) -> int:
        return self._size

    def items(self) -> Iterator[tuple[str, V]]:
        """``(prefix, value)`` pairs, by network address then length (stable order)."""
        rows = [(net, plen, v) for plen, d in enumerate(self._by_len) for net, v in d.items()]
        rows.sort(key=lambda r: (r[0], r[1]))
        for net, plen, v in rows:
            yield format_prefix(net, plen, check=False), v

    def __iter__(self) -> Iterator[str]:
        for prefix, _ in self.items():
            yield prefix

    def __repr__(self) -> str:
        backend = "pytricia" if self._tree is not None else "python"
        return f"<LpmTable {self._size} prefixes, {backend} search>"
