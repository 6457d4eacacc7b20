"""The address and routing plan of a topology: pure computation, no I/O.

Given a :class:`~testbed.topology.Topology`, decide every interface name, index and address,
the control-network addresses, the sites' public IPs and each node's static routes (shortest
paths, transit through routers only). Routes towards the same next hop are aggregated with
``ipaddress.collapse_addresses`` (exactly the same address set, fewer entries), so a line of 200
routers needs a handful of routes per router instead of hundreds.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field

from testbed.topology import TESTBED_SPACE, LinkSpec, Topology

__all__ = ["CTL_BRIDGE", "CTL_IFACE", "IfacePlan", "LinkPlan", "NodePlan", "Plan", "Route", "make"]

IF_BASE = 100  #: data interface k of a node is eth<k> with ifindex IF_BASE + k
CTL_IFACE = "ctl0"
CTL_INDEX = 99
CTL_BRIDGE = "br0"
CTL_BRIDGE_INDEX = 2
SITE_POOL = ipaddress.IPv4Network("198.18.254.0/24")
LINK_POOL = ipaddress.IPv4Network("198.18.0.0/16")


@dataclass
class IfacePlan:
    name: str
    index: int
    address: str
    prefixlen: int
    link: str  # link name, or "control"
    peer: str  # node at the other end ("" for the control bridge)
    peer_address: str = ""


@dataclass(frozen=True)
class Route:
    dst: str
    gateway: str
    oif: int
    src: str | None = None


@dataclass
class NodePlan:
    name: str
    kind: str
    ifaces: list[IfacePlan] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    control: IfacePlan | None = None
    public_ip: str | None = None  # sites

    @property
    def forwards(self) -> bool:
        return self.kind == "router"

    def iface_to(self, peer: str) -> IfacePlan | None:
        return next((i for i in self.ifaces if i.peer == peer), None)

    @property
    def address(self) -> str | None:
        """The node's main data address (a site's public IP, else its first interface's)."""
        if self.public_ip:
            return self.public_ip
        return self.ifaces[0].address if self.ifaces else None


@dataclass
class LinkPlan:
    spec: LinkSpec
    subnet: ipaddress.IPv4Network
    a_if: IfacePlan
    b_if: IfacePlan


@dataclass
class Plan:
    nodes: dict[str, NodePlan]
    links: list[LinkPlan]
    control_subnet: ipaddress.IPv4Network
    control_ports: list[tuple[str, str, int]]  # (node, port name in the control ns, ifindex)


def _allocator(used: list[ipaddress.IPv4Network], pool: ipaddress.IPv4Network, prefixlen: int):
    for net in pool.subnets(new_prefix=prefixlen):
        if not any(net.overlaps(u) for u in used):
            used.append(net)
            yield net
    raise ValueError(f"address pool {pool} exhausted")


def site_link(site: NodePlan, router: NodePlan) -> tuple[IfacePlan, IfacePlan]:
    """Both ends of a site's link to its router: (the site's interface, the router's)."""
    mine, theirs = site.iface_to(router.name), router.iface_to(site.name)
    if mine is None or theirs is None or site.public_ip is None:
        raise ValueError(f"site {site.name} is not linked to router {router.name}")
    return mine, theirs


