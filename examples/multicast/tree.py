"""Free Riding Multicast trees: union of unicast AS paths, encoded as a zFilter.

FRM (Ratnasamy et al., "Revisiting IP Multicast", SIGCOMM 2006) lets the sender's border
router compute a group's AS-level tree as the union of its BGP unicast paths to every domain
that advertises membership in the group. Here that computation runs in a PacketCloud site
(paper §2.6.2) over a BGP-like table the PSP keeps in the FIS:

* ``rib``: destination AS -> AS path *from the computing AS* (BGP ``AS_PATH`` order: first the
  neighbour, last the origin). The computing AS itself is not in the path.
* ``members``: the ASes advertising the group.

:func:`compute_tree` returns the set of directed edges; :func:`encode_tree` picks the LIPSIN
seed (link-ID table) whose zFilter, simulated over the known AS adjacency, reaches exactly the
tree (no false-positive copy, no duplicate) and returns the filter; :func:`out_links` is the
per-site forwarding decision. All pure.

>>> rib = {2: [2], 3: [2, 3], 4: [4]}
>>> sorted(compute_tree(1, rib, {3, 4}).edges)
[(1, 2), (1, 4), (2, 3)]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .bloom import DEFAULT_K, N_SEEDS, ZFilter, link_mask

__all__ = [
    "Encoding",
    "Tree",
    "adjacency_from_links",
    "compute_tree",
    "encode_tree",
    "out_links",
    "simulate_delivery",
]

Edge = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Tree:
    """A group's AS-level tree rooted at ``root``."""

    root: int
    edges: frozenset[Edge]
    members: frozenset[int]  #: member ASes reachable through the rib (root included if member)
    unreachable: frozenset[int]  #: member ASes with no route in the rib

    @property
    def nodes(self) -> frozenset[int]:
        return frozenset({self.root} | {v for _, v in self.edges})


def compute_tree(root: int, rib: Mapping[int, Sequence[int]], members: Iterable[int]) -> Tree:
    """The union of the unicast paths from ``root`` to every member AS.

    A path that loops, contains ``root`` or does not end at its destination is ignored (the
    destination is reported unreachable): a malformed table entry must not build a cycle.
    """
    edges: set[Edge] = set()
    reached: set[int] = set()
    unreachable: set[int] = set()
    for dest in members:
        if dest == root:
            reached.add(dest)
            continue
        path = rib.get(dest)
        if not path or path[-1] != dest or root in path or len(set(path)) != len(path):
            unreachable.add(dest)
            continue
        prev = root
        for hop in path:
            edges.add((prev, hop))
            prev = hop
        reached.add(dest)
    # Two paths may reach the same AS through different upstreams (BGP paths from one AS are
    # a tree in practice, but a table is only "BGP-like"): keep the first parent per AS in a
    # breadth-first walk so that the result is a tree and no AS gets two copies.
    children: dict[int, list[int]] = {}
    for u, v in sorted(edges):
        children.setdefault(u, []).append(v)
    tree_edges: set[Edge] = set()
    seen = {root}
    queue = deque([root])
    while queue:
        u = queue.popleft()
        for v in children.get(u, ()):
            if v not in seen:
                seen.add(v)
                tree_edges.add((u, v))
                queue.append(v)
    return Tree(root, frozenset(tree_edges), frozenset(reached), frozenset(unreachable))


def adjacency_from_links(links: Iterable[Sequence[int]]) -> dict[int, frozenset[int]]:
    """Undirected AS adjacency (each link usable both ways) from ``[[a, b], ...]`` pairs."""
    adj: dict[int, set[int]] = {}
    for a, b in links:
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set()).add(a)
    return {a: frozenset(n) for a, n in adj.items()}


def out_links(
    here: int,
    neighbours: Iterable[int],
    zfilter: ZFilter,
    *,
    seed: int,
    upstream: int | None,
    k: int = DEFAULT_K,
) -> list[int]:
    """Neighbours of ``here`` whose link ``here -> v`` matches the filter, never ``upstream``."""
    return [
        v
        for v in sorted(neighbours)
        if v != upstream and link_mask(here, v, seed=seed, k=k) in zfilter
    ]


def simulate_delivery(
    root: int,
    adjacency: Mapping[int, Iterable[int]],
    zfilter: ZFilter,
    *,
    seed: int,
    k: int = DEFAULT_K,
    max_copies: int = 10_000,
) -> dict[int, int]:
    """Copies each AS receives when every site applies :func:`out_links` (root counts 1)."""
    copies = {root: 1}
    queue: deque[tuple[int, int | None]] = deque([(root, None)])
    sent = 0
    while queue and sent < max_copies:
        here, up = queue.popleft()
        for v in out_links(here, adjacency.get(here, ()), zfilter, seed=seed, upstream=up, k=k):
            sent += 1
            first = v not in copies
            copies[v] = copies.get(v, 0) + 1
            if first:  # a site that already had the packet would loop: count, don't recurse
                queue.append((v, here))
    return copies


@dataclass(frozen=True, slots=True)
class Encoding:
    """A tree as carried in packets: the seed (link-ID table) and the zFilter."""

    seed: int
    zfilter: ZFilter
    extra_copies: int  #: copies beyond one per tree node in the known topology (0 = exact)


def encode_tree(
    tree: Tree,
    adjacency: Mapping[int, Iterable[int]],
    *,
    k: int = DEFAULT_K,
    seeds: int = N_SEEDS,
) -> Encoding:
    """Encode ``tree``, choosing the seed with the fewest false-positive copies (LIPSIN's fpa).

    The first seed whose simulated delivery over ``adjacency`` reaches exactly the tree's nodes
    once each wins; if none does, the one with the fewest extra copies.
    """
    best: Encoding | None = None
    nodes = tree.nodes
    adj: dict[int, set[int]] = {a: set(n) for a, n in adjacency.items()}
    for u, v in tree.edges:  # tree links are real links even if the table omitted them
        adj.setdefault(u, set()).add(v)
        adj.setdefault(v, set()).add(u)
    for seed in range(seeds):
        zf = ZFilter()
        for u, v in tree.edges:
            zf.add(link_mask(u, v, seed=seed, k=k))
        copies = simulate_delivery(tree.root, adj, zf, seed=seed, k=k)
        extra = sum(copies.values()) - len(nodes) + sum(1 for n in nodes if n not in copies)
        enc = Encoding(seed, zf, extra)
        if extra == 0:
            return enc
        if best is None or extra < best.extra_copies:
            best = enc
    assert best is not None
    return best
