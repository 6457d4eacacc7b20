"""Multi-machine sites in a testbed: an LB namespace, compute-node namespaces, a bridge.

A site node with ``nodes = N`` (N > 1) keeps its namespace -- the **load balancer**: its link
to the router, its public IP -- and gets N more, ``<site>_n1`` .. ``<site>_nN``, the
**compute nodes**. They meet on an internal network: a bridge ``int0`` in the LB's namespace
with one veth port per node; each node's end is ``int0`` too. Addresses come from
:data:`INTERNAL_POOL`, one /24 per site: the LB is ``.1``, node ``i`` is ``.(i+1)``; each node's
default route goes through the LB (what a node forwards leaves through the site's one
public address). Pure planning here; :class:`testbed.net.Testbed` builds it.

``fail`` and ``recover`` cut and restore a node's internal link (and the Testbed API can
also kill the node's processes), for failure tests and demos.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass

from testbed.topology import Topology

__all__ = ["INTERNAL_DEV", "INTERNAL_POOL", "ClusterPlan", "MemberPlan", "plan", "set_link"]

#: the internal networks: 198.19.128.0/24, 198.19.129.0/24, ... (one per multi-node site)
INTERNAL_POOL = ipaddress.IPv4Network("198.19.128.0/17")
INTERNAL_DEV = "int0"


@dataclass(frozen=True)
class MemberPlan:
    name: str  #: testbed node name, ``<site>_n<i>``
    index: int  #: 1..N
    address: str  #: on the internal network
    port: str  #: its bridge port in the LB namespace


@dataclass(frozen=True)
class ClusterPlan:
    site: str  #: the site node (the LB's namespace)
    subnet: ipaddress.IPv4Network
    lb_address: str
    members: tuple[MemberPlan, ...]
    fis_replicas: int

    def summary(self) -> dict[str, object]:
        return {
            "lb": self.site, "internal": str(self.subnet), "lb_address": self.lb_address,
            "fis_replicas": self.fis_replicas,
            "nodes": [{"name": m.name, "address": m.address} for m in self.members],
        }  # fmt: skip


def plan(topo: Topology) -> dict[str, ClusterPlan]:
    """The clusters of ``topo``'s sites with ``nodes > 1``, by site name."""
    out: dict[str, ClusterPlan] = {}
    subnets = INTERNAL_POOL.subnets(new_prefix=24)
    for spec in topo.of_kind("site"):
        if spec.nodes <= 1:
            continue
        net = next(subnets)
        hosts = list(net.hosts())
        members = tuple(
            MemberPlan(f"{spec.name}_n{i}", i, str(hosts[i]), f"ci{i}")
            for i in range(1, spec.nodes + 1)
        )
        out[spec.name] = ClusterPlan(spec.name, net, str(hosts[0]), members, spec.fis_replicas)
    return out


def _ip(ns: str, *args: str) -> None:
    proc = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip -n {ns} {' '.join(args)}: {proc.stderr.strip()}")


def build(cp: ClusterPlan, ns_of: dict[str, str]) -> None:
    """Create the bridge, the veth pairs, addresses and routes (namespaces exist)."""
    lb = ns_of[cp.site]
    _ip(lb, "link", "add", INTERNAL_DEV, "type", "bridge")
    _ip(lb, "addr", "add", f"{cp.lb_address}/{cp.subnet.prefixlen}", "dev", INTERNAL_DEV)
    _ip(lb, "link", "set", INTERNAL_DEV, "up")
    for m in cp.members:
        node = ns_of[m.name]
        _ip(lb, "link", "add", m.port, "type", "veth", "peer", "name", INTERNAL_DEV, "netns", node)
        _ip(lb, "link", "set", m.port, "master", INTERNAL_DEV, "up")
        _ip(node, "link", "set", "lo", "up")
        _ip(node, "addr", "add", f"{m.address}/{cp.subnet.prefixlen}", "dev", INTERNAL_DEV)
        _ip(node, "link", "set", INTERNAL_DEV, "up")
        _ip(node, "route", "add", "default", "via", cp.lb_address, "dev", INTERNAL_DEV)


def set_link(ns: str, up: bool, gateway: str) -> None:
    """Cut (``up=False``) or restore a compute node's internal link; restoring also puts
    back its default route through the LB at ``gateway`` (the kernel drops it at link down)."""
    _ip(ns, "link", "set", INTERNAL_DEV, "up" if up else "down")
    if up:
        _ip(ns, "route", "replace", "default", "via", gateway, "dev", INTERNAL_DEV)
