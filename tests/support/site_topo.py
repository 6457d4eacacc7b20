"""Helpers for the site pipeline tests: the paper's Fig. 2 topology in the simulator."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from pcdemo.onesite import open_circuit
from pcsite_lite.circuits import OutHopEntry
from pcsite_lite.pipeline import Pipeline
from pcsite_lite.services import source
from pcsite_lite.sim import Host, Network, Router, SiteNode
from pcsite_lite.site import Site
from pcsock.wire import HopKey, build_circuit_packet

PSP = "acme"
SRCROUTE = "srcroute"


@dataclass
class Fig2:
    """S -- R1 -- R2 -- R3 -- R4 -- D; sites C1 at R1, C2 at R2, C3 at R3 (R4 has none)."""

    net: Network
    s: Host
    d: Host
    routers: list[Router]
    c1: SiteNode
    c2: SiteNode
    c3: SiteNode


def make_fig2(seed: int = 1) -> Fig2:
    net = Network(seed=seed)
    s = net.host("S", "198.18.0.10")
    d = net.host("D", "198.18.9.10", prefix="198.18.9.0/24")
    routers = [net.router(f"R{i}", f"198.18.{100 + i}.1") for i in range(1, 5)]
    c1 = net.site("C1", "198.18.1.1", router=routers[0], local_prefixes=["198.18.0.0/15"])
    c2 = net.site("C2", "198.18.2.1", router=routers[1], local_prefixes=["198.18.0.0/15"])
    c3 = net.site("C3", "198.18.3.1", router=routers[2], local_prefixes=["198.18.0.0/15"])
    net.link(s, routers[0])
    for a, b in itertools.pairwise(routers):
        net.link(a, b, delay=0.002)
    net.link(routers[3], d)
    net.compute_routes()
    for c in (c1, c2, c3):
        c.site.deploy(PSP, SRCROUTE, source("source_routing"))
    return Fig2(net, s, d, routers, c1, c2, c3)


# ---- one site, driven directly through its pipeline ---------------------------------------
SITE_IP = "198.18.5.1"
NEXT_IP = "198.18.6.1"
SENDER = "198.18.0.10"
DEST = "198.18.9.10"
IN_KEY = HopKey(b"in-key-0123456789")
OUT_KEY = HopKey(b"out-key-012345678")


def one_site(**kwargs: Any) -> tuple[Site, Pipeline, list[str]]:
    """A site at SITE_IP whose services log into the returned list."""
    lines: list[str] = []
    site = Site("c", SITE_IP, log_sinks=lambda psp, svc: lines.append, **kwargs)
    return site, Pipeline(site), lines


def circuit(
    site: Site,
    service: str,
    *,
    psp: str = PSP,
    out: list[OutHopEntry] | None = None,
    destination: str | None = DEST,
    expires: float = 100.0,
) -> int:
    out_hops = out or [OutHopEntry(77, NEXT_IP, OUT_KEY)]
    return open_circuit(site, psp=psp, service=service, in_key=IN_KEY, out_hops=out_hops,
                        destination=destination, expires=expires)  # fmt: skip


def circuit_packet(
    label: int,
    payload: bytes = b"data",
    *,
    key: HopKey = IN_KEY,
    hop_limit: int = 16,
    src: str = SENDER,
    dst: str = SITE_IP,
    **fields: Any,
) -> bytearray:
    """A form-1 packet from ``src`` to the site (``dst``) on circuit ``label``; ``fields`` are
    the other keywords of :func:`pcsock.wire.build_circuit_packet` (``udp``, ``metadata``...)."""
    return build_circuit_packet(
        src=src, dst=dst, label=label, key=key, payload=payload, hop_limit=hop_limit, **fields
    )
