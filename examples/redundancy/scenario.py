"""The redundancy example's simulated network (``pcsite_lite.sim``), for tests and benchmarks.

The network is the namespace demo's, from the same file (``examples/encryption/chain.toml``)::

    S -- R1[C1: encode] --2ms-- RC --2ms-- R2[C2: decode] -- D
              \\_____________ one FIS (the packet store) _____________/

C1 and C2 each keep their own node-local ``CachedFIS`` over one shared engine, as two sites of
a pair would over the FIS's shared store.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from examples.encryption.circuit import Chain
from examples.encryption.scenario import TOPOLOGY, ChainNet, chain_net
from pcdemo.example_testbed import SimSite, tap
from pcsite_lite.fis import CachedFIS, SqliteFIS
from pcsite_lite.sim import Network
from pcsock.wire import parse

from .control import RedundancyPSP

__all__ = ["PSP", "World", "build_world", "send"]

PSP = "isp-re"


@dataclass
class World(ChainNet):
    psp: RedundancyPSP
    chain: Chain
    fis: Any  #: the shared engine
    core_payload_bytes: list[int]  #: shim payload bytes of every frame on the core link


def build_world(*, staleness: float = 0.005, topology: Path = TOPOLOGY) -> World:
    """The network of ``chain.toml`` (the namespace demo's); the sites share one FIS engine.
    The sites' per-packet budget is the simulator's tick budget (a verdict never depends on
    machine load); the testbed's site daemons keep a wall-clock deadline (``demo.py``)."""
    engine = SqliteFIS(":memory:")

    def fis(name: str, net: Network) -> dict[str, Any]:
        return {"fis": CachedFIS(engine, clock=lambda: net.now, staleness=staleness)}

    cn = chain_net(topology, site_kwargs=fis)
    psp = RedundancyPSP(SimSite(cn.sites["C1"], PSP), SimSite(cn.sites["C2"], PSP))
    psp.deploy()
    chain = psp.connect(cn.dest.ip)
    sizes: list[int] = []
    tap(cn.core, lambda _sender, frame: sizes.append(len(parse(frame).payload)))
    return World(**vars(cn), psp=psp, chain=chain, fis=engine, core_payload_bytes=sizes)


def send(w: World, payloads: list[bytes], *, interval: float = 0.001) -> list[bytes]:
    """Send ``payloads`` from S, one every ``interval``; the payloads D received, in order."""
    before = len(w.dest.inbox)
    for i, p in enumerate(payloads):
        pkt = w.chain.packet(w.sender.ip, p)
        w.net.schedule(i * interval, functools.partial(w.sender.send, pkt))
    w.net.run()
    return [bytes(parse(r.data).payload) for r in w.dest.inbox[before:]]
