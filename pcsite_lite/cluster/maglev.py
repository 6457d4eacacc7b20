"""A Maglev lookup table (Eisenbud et al., NSDI 2016, §3.4): bucket -> compute node.

Pure and I/O-free. Every node ``n`` gets a permutation of the ``M`` table positions (``M``
prime) from two hashes of its name, ``offset = h1(n) mod M`` and ``skip = h2(n) mod (M-1) + 1``:
``perm_n[j] = (offset + j * skip) mod M``. Nodes take turns, in name order, claiming the next
position of their permutation that is still free, until the table is full. Each node ends up
with ``M/N`` positions, give or take one.

Recomputed from scratch, Maglev moves more than the changed node's share (the fill race is
re-run: measured up to 69 % of positions for one of three nodes leaving), so the table is
built **from the previous one** (``previous=``): positions whose node is still there keep it;
a node above its new quota (``M/N``, the first ``M mod N`` nodes in name order one more)
gives back the positions it likes least (latest in its permutation); the free positions are
filled by the same round-robin among the nodes below quota. A node leaving moves exactly its
own positions; a node joining takes exactly its quota from the others; balance stays within
one position. :func:`moved_fraction` measures it (the tests hold it to ``1/N + 5 %``).

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

    def __init__(
        self, nodes: Iterable[str], size: int = DEFAULT_SIZE, previous: MaglevTable | None = None
    ) -> None:
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
        entry = [-1] * size
        quota = [size // len(ns) + (1 if i < size % len(ns) else 0) for i in range(len(ns))]
        count = [0] * len(ns)
        if previous is not None and previous.size == size:
            index = {n: i for i, n in enumerate(ns)}
            for pos, owner in enumerate(previous.entries):
                i = index.get(owner, -1)
                if i >= 0:
                    entry[pos] = i
                    count[i] += 1
            for i in range(len(ns)):  # over quota: give back the least preferred positions
                if count[i] > quota[i]:
                    inv = pow(skips[i], -1, size)
                    mine = [p for p in range(size) if entry[p] == i]
                    mine.sort(key=lambda p: (p - offsets[i]) * inv % size)  # rank in perm_i
                    for p in mine[quota[i] :]:
                        entry[p] = -1
                    count[i] = quota[i]
        filled = sum(count)
        nxt = [0] * len(ns)
        while filled < size:
            for i in range(len(ns)):
                if count[i] >= quota[i]:
                    continue
                c = (offsets[i] + nxt[i] * skips[i]) % size
                while entry[c] >= 0:
                    nxt[i] += 1
                    c = (offsets[i] + nxt[i] * skips[i]) % size
                entry[c] = i
                nxt[i] += 1
                count[i] += 1
                filled += 1
        self.entries: tuple[str, ...] = tuple(ns[e] for e in entry)

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
        """The table for another node set, built from this one (minimal disruption)."""
        return MaglevTable(nodes, self.size, previous=self)

    def __repr__(self) -> str:
        return f"MaglevTable(nodes={list(self.nodes)!r}, size={self.size})"
