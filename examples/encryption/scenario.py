"""The chain examples' simulated network (``pcsite_lite.sim``), for tests and the demos.

The network is the namespace demo's, from the same file (``chain.toml``)::

    S -- R1[C1] --2ms-- RC --2ms-- R2[C2] -- D

:func:`chain_net` builds it (:class:`ChainNet`: the sender S, the receiver D, the sites C1 and
C2, the core link RC -- R2); the encryption, redundancy and rule-based forwarding examples
run their services on it. For encryption, :func:`build_world` deploys the service at C1
(encrypt) and C2 (decrypt) and opens S's circuit; :func:`send` pushes payloads through it and
returns what D received.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcdemo.example_testbed import SimSite, sim_network
from pcsite_lite.sim import Host, Link, Network, SiteNode
from pcsock.wire import parse

from .circuit import Chain
from .control import EncryptionPSP

__all__ = ["PSP", "TOPOLOGY", "ChainNet", "World", "build_world", "chain_net", "send"]

PSP = "vpnco"
TOPOLOGY = Path(__file__).with_name("chain.toml")


@dataclass
class ChainNet:
    """``chain.toml`` in the simulator."""

    net: Network
    sender: Host  #: S
    dest: Host  #: D
    sites: dict[str, SiteNode]  #: C1 and C2
    core: Link  #: RC -- R2, between the two sites


def chain_net(topology: Path = TOPOLOGY, **site_kwargs: Any) -> ChainNet:
    """The chain in the simulator; ``site_kwargs``: ``sim_network``'s (e.g. the sites' FIS)."""
    sn = sim_network(topology, **site_kwargs)
    sites = {n: sn.nodes[n] for n in ("C1", "C2")}
    return ChainNet(sn.net, sn.nodes["S"], sn.nodes["D"], sites, sn.links["RC", "R2"])


@dataclass
class World(ChainNet):
    psp: EncryptionPSP
    chain: Chain


def build_world(topology: Path = TOPOLOGY) -> World:
    cn = chain_net(topology)
    psp = EncryptionPSP(SimSite(cn.sites["C1"], PSP), SimSite(cn.sites["C2"], PSP))
    psp.deploy()
    return World(**vars(cn), psp=psp, chain=psp.connect(cn.dest.ip))


def send(w: World, payloads: list[bytes]) -> list[bytes]:
    """Send ``payloads`` from S through the circuit; the payloads D received, in order."""
    before = len(w.dest.inbox)
    for p in payloads:
        w.sender.send(w.chain.packet(w.sender.ip, p))
    w.net.run()
    return [bytes(parse(r.data).payload) for r in w.dest.inbox[before:]]
