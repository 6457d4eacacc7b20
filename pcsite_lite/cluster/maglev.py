"""A Maglev lookup table (Eisenbud et al., NSDI 2016, §3.4): bucket -> compute node.

Pure and I/O-free. Every node ``n`` gets a permutation of the ``M`` table positions (``M``
prime) from two hashes of its name, ``offset = h1(n) mod M`` and ``skip = h2(n) mod (M-1) + 1``:
``perm_n[j] = (offset + j * skip) mod M``. Nodes take turns, in name order, claiming the next
position of their permutation that is still free, until the table is full. Each node ends up
with ``M/N`` positions, give or take one, and when a node joins or leaves most positions keep
their node: the ones it owned move, plus a small churn among the others (measured by
:func:`moved_fraction`; the tests hold it to ``1/N + 5 %``).

The load balancer hashes a packet's circuit label (form 1) or flow (forms 2/3) ``mod M`` in
the kernel (nftables ``jhash``), looks the position up in a kernel map filled from
:attr:`MaglevTable.entries`, and routes to the node it names.

>>> t = MaglevTable(["n1", "n2", "n3"], size=13)
>>> sorted(t.shares().items())
[('n1', 5), ('n2', 4), ('n3', 4)]
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

from pcsite_lite.lb import moved_fraction  # the same measure as the worker split's table

__all__ = ["DEFAULT_SIZE", "MaglevTable", "is_prime", "moved_fraction"]

#: table positions: prime, >= 100 x the nodes a site runs (tens), small enough that the
#: kernel map is replaced in one nft transaction in milliseconds
DEFAULT_SIZE: Final = 4093
MAX_SIZE: Final = 65537


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def _h(name: str, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, key=salt).digest(), "big")


class MaglevTable:
    """An immutable Maglev table over ``nodes`` (names; order does not matter).

    ``entries[i]`` is the node owning position ``i``. No node is an error: a site without a
    compute node cannot forward.
    """

    __slots__ = ("entries", "nodes", "size")

    def __init__(self, nodes: Iterable[str], size: int = DEFAULT_SIZE) -> None:
        ns = tuple(sorted(set(nodes)))
        if not ns:
            raise ValueError("a Maglev table needs at least one node")
        if not isinstance(size, int) or not 2 < size <= MAX_SIZE or not is_prime(size):
            raise ValueError(f"size must be a prime in 3..{MAX_SIZE}, got {size!r}")
        if len(ns) > size:
            raise ValueError(f"{len(ns)} nodes do not fit a table of {size}")
        self.nodes: tuple[str, ...] = ns
        self.size = size
        offsets = [_h(n, b"offset") % size for n in ns]
        skips = [_h(n, b"skip") % (size - 1) + 1 for n in ns]
        nxt = [0] * len(ns)
        entry = [-1] * size
        filled = 0
        while True:
            for i in range(len(ns)):
                c = (offsets[i] + nxt[i] * skips[i]) % size
                while entry[c] >= 0:
                    nxt[i] += 1
                    c = (offsets[i] + nxt[i] * skips[i]) % size
                entry[c] = i
                nxt[i] += 1
                filled += 1
                if filled == size:
                    self.entries: tuple[str, ...] = tuple(ns[e] for e in entry)
                    return

    def node(self, position: int) -> str:
        """The node owning ``position`` (taken ``mod size``)."""
        return self.entries[position % self.size]

    def shares(self) -> dict[str, int]:
        """Positions per node."""
        out = dict.fromkeys(self.nodes, 0)
        for n in self.entries:
            out[n] += 1
        return out

    def with_nodes(self, nodes: Iterable[str]) -> MaglevTable:
        return MaglevTable(nodes, self.size)

    def __repr__(self) -> str:
        return f"MaglevTable(nodes={list(self.nodes)!r}, size={self.size})"
