"""The service's per-site multicast decision, walked hop by hop over an AS graph.

These call ``service.plan`` directly (no site runtime); ``test_multicast.py`` runs the same
service in the simulated network through the Packet API."""

from __future__ import annotations

from collections import Counter
from typing import Any

from examples.multicast.bgp import best_paths, members_of, site_table
from examples.multicast.netwalk import GRAPH
from examples.multicast.service import plan

ADJ = GRAPH  #: a ring of four with stubs (:data:`examples.multicast.netwalk.GRAPH`)
SITE = {a: f"198.18.{a - 64500}.1" for a in ADJ}
AS_OF = {ip: a for a, ip in SITE.items()}


def _tables(receivers: dict[int, dict[int, list[str]]], version: int) -> dict[int, Any]:
    return {
        a: site_table(asn=a, adjacency=ADJ, site_of=SITE, receivers=receivers, version=version)
        for a in ADJ
    }


class Node:
    def __init__(self) -> None:
        self.cache: dict[str, Any] = {}
        self.computations = 0


def _send(
    tables: dict[int, Any], nodes: dict[int, Node], src_as: int, group: int, data: bytes
) -> tuple[Counter[str], Counter[tuple[int, int]]]:
    """Walk one packet from the sender's first site; count host copies and link crossings."""
    hosts: Counter[str] = Counter()
    links: Counter[tuple[int, int]] = Counter()
    work: list[tuple[int, bytes, bool]] = [(src_as, data, False)]
    while work:
        here, payload, has_header = work.pop()
        node = nodes[here]
        p = plan(payload, group, has_header, tables[here], node.cache.get, node.cache.__setitem__)
        assert p["drop"] is None
        node.computations += p["computed"]
        for site, out in p["sites"]:
            nxt = AS_OF[site]
            links[(here, nxt)] += 1
            assert len(links) < 100
            work.append((nxt, out, True))
        for host, out in p["hosts"]:
            assert out == data
            hosts[host] += 1
    return hosts, links


def test_bgp_paths_are_shortest_and_deterministic() -> None:
    paths = best_paths(ADJ, 64501)
    assert paths[64504] == [64502, 64504]  # tie with 64503: lower next-hop ASN wins
    assert paths[64507] == [64503, 64507]
    tables = _tables({64505: {1: ["198.18.5.10"]}}, 1)
    assert members_of(tables[64506], 1) == {64505}


def test_every_receiver_in_four_domains_gets_exactly_one_copy_and_nothing_goes_upstream() -> None:
    receivers = {
        64505: {1: ["198.18.5.10", "198.18.5.11"]},
        64506: {1: ["198.18.6.10"]},
        64507: {1: ["198.18.7.10"]},
        64503: {1: ["198.18.3.10"]},
    }
    tables = _tables(receivers, 1)
    nodes = {a: Node() for a in ADJ}
    for i in range(20):
        hosts, links = _send(tables, nodes, 64501, 1, b"pkt%d" % i)
        assert hosts == Counter({h: 1 for r in receivers.values() for h in r[1]})
        # each directed link carries at most one copy and never the reverse of a used link
        assert all(c == 1 for c in links.values())
        assert not any((b, a) in links for a, b in links)
        # 64504 must be reached once (it is on the path to 64505) and nothing goes to 64501
        assert all(b != 64501 for _, b in links)
    # one tree computation for the group, at the sender's first site only
    assert nodes[64501].computations == 1
    assert sum(n.computations for n in nodes.values()) == 1


def test_join_and_leave_take_effect_on_the_next_packet() -> None:
    receivers: dict[int, dict[int, list[str]]] = {
        64505: {7: ["198.18.5.10"]},
        64507: {7: ["198.18.7.10"]},
    }
    nodes = {a: Node() for a in ADJ}
    hosts, _ = _send(_tables(receivers, 1), nodes, 64506, 7, b"a")
    assert set(hosts) == {"198.18.5.10", "198.18.7.10"}
    receivers[64501] = {7: ["198.18.1.10"]}  # join in a new domain
    del receivers[64507]  # leave
    hosts, links = _send(_tables(receivers, 2), nodes, 64506, 7, b"b")
    assert hosts == Counter({"198.18.5.10": 1, "198.18.1.10": 1})
    assert (64503, 64507) not in links
    assert nodes[64506].computations == 2


def test_groups_do_not_share_trees_and_a_sender_inside_a_member_domain_delivers_locally() -> None:
    receivers = {64501: {1: ["198.18.1.10"], 2: ["198.18.1.20"]}, 64507: {2: ["198.18.7.20"]}}
    tables = _tables(receivers, 1)
    nodes = {a: Node() for a in ADJ}
    h1, l1 = _send(tables, nodes, 64501, 1, b"x")
    h2, l2 = _send(tables, nodes, 64501, 2, b"y")
    assert h1 == Counter({"198.18.1.10": 1}) and not l1
    assert h2 == Counter({"198.18.1.20": 1, "198.18.7.20": 1})
    assert set(l2) == {(64501, 64503), (64503, 64507)}
    assert nodes[64501].computations == 2


def test_garbage_after_the_shim_is_dropped_with_a_reason() -> None:
    tables = _tables({}, 1)
    p = plan(b"junk", 1, True, tables[64501], lambda k: None, lambda k, v: None)
    assert p["drop"] == "mc_truncated" and not p["sites"]
    p = plan(b"X" * 60, 1, True, tables[64501], lambda k: None, lambda k, v: None)
    assert p["drop"] == "mc_bad_header"
    p = plan(b"x", 1, False, None, lambda k: None, lambda k, v: None)
    assert p["drop"] == "mc_no_table"


def test_service_tree_agrees_with_the_reference_tree() -> None:
    """service.tree_edges (sandboxed, FIS-driven) vs tree.compute_tree (PSP-side library)."""
    from examples.multicast.service import tree_edges
    from examples.multicast.tree import compute_tree

    for root in ADJ:
        table = _tables({}, 1)[root]
        rib = {int(d): e["path"] for d, e in table["routes"].items()}
        for members in ({64505}, {64505, 64507, 64506}, set(ADJ) - {root}, {root, 64504}):
            ref = compute_tree(root, rib, members)
            assert set(tree_edges(root, table["routes"], members)) == ref.edges
