"""Pure parts of the multicast example: zFilters, FRM trees, seed choice, header codec."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.multicast.bloom import (
    M_BITS,
    ZFilter,
    expected_false_positive_rate,
    link_mask,
)
from examples.multicast.header import HEADER_LEN, HeaderError, MulticastHeader
from examples.multicast.tree import (
    adjacency_from_links,
    compute_tree,
    encode_tree,
    out_links,
    simulate_delivery,
)


def test_link_ids_have_k_bits_and_are_directed() -> None:
    m = link_mask(1, 2, seed=0, k=5)
    assert 1 <= m.bit_count() <= 5
    assert m < 1 << M_BITS
    assert link_mask(1, 2, seed=0, k=5) == m
    assert link_mask(2, 1, seed=0, k=5) != m
    assert link_mask(1, 2, seed=1, k=5) != m


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=30))
def test_every_added_link_matches(links: list[tuple[int, int]]) -> None:
    zf = ZFilter()
    for u, v in links:
        zf.add(link_mask(u, v))
    for u, v in links:
        assert link_mask(u, v) in zf
    assert ZFilter.from_bytes(zf.to_bytes()) == zf


def _random_tree(rng: random.Random, n_edges: int) -> list[tuple[int, int]]:
    nodes = [rng.randrange(2**32)]
    edges = []
    for _ in range(n_edges):
        parent = rng.choice(nodes)
        child = rng.randrange(2**32)
        nodes.append(child)
        edges.append((parent, child))
    return edges


@pytest.mark.parametrize(("n", "k"), [(20, 5), (40, 4), (30, 3)])
def test_false_positive_rate_matches_formula(n: int, k: int) -> None:
    """Measured FP rate over synthetic trees vs (1-(1-1/m)^(k*n))^k (m = 256)."""
    rng = random.Random(1234 + n * 7 + k)
    trees, probes = 300, 300
    hits = 0
    for _ in range(trees):
        edges = _random_tree(rng, n)
        zf = ZFilter()
        for u, v in edges:
            zf.add(link_mask(u, v, k=k))
        for _ in range(probes):
            # links that are not in the tree: fresh random endpoints
            u, v = rng.randrange(2**32), rng.randrange(2**32)
            hits += link_mask(u, v, k=k) in zf
    measured = hits / (trees * probes)
    expected = expected_false_positive_rate(n, k=k)
    # the formula is itself an approximation (Bose et al. 2008); allow 15% relative
    assert measured == pytest.approx(expected, rel=0.15), (measured, expected)


def test_tree_is_union_of_paths() -> None:
    rib = {2: [2], 3: [2, 3], 5: [4, 5], 6: [4, 5, 6], 4: [4]}
    t = compute_tree(1, rib, {3, 6, 1})
    assert t.edges == {(1, 2), (2, 3), (1, 4), (4, 5), (5, 6)}
    assert t.members == {1, 3, 6}
    assert not t.unreachable


def test_malformed_or_missing_routes_are_unreachable() -> None:
    rib = {3: [2, 3], 4: [2, 1, 4], 5: [5, 6], 7: [7, 7]}
    t = compute_tree(1, rib, {3, 4, 5, 7, 9})
    assert t.unreachable == {4, 5, 7, 9}
    assert t.edges == {(1, 2), (2, 3)}


def test_conflicting_paths_still_give_a_tree() -> None:
    rib = {3: [2, 3], 4: [5, 3, 4]}  # 3 reachable via 2 and via 5
    t = compute_tree(1, rib, {3, 4})
    parents: dict[int, int] = {}
    for u, v in t.edges:
        assert v not in parents
        parents[v] = u
    assert {3, 4} <= t.nodes


def test_out_links_never_go_upstream() -> None:
    zf = ZFilter()
    zf.add(link_mask(2, 1))
    zf.add(link_mask(2, 3))
    assert out_links(2, [1, 3], zf, seed=0, upstream=1) == [3]
    assert out_links(2, [1, 3], zf, seed=0, upstream=None) == [1, 3]


def _grid(w: int, h: int) -> dict[int, frozenset[int]]:
    links = []
    for x in range(w):
        for y in range(h):
            a = 100 * x + y + 1
            if x + 1 < w:
                links.append((a, a + 100))
            if y + 1 < h:
                links.append((a, a + 1))
    return adjacency_from_links(links)


def _bfs_rib(adj: dict[int, frozenset[int]], root: int) -> dict[int, list[int]]:
    parent: dict[int, int] = {}
    order = [root]
    seen = {root}
    for u in order:
        for v in sorted(adj[u]):
            if v not in seen:
                seen.add(v)
                parent[v] = u
                order.append(v)
    rib = {}
    for v in order[1:]:
        path = [v]
        while parent[path[-1]] != root:
            path.append(parent[path[-1]])
        rib[v] = path[::-1]
    return rib


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 12))
def test_chosen_seed_delivers_exactly_once_on_the_topology(rnd: int, n_members: int) -> None:
    adj = _grid(5, 5)
    rng = random.Random(rnd)
    root = rng.choice(sorted(adj))
    members = set(rng.sample(sorted(adj), n_members))
    tree = compute_tree(root, _bfs_rib(adj, root), members)
    enc = encode_tree(tree, adj)
    copies = simulate_delivery(root, adj, enc.zfilter, seed=enc.seed)
    # with 8 link-ID tables to choose from, one always gives an exact tree on this grid
    assert enc.extra_copies == 0
    assert set(copies) == tree.nodes
    assert all(c == 1 for c in copies.values())
    assert members <= set(copies)


def test_header_round_trip_and_errors() -> None:
    h = MulticastHeader(seed=3, group=0xDEADBEEF, upstream=64512, zfilter=bytes(range(32)))
    raw = h.encode()
    assert len(raw) == HEADER_LEN
    assert MulticastHeader.decode(raw + b"x") == (h, b"x")
    with pytest.raises(HeaderError) as e:
        MulticastHeader.decode(raw[:10])
    assert e.value.reason == "mc_truncated"
    with pytest.raises(HeaderError) as e:
        MulticastHeader.decode(b"XX" + raw[2:])
    assert e.value.reason == "mc_bad_magic"
