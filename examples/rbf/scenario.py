"""The RBF example's simulated network (``pcsite_lite.sim``), for tests and the demo.

::

    S -- R1[C1] --5ms-- R2[C2] --5ms-- R3 -- D

S's circuit starts at C1 with two out hops: through C2 (which delivers to D) or straight to D.
The rule -- bound to the circuit's labels or carried in the payload -- chooses, drops, or
marks the packet's metadata. Packets arriving through C2 carry C2's source address.
"""

from __future__ import annotations

from dataclasses import dataclass

from pcdemo.example_testbed import SimSite
from pcsite_lite.sim import Host, Network, SiteNode
from pcsock.wire import parse

from .control import RbfCircuit, RbfPSP, RuleAuthority

__all__ = ["PSP", "World", "build_world", "send"]

PSP = "rbfco"


@dataclass
class World:
    net: Network
    psp: RbfPSP
    authority: RuleAuthority
    circuit: RbfCircuit
    sender: Host
    dest: Host
    sites: dict[str, SiteNode]
    handles: dict[str, SimSite]


def build_world() -> World:
    net = Network(trace=False)
    r1 = net.router("R1", "198.18.1.1")
    r2 = net.router("R2", "198.18.2.1")
    r3 = net.router("R3", "198.18.3.1")
    s = net.host("S", "198.18.1.10")
    d = net.host("D", "198.18.3.10")
    net.link(s, r1)
    net.link(r1, r2, delay=0.005)
    net.link(r2, r3, delay=0.005)
    net.link(r3, d)
    sites = {
        "C1": net.site("C1", "198.18.254.1", router=r1),
        "C2": net.site("C2", "198.18.254.2", router=r2),
    }
    net.compute_routes()
    handles = {k: SimSite(v, PSP) for k, v in sites.items()}
    authority = RuleAuthority()
    psp = RbfPSP(list(handles.values()), authority.public_key)
    psp.deploy()
    circuit = psp.connect(handles["C1"], [handles["C2"]], d.ip)
    return World(net, psp, authority, circuit, s, d, sites, handles)


def send(w: World, payload: bytes) -> list[tuple[str, int, bytes]]:
    """Send one packet from S; (source, metadata, payload) of what D received."""
    before = len(w.dest.inbox)
    w.sender.send(w.circuit.packet(w.sender.ip, payload))
    w.net.run()
    out = []
    for r in w.dest.inbox[before:]:
        p = parse(r.data)
        out.append((r.src, p.metadata, bytes(p.payload)))
    return out
