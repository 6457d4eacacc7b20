"""The encryption example's simulated network (``pcsite_lite.sim``), for tests and the demo.

::

    M (mobile) -- R1[C1: encrypt] --20ms-- Rcore --20ms-- R2[C2: decrypt] -- D

:func:`build_world` deploys the service at C1 and C2 and opens M's circuit; :func:`send`
pushes payloads through it and returns what D received.
"""

from __future__ import annotations

from dataclasses import dataclass

from pcdemo.example_testbed import SimSite
from pcsite_lite.sim import Host, Link, Network, SiteNode
from pcsock.wire import parse

from .circuit import Chain
from .control import EncryptionPSP

__all__ = ["PSP", "World", "build_world", "send"]

PSP = "vpnco"


@dataclass
class World:
    net: Network
    psp: EncryptionPSP
    chain: Chain
    mobile: Host
    dest: Host
    sites: dict[str, SiteNode]
    core: Link  #: Rcore -> R2, where the ciphertext travels


def build_world() -> World:
    net = Network(trace=False)
    r1 = net.router("R1", "198.18.1.1")
    rc = net.router("Rcore", "198.18.0.1")
    r2 = net.router("R2", "198.18.2.1")
    m = net.host("M", "198.18.1.10")
    d = net.host("D", "198.18.2.10")
    net.link(m, r1)
    net.link(r1, rc, delay=0.020)
    core = net.link(rc, r2, delay=0.020)
    net.link(r2, d)
    sites = {"C1": net.site("C1", "198.18.254.1", router=r1)}
    sites["C2"] = net.site("C2", "198.18.254.2", router=r2)
    net.compute_routes()
    psp = EncryptionPSP(SimSite(sites["C1"], PSP), SimSite(sites["C2"], PSP))
    psp.deploy()
    chain = psp.connect(d.ip)
    return World(net, psp, chain, m, d, sites, core)


def send(w: World, payloads: list[bytes]) -> list[bytes]:
    """Send ``payloads`` from M through the circuit; the payloads D received, in order."""
    before = len(w.dest.inbox)
    for p in payloads:
        w.mobile.send(w.chain.packet(w.mobile.ip, p))
    w.net.run()
    return [bytes(parse(r.data).payload) for r in w.dest.inbox[before:]]
