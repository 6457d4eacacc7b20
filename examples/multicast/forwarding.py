"""One site's multicast forwarding decision (pure): what the service does with one packet.

:func:`plan` takes the packet's payload (what follows the PacketCloud shim), the group, this
site's BGP-like table from the FIS (:mod:`.bgp`) and a node-local cache, and returns a
:class:`Plan`: the copies to send to neighbour sites (payload with the multicast header,
upstream rewritten to this AS) and the copies to deliver to this domain's receivers (original
payload, header removed: "the packet will be updated to an ordinary multicast packet").

At the sender's first site (``has_header=False``) the tree is computed from the table
(:func:`.tree.compute_tree`) and encoded (:func:`.tree.encode_tree`) once per (group, table
version): the result lives in the node-local cache and :attr:`Plan.computed` says whether this
packet paid for a computation. A join or leave bumps the table version, so the next packet
computes the new tree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from .bgp import parse_routes
from .bloom import ZFilter
from .header import HeaderError, MulticastHeader
from .tree import adjacency_from_links, compute_tree, encode_tree, out_links

__all__ = ["Plan", "cache_key", "plan"]


@dataclass(slots=True)
class Plan:
    """Copies to send: ``to_sites`` (site address, payload) and ``to_hosts`` (host, payload)."""

    to_sites: list[tuple[str, bytes]] = field(default_factory=list)
    to_hosts: list[tuple[str, bytes]] = field(default_factory=list)
    drop: str | None = None  #: a reason when the packet cannot be handled at all
    computed: bool = False  #: this packet triggered a tree computation (cache miss)


def cache_key(group: int, version: int) -> str:
    return f"mc-tree:{group}:{version}"


def _known_links(table: Mapping[str, Any]) -> list[tuple[int, int]]:
    links: list[tuple[int, int]] = []
    here = int(table["as"])
    for n in table["neighbours"]:
        links.append((here, int(n)))
    for entry in table["routes"].values():
        path = [here, *(int(a) for a in entry["path"])]
        links.extend(pairwise(path))
    return links


def _encode(group: int, table: Mapping[str, Any]) -> tuple[int, bytes]:
    here = int(table["as"])
    rib, groups = parse_routes(table)
    tree = compute_tree(here, rib, groups.get(group, set()))
    enc = encode_tree(tree, adjacency_from_links(_known_links(table)))
    return enc.seed, enc.zfilter.to_bytes()


def plan(
    payload: bytes,
    *,
    group: int,
    has_header: bool,
    table: Mapping[str, Any] | None,
    cache_get: Callable[[str], Any],
    cache_put: Callable[[str, Any], None],
) -> Plan:
    """Decide the copies of one packet at this site (see the module docstring)."""
    out = Plan()
    if table is None:
        out.drop = "mc_no_table"
        return out
    here = int(table["as"])
    if has_header:
        try:
            hdr, data = MulticastHeader.decode(payload)
        except HeaderError as exc:
            out.drop = exc.reason
            return out
        upstream: int | None = hdr.upstream
        group = hdr.group
    else:
        key = cache_key(group, int(table["version"]))
        cached = cache_get(key)
        if cached is None:
            cached = _encode(group, table)
            cache_put(key, cached)
            out.computed = True
        seed, zf = cached
        hdr = MulticastHeader(seed=seed, group=group, upstream=here, zfilter=zf)
        data = payload
        upstream = None
    neighbours = {int(n): addr for n, addr in table["neighbours"].items()}
    zfilter = ZFilter.from_bytes(hdr.zfilter)
    fwd = MulticastHeader(seed=hdr.seed, group=hdr.group, upstream=here, zfilter=hdr.zfilter)
    fwd_payload = fwd.encode() + data
    for v in out_links(here, neighbours, zfilter, seed=hdr.seed, upstream=upstream):
        out.to_sites.append((neighbours[v], fwd_payload))
    for host in table.get("local", {}).get(str(group), ()):
        out.to_hosts.append((host, data))
    return out