def make(topo: Topology) -> Plan:
    """Compute the plan of ``topo``."""
    used: list[ipaddress.IPv4Network] = [topo.control_subnet]
    used += [lk.subnet for lk in topo.links if lk.subnet is not None]
    used += [ipaddress.IPv4Network(n.public_ip) for n in topo.nodes.values() if n.public_ip]
    link_nets = _allocator(used, LINK_POOL, 30)
    site_ips = _allocator(used, SITE_POOL, 32)
    nodes = {name: NodePlan(name, spec.kind) for name, spec in topo.nodes.items()}
    for spec in topo.of_kind("site"):
        ip = spec.public_ip or next(site_ips).network_address
        nodes[spec.name].public_ip = str(ip)

    links: list[LinkPlan] = []
    for lk in topo.links:
        subnet = lk.subnet or next(link_nets)
        hosts = subnet.hosts()
        first, second = str(next(hosts)), str(next(hosts))
        # the router side takes the first address (the gateway a host expects)
        a_first = not (topo.nodes[lk.b].kind == "router" and topo.nodes[lk.a].kind != "router")
        a_addr, b_addr = (first, second) if a_first else (second, first)
        ifs = []
        for me, peer, addr, paddr in ((lk.a, lk.b, a_addr, b_addr), (lk.b, lk.a, b_addr, a_addr)):
            k = len(nodes[me].ifaces)
            iface = IfacePlan(f"eth{k}", IF_BASE + k, addr, subnet.prefixlen, lk.name, peer, paddr)
            nodes[me].ifaces.append(iface)
            ifs.append(iface)
        links.append(LinkPlan(lk, subnet, ifs[0], ifs[1]))

    ports: list[tuple[str, str, int]] = []
    ctl_hosts = topo.control_subnet.hosts()
    for n, spec in enumerate(topo.nodes.values()):
        if not spec.control:
            continue
        try:
            addr = str(next(ctl_hosts))
        except StopIteration:
            raise ValueError(f"control subnet {topo.control_subnet} too small") from None
        nodes[spec.name].control = IfacePlan(
            CTL_IFACE, CTL_INDEX, addr, topo.control_subnet.prefixlen, "control", ""
        )
        ports.append((spec.name, f"p{n}", IF_BASE + n))

    # destinations: link subnets (owned by both ends) and site public IPs
    owners: list[tuple[ipaddress.IPv4Network, tuple[str, ...]]] = [
        (lp.subnet, (lp.spec.a, lp.spec.b)) for lp in links
    ]
    owners += [
        (ipaddress.IPv4Network(p.public_ip), (p.name,)) for p in nodes.values() if p.public_ip
    ]
    adj: dict[str, list[str]] = {name: [] for name in nodes}
    for lp in links:
        adj[lp.spec.a].append(lp.spec.b)
        adj[lp.spec.b].append(lp.spec.a)

    for me, plan in nodes.items():
        if not plan.ifaces:
            continue
        if plan.kind != "router" and len(plan.ifaces) == 1:
            iface = plan.ifaces[0]
            plan.routes.append(
                Route(str(TESTBED_SPACE), iface.peer_address, iface.index, plan.public_ip)
            )
            continue
        first_hop = _first_hops(me, adj, nodes)
        local = {
            ipaddress.IPv4Network(f"{i.address}/{i.prefixlen}", strict=False) for i in plan.ifaces
        }
        by_hop: dict[str, list[ipaddress.IPv4Network]] = {}
        for net, ends in owners:
            if net in local or me in ends:
                continue
            best = min(
                (first_hop[e] for e in ends if e in first_hop), key=lambda x: x[0], default=None
            )
            if best is None:
                continue
            by_hop.setdefault(best[1], []).append(net)
        for hop, nets in by_hop.items():
            via = plan.iface_to(hop)
            assert via is not None
            for net in ipaddress.collapse_addresses(nets):
                plan.routes.append(Route(str(net), via.peer_address, via.index, plan.public_ip))
    return Plan(nodes, links, topo.control_subnet, ports)


def _first_hops(
    src: str, adj: dict[str, list[str]], nodes: dict[str, NodePlan]
) -> dict[str, tuple[int, str]]:
    """BFS from ``src`` transiting routers only: node -> (distance, first hop)."""
    out: dict[str, tuple[int, str]] = {}
    queue: deque[tuple[str, int, str]] = deque()
    for nb in adj[src]:
        if nb not in out:
            out[nb] = (1, nb)
            queue.append((nb, 1, nb))
    while queue:
        node, dist, hop = queue.popleft()
        if nodes[node].kind != "router":
            continue
        for nb in adj[node]:
            if nb != src and nb not in out:
                out[nb] = (dist + 1, hop)
                queue.append((nb, dist + 1, hop))
    return out


def forward_path(plan: Plan, src: str, dst: str, limit: int = 256) -> list[str]:
    """The nodes a packet from ``src`` to ``dst`` crosses, both ends included.

    The same choice the static routes make (each node forwards to its own shortest-path first
    hop, transiting routers only), so a drawing of a path shows where packets really go.
    Raises ``ValueError`` if ``dst`` cannot be reached from ``src``.
    """
    for name in (src, dst):
        if name not in plan.nodes:
            raise ValueError(f"no node {name!r}")
    adj: dict[str, list[str]] = {name: [] for name in plan.nodes}
    for lp in plan.links:
        adj[lp.spec.a].append(lp.spec.b)
        adj[lp.spec.b].append(lp.spec.a)
    path = [src]
    while path[-1] != dst:
        hop = _first_hops(path[-1], adj, plan.nodes).get(dst)
        if hop is None or len(path) > limit:
            raise ValueError(f"no route from {src} to {dst}")
        path.append(hop[1])
    return path
