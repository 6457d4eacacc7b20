"""The redundancy example's simulated network (``pcsite_lite.sim``), for tests and benchmarks.

::

    S -- R1[C1: encode] --20ms-- Rcore --20ms-- R2[C2: decode] -- D
              \\_____________ one FIS (the packet store) _____________/

C1 and C2 each keep their own node-local ``CachedFIS`` over one shared engine, as two sites of
a pair would over the FIS's shared store.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from examples.encryption.circuit import Chain
from pcdemo.example_testbed import SimSite
from pcsite_lite.fis import CachedFIS, SqliteFIS
from pcsite_lite.sim import Host, Link, Network, SiteNode
from pcsock.wire import parse

from .control import RedundancyPSP

__all__ = ["PSP", "World", "build_world", "send"]

PSP = "isp-re"


@dataclass
class World:
    net: Network
    psp: RedundancyPSP
    chain: Chain
    sender: Host
    dest: Host
    sites: dict[str, SiteNode]
    core: Link  #: Rcore -> R2, between the two sites
    fis: Any  #: the shared engine
    core_payload_bytes: list[int]  #: shim payload bytes of every frame on the core link


def build_world(*, staleness: float = 0.005) -> World:
    """The sites' per-packet budget is the simulator's tick budget (a verdict never depends on
    machine load); the testbed's site processes keep a wall-clock deadline (``demo.py``)."""
    net = Network(trace=False)
    engine = SqliteFIS(":memory:")

    def fis() -> CachedFIS:
        return CachedFIS(engine, clock=lambda: net.now, staleness=staleness)

    r1 = net.router("R1", "198.18.1.1")
    rc = net.router("Rcore", "198.18.0.1")
    r2 = net.router("R2", "198.18.2.1")
    s = net.host("S", "198.18.1.10")
    d = net.host("D", "198.18.2.10")
    net.link(s, r1)
    net.link(r1, rc, delay=0.020)
    core = net.link(rc, r2, delay=0.020)
    net.link(r2, d)
    sites = {
        name: net.site(name, ip, router=r, fis=fis())
        for name, ip, r in (("C1", "198.18.254.1", r1), ("C2", "198.18.254.2", r2))
    }
    net.compute_routes()
    psp = RedundancyPSP(SimSite(sites["C1"], PSP), SimSite(sites["C2"], PSP))
    psp.deploy()
    chain = psp.connect(d.ip)
    sizes: list[int] = []
    orig = core.transmit

    def transmit(sender: Any, data: bytes) -> None:
        sizes.append(len(parse(data).payload))
        orig(sender, data)

    core.transmit = transmit  # type: ignore[method-assign]
    return World(net, psp, chain, s, d, sites, core, engine, sizes)


def send(w: World, payloads: list[bytes], *, interval: float = 0.001) -> list[bytes]:
    """Send ``payloads`` from S, one every ``interval``; the payloads D received, in order."""
    before = len(w.dest.inbox)
    for i, p in enumerate(payloads):
        pkt = w.chain.packet(w.sender.ip, p)
        w.net.schedule(i * interval, functools.partial(w.sender.send, pkt))
    w.net.run()
    return [bytes(parse(r.data).payload) for r in w.dest.inbox[before:]]
