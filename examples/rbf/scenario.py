"""The RBF example's simulated network (``pcsite_lite.sim``), for tests and the demo.

The network is the namespace demo's, from the same file (``examples/encryption/chain.toml``)::

    S -- R1[C1] --2ms-- RC --2ms-- R2[C2] -- D

S's circuit starts at C1 with two out hops: through C2 (which delivers to D) or straight to D.
The rule -- bound to the circuit's labels or carried in the payload -- chooses, drops, or
marks the packet's metadata. Packets arriving through C2 carry C2's source address.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from examples.encryption.scenario import TOPOLOGY, ChainNet, chain_net
from pcdemo.example_testbed import SimSite
from pcsock.wire import parse

from .control import RbfCircuit, RbfPSP, RuleAuthority

__all__ = ["PSP", "World", "build_world", "send"]

PSP = "rbfco"


@dataclass
class World(ChainNet):
    psp: RbfPSP
    authority: RuleAuthority
    circuit: RbfCircuit
    handles: dict[str, SimSite]


def build_world(topology: Path = TOPOLOGY) -> World:
    cn = chain_net(topology)
    handles = {k: SimSite(v, PSP) for k, v in cn.sites.items()}
    authority = RuleAuthority()
    psp = RbfPSP(list(handles.values()), authority.public_key)
    psp.deploy()
    circuit = psp.connect(handles["C1"], [handles["C2"]], cn.dest.ip)
    return World(**vars(cn), psp=psp, authority=authority, circuit=circuit, handles=handles)


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
