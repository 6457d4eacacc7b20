"""The BGP-like table the multicast PSP keeps in each site's FIS (pure).

FRM augments each domain's BGP advertisement with the groups it has members in; every border
router then holds, per destination domain, the AS path and the groups. Our PSP's control plane
plays BGP's part: from the AS adjacency it computes each AS's best paths (fewest AS hops,
lowest next-hop ASN on ties: a deterministic stand-in for BGP's decision process) and writes
one value per site (:func:`site_table`)::

    {"version": 7,                    # bumped on every change: the tree cache's key
     "as": 64501,                     # this site's AS
     "neighbours": {"64502": "198.18.2.1", ...},   # neighbour AS -> its multicast site
     "routes": {"64503": {"path": [64502, 64503], "groups": [1, 5]}, ...},
     "local": {"1": ["198.18.1.10", ...]},         # this domain's receivers per group
     "links": {"64501>64502": ["<hex link ID, seed 0>", ...], ...}}  # LIPSIN link IDs

Link IDs are assigned here, by the PSP (LIPSIN's topology manager), with
:func:`.bloom.link_mask`: the sandboxed service has no hash functions, and a site only needs
the IDs of the links it may use (its out-links and the links of its paths).

Keys of JSON objects are strings; :func:`parse_routes` turns them back into ints.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from itertools import pairwise
from typing import Any

from .bloom import DEFAULT_K, N_SEEDS, link_mask

__all__ = ["best_paths", "members_of", "parse_routes", "site_table"]


def best_paths(adjacency: Mapping[int, Iterable[int]], root: int) -> dict[int, list[int]]:
    """Shortest AS paths from ``root`` (BGP AS_PATH order: neighbour first, origin last)."""
    parent: dict[int, int] = {}
    seen = {root}
    queue = deque([root])
    while queue:
        u = queue.popleft()
        for v in sorted(adjacency.get(u, ())):
            if v not in seen:
                seen.add(v)
                parent[v] = u
                queue.append(v)
    paths: dict[int, list[int]] = {}
    for dest in parent:
        path = [dest]
        while parent[path[-1]] != root:
            path.append(parent[path[-1]])
        paths[dest] = path[::-1]
    return paths


def site_table(
    *,
    asn: int,
    adjacency: Mapping[int, Iterable[int]],
    site_of: Mapping[int, str],
    receivers: Mapping[int, Mapping[int, Iterable[str]]],
    version: int,
) -> dict[str, Any]:
    """The FIS value for the site of ``asn``.

    ``site_of``: AS -> public address of its multicast site; ``receivers``: AS -> group ->
    receiver addresses in that AS (an AS advertises a group iff it has a receiver for it).
    """
    groups_of = {
        a: sorted(g for g, hosts in gs.items() if list(hosts)) for a, gs in receivers.items()
    }
    paths = best_paths(adjacency, asn)
    routes = {
        str(dest): {"path": path, "groups": groups_of.get(dest, [])}
        for dest, path in sorted(paths.items())
    }
    known = {(asn, n) for n in adjacency.get(asn, ())}
    for path in paths.values():
        known.update(pairwise([asn, *path]))
    links = {
        f"{u}>{v}": [f"{link_mask(u, v, seed=s, k=DEFAULT_K):064x}" for s in range(N_SEEDS)]
        for u, v in sorted(known)
    }
    return {
        "version": version,
        "as": asn,
        "neighbours": {str(n): site_of[n] for n in sorted(adjacency.get(asn, ())) if n in site_of},
        "routes": routes,
        "local": {
            str(g): sorted(hosts) for g, hosts in sorted(receivers.get(asn, {}).items()) if hosts
        },
        "links": links,
    }


def parse_routes(table: Mapping[str, Any]) -> tuple[dict[int, list[int]], dict[int, set[int]]]:
    """(rib: dest AS -> path, groups: group -> member ASes) from a site table's routes."""
    rib: dict[int, list[int]] = {}
    groups: dict[int, set[int]] = {}
    for dest, entry in table["routes"].items():
        d = int(dest)
        rib[d] = [int(a) for a in entry["path"]]
        for g in entry["groups"]:
            groups.setdefault(int(g), set()).add(d)
    for g in table.get("local", {}):
        groups.setdefault(int(g), set()).add(int(table["as"]))
    return rib, groups


def members_of(table: Mapping[str, Any], group: int) -> set[int]:
    """Member ASes of ``group`` as this site's table advertises them (FRM's table scan)."""
    return parse_routes(table)[1].get(group, set())
