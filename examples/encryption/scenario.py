"""The encryption example's simulated network (``pcsite_lite.sim``), for tests and the demo.

The network is the namespace demo's, from the same file (``chain.toml``)::

    S (mobile) -- R1[C1: encrypt] --2ms-- RC --2ms-- R2[C2: decrypt] -- D

:func:`build_world` deploys the service at C1 and C2 and opens M's circuit; :func:`send`
pushes payloads through it and returns what D received.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pcdemo.example_testbed import SimSite, sim_network
from pcsite_lite.sim import Host, Link, Network, SiteNode
from pcsock.wire import parse

from .circuit import Chain
from .control import EncryptionPSP

__all__ = ["PSP", "World", "build_world", "send"]

PSP = "vpnco"
TOPOLOGY = Path(__file__).with_name("chain.toml")


@dataclass
class World:
    net: Network
    psp: EncryptionPSP
    chain: Chain
    mobile: Host
    dest: Host
    sites: dict[str, SiteNode]
    core: Link  #: RC -- R2, where the ciphertext travels


def build_world(topology: Path = TOPOLOGY) -> World:
    sn = sim_network(topology)
    sites = {n: sn.nodes[n] for n in ("C1", "C2")}
    psp = EncryptionPSP(SimSite(sites["C1"], PSP), SimSite(sites["C2"], PSP))
    psp.deploy()
    d = sn.nodes["D"]
    chain = psp.connect(d.ip)
    return World(sn.net, psp, chain, sn.nodes["S"], d, sites, sn.links["RC", "R2"])


def send(w: World, payloads: list[bytes]) -> list[bytes]:
    """Send ``payloads`` from M through the circuit; the payloads D received, in order."""
    before = len(w.dest.inbox)
    for p in payloads:
        w.mobile.send(w.chain.packet(w.mobile.ip, p))
    w.net.run()
    return [bytes(parse(r.data).payload) for r in w.dest.inbox[before:]]
