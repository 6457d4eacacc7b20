"""Multi-machine sites in a testbed: an LB namespace, compute-node namespaces, a bridge.

A site node with ``nodes = N`` (N > 1) keeps its namespace -- the **load balancer**: its link
to the router, its public IP -- and gets N more, ``<site>_n1`` .. ``<site>_nN``, the
**compute nodes**. They meet on an internal network: a bridge ``int0`` in the LB's namespace
with one veth port per node; each node's end is ``int0`` too. Addresses come from
:data:`INTERNAL_POOL`, one /24 per site: the LB is ``.1``, node ``i`` is ``.(i+1)``; each node's
default route goes through the LB (what a node forwards leaves through the site's one
public address). Pure planning here; :class:`testbed.net.Testbed` builds it.

With ``fis_replicas = M`` (M >= 1) the site's FIS is M more machines on the same internal
network, ``<site>_f1`` .. ``<site>_fM`` at ``.201`` .. ``.(200+M)``: ``f1`` starts as the
Redis primary, the others as its replicas, and each runs a Sentinel (quorum: a majority), so
"the FIS is essentially a distributed database formed by several machines" (paper §2.3).
:class:`testbed.net.Testbed` starts them (:func:`redis_conf`, :func:`sentinel_conf`).

``fail`` and ``recover`` cut and restore a node's internal link (and the Testbed API can
also kill the node's processes), for failure tests and demos.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass

from testbed.topology import Topology

__all__ = [
    "FIS_PRIMARY", "INTERNAL_DEV", "INTERNAL_POOL", "SENTINEL_PORT", "ClusterPlan", "MemberPlan",
    "plan", "redis_conf", "sentinel_conf", "sentinel_url", "set_link",
]  # fmt: skip

#: the internal networks: 198.19.128.0/24, 198.19.129.0/24, ... (one per multi-node site)
INTERNAL_POOL = ipaddress.IPv4Network("198.19.128.0/17")
INTERNAL_DEV = "int0"
FIS_HOST_BASE = 200  #: FIS machine ``j`` of a site is ``.(200 + j)`` on its internal network
FIS_PRIMARY = "pcfis"  #: the name the Sentinels monitor the primary under
SENTINEL_PORT = 26379
DOWN_AFTER_MS = 1000  #: Sentinel's failure detection time (the larger part of a failover)


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
    fis: tuple[MemberPlan, ...] = ()  #: the FIS machines (``fis[0]`` starts as the primary)

    def summary(self) -> dict[str, object]:
        return {
            "lb": self.site, "internal": str(self.subnet), "lb_address": self.lb_address,
            "fis_replicas": self.fis_replicas,
            "nodes": [{"name": m.name, "address": m.address} for m in self.members],
            "fis": [{"name": m.name, "address": m.address} for m in self.fis],
            "fis_url": sentinel_url(self) if self.fis else None,  # without credentials
        }  # fmt: skip

    def machines(self) -> tuple[MemberPlan, ...]:
        """Every namespace on the internal network but the LB's: compute nodes, FIS."""
        return self.members + self.fis

    def member(self, name: str) -> MemberPlan | None:
        return next((m for m in self.machines() if m.name == name), None)


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
        fis = tuple(
            MemberPlan(f"{spec.name}_f{j}", j, str(hosts[FIS_HOST_BASE + j - 1]), f"cf{j}")
            for j in range(1, spec.fis_replicas + 1)
        )
        out[spec.name] = ClusterPlan(spec.name, net, str(hosts[0]), members, spec.fis_replicas,
                                     fis)  # fmt: skip
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
    for m in cp.machines():
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


def redis_conf(m: MemberPlan, rundir: str, acl: str, primary: MemberPlan | None,
               replica_password: str) -> str:  # fmt: skip
    """``redis-server`` configuration of FIS machine ``m`` (a replica of ``primary`` unless
    None). A file, not arguments: Sentinel rewrites it (``CONFIG REWRITE``) when it changes
    the machine's role, so a restarted machine comes back as what Sentinel last made it.
    Every acknowledged write is in the append-only file, fsynced (as the one-Redis FIS)."""
    lines = [
        f"bind {m.address}", "port 6379", f"dir {rundir}", f"aclfile {acl}", 'save ""',
        "appendonly yes", "appendfsync always", "protected-mode no", "daemonize no",
        "repl-diskless-sync yes", "repl-diskless-sync-delay 0",
        "masteruser replica", f"masterauth {replica_password}",
    ]  # fmt: skip
    if primary is not None:
        lines.append(f"replicaof {primary.address} 6379")
    return "\n".join(lines) + "\n"


def sentinel_conf(m: MemberPlan, rundir: str, primary: MemberPlan, quorum: int,
                  sentinel_password: str, replicas: int) -> str:  # fmt: skip
    """``redis-sentinel`` configuration of FIS machine ``m``, watching ``primary``."""
    name = FIS_PRIMARY
    return "\n".join([
        f"bind {m.address}", f"port {SENTINEL_PORT}", f"dir {rundir}", "protected-mode no",
        f"sentinel monitor {name} {primary.address} 6379 {quorum}",
        f"sentinel auth-user {name} sentinel", f"sentinel auth-pass {name} {sentinel_password}",
        f"sentinel down-after-milliseconds {name} {DOWN_AFTER_MS}",
        f"sentinel failover-timeout {name} 5000",
        f"sentinel parallel-syncs {name} {max(1, replicas)}",
    ]) + "\n"  # fmt: skip


def sentinel_url(cp: ClusterPlan, user: str | None = None, password: str | None = None) -> str:
    """The site's FIS URL: its primary found through every FIS machine's Sentinel; a write
    is acknowledged once every attached replica (and at least one, if there are any) has it
    (``docs/cluster-fis.md``)."""
    hosts = ",".join(f"{m.address}:{SENTINEL_PORT}" for m in cp.fis)
    wait = 1 if len(cp.fis) > 1 else 0
    auth = f"{user}:{password}@" if user and password else ""
    return f"redis+sentinel://{auth}{hosts}/{FIS_PRIMARY}?wait={wait}&wait_ms=1000"
