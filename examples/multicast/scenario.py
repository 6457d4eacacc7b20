"""The multicast example's domains, read from its topology file, and its simulated network.

The topology is the namespace demo's (``testbed/topologies/multidomain.toml``, or the user's
own with ``--topology FILE``); the simulator and the testbed read the same file:

* a **domain** (:class:`Domain`) is a site, the router it sits on (the domain's border
  router) and the hosts linked to that router; domains get AS numbers 64501, 64502, ... in the
  order their sites stand in the file (:func:`domains`);
* the **inter-domain links** are the links between two domains' routers (:func:`as_links`).

:class:`Plan` is the demo written once for both worlds (who sends, who joins, the change
after the first packets, the figures); :func:`build_world` builds the topology in
``pcsite_lite.sim`` (the addresses the testbed gives the same nodes) with the PSP over every
domain's site and the members joined.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcdemo.example_testbed import (
    Needs,
    SimSite,
    TopologyLacks,
    addresses,
    load_topology,
    sim_network,
    tap,
)
from pcsite_lite.sim import Host, Network

from .control import MulticastPSP
from .tree import adjacency_from_links

__all__ = [
    "GROUP",
    "NEEDS",
    "PSP",
    "SENDER",
    "TOPOLOGY",
    "Domain",
    "Plan",
    "World",
    "as_links",
    "build_world",
    "domains",
]

TOPOLOGY = Path(__file__).resolve().parents[2] / "testbed" / "topologies" / "multidomain.toml"
PSP = "mcpsp"
FIRST_ASN = 64501


@dataclass(frozen=True)
class Domain:
    """One AS of the topology: its site, its border router and the hosts behind it."""

    asn: int
    site: str
    router: str
    hosts: tuple[str, ...]


def domains(topo: Any) -> dict[int, Domain]:
    """The topology's domains by AS number (64501, ... in the order of the sites)."""
    out: dict[int, Domain] = {}
    for name, spec in topo.nodes.items():
        if spec.kind != "site":
            continue
        hosts = tuple(
            other
            for lk in topo.links
            for end, other in ((lk.a, lk.b), (lk.b, lk.a))
            if end == spec.router and topo.nodes[other].kind == "host"
        )
        asn = FIRST_ASN + len(out)
        out[asn] = Domain(asn, name, spec.router, hosts)
    if len(out) < 2:
        raise TopologyLacks("the multicast example needs at least two sites (domains)")
    return out


def as_links(topo: Any, doms: dict[int, Domain]) -> list[tuple[int, int]]:
    """The inter-domain links: each link between two domains' routers, as (AS, AS)."""
    asn = {d.router: a for a, d in doms.items()}
    return [(asn[lk.a], asn[lk.b]) for lk in topo.links if lk.a in asn and lk.b in asn]


GROUP = 7
#: three domains in a ring (border routers RA, RB, RC), a site per domain, two receivers each
#: (A1, A2, ...), the sender SA in domain A
NEEDS = Needs(
    hosts=("SA", "A1", "A2", "B1", "B2", "C1", "C2"),
    routers=("RA", "RB", "RC"),
    sites=("CA", "CB", "CC"),
    links=(("RA", "RB"), ("RA", "RC"), ("RB", "RC")),
)
SENDER = "SA"
MEMBERS = ("A1", "B1", "B2", "C1")
#: after the first packets: C1 leaves, C2 joins
LEAVE, JOIN = "C1", "C2"


class Plan:
    """The demo on a topology: its domains, inter-domain links and addresses (the same in
    the testbed and in the simulator)."""

    def __init__(self, topo: Any) -> None:
        self.domains = domains(topo)
        self.links = as_links(topo, self.domains)
        self.address = addresses(topo)
        self.asn = {h: a for a, d in self.domains.items() for h in d.hosts}
        #: directed router pairs of the inter-domain links (``("RA", "RB")``)
        self.router_pairs = [
            (x, y)
            for a, b in self.links
            for x, y in (
                (self.domains[a].router, self.domains[b].router),
                (self.domains[b].router, self.domains[a].router),
            )
        ]

    def receivers(self) -> list[str]:
        return [h for d in self.domains.values() for h in d.hosts if h != SENDER]

    def psp(self, sites: dict[int, Any]) -> MulticastPSP:
        """The PSP over ``sites`` (AS -> site handle), the service deployed, the members
        joined; the receivers' out hops installed up front (a join is an FIS update)."""
        allowed: dict[int, list[str]] = {}
        for h in self.receivers():
            allowed.setdefault(self.asn[h], []).append(self.address[h])
        psp = MulticastPSP(adjacency_from_links(self.links), sites, allowed=allowed)
        psp.deploy()
        psp.add_group(GROUP)
        for h in MEMBERS:
            psp.join(self.asn[h], GROUP, self.address[h])
        return psp

    def packet(self, psp: MulticastPSP, payload: bytes) -> bytes:
        """The sender's packet with ``payload`` (form 1 to its domain's site)."""
        a = self.asn[SENDER]
        return psp.sender_packet(a, GROUP, src=self.address[SENDER], payload=payload)

    def change(self, psp: MulticastPSP) -> None:
        psp.leave(self.asn[LEAVE], GROUP, self.address[LEAVE])
        psp.join(self.asn[JOIN], GROUP, self.address[JOIN])

    def summary(
        self, n: int, first: dict[str, Counter[bytes]], after: dict[str, Counter[bytes]]
    ) -> dict[str, Any]:
        """The figures from the payloads each receiver (by address) got: ``first``, of the
        ``n`` packets before the change; ``after``, of the one after it."""
        members = [self.address[h] for h in MEMBERS]
        return {
            "sent": n,
            "members": members,
            "copies_per_member": {h: sorted(set(first[h].values())) for h in members},
            "members_with_every_packet_once": sum(
                1 for h in members if len(first[h]) == n and set(first[h].values()) == {1}
            ),
            "non_member_copies": sum(sum(c.values()) for h, c in first.items() if h not in members),
            "after_change_receivers": sorted(h for h, c in after.items() if c),
            "expected_after_change": sorted(
                self.address[h] for h in (*MEMBERS, JOIN) if h != LEAVE
            ),
        }


@dataclass
class World:
    """The demo's topology in the simulator: ``frames`` counts what each inter-domain link
    carried in each direction (``"RA->RB"``), ``logs`` has the sites' service log lines."""

    net: Network
    plan: Plan
    psp: MulticastPSP
    hosts: dict[str, Host]  #: by name
    frames: Counter[str]
    logs: list[str]


def build_world(topology: Path = TOPOLOGY) -> World:
    """The topology in the simulator; the PSP over its sites, the members joined."""
    plan = Plan(load_topology(topology, NEEDS))
    logs: list[str] = []
    sn = sim_network(
        topology, site_kwargs=lambda name, net: {"log_sinks": lambda p, s: logs.append}
    )
    frames: Counter[str] = Counter()
    for a, b in plan.router_pairs[::2]:
        _count_frames(sn.links[a, b], frames)
    psp = plan.psp({a: SimSite(sn.nodes[d.site], PSP) for a, d in plan.domains.items()})
    hosts = {n: sn.nodes[n] for d in plan.domains.values() for n in d.hosts}
    return World(sn.net, plan, psp, hosts, frames, logs)


def _count_frames(link: Any, frames: Counter[str]) -> None:
    def count(sender: Any, _frame: bytes) -> None:
        frames[f"{sender.name}->{link.other(sender).name}"] += 1

    tap(link, count)
