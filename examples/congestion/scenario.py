"""The congestion example's simulated network (``pcsite_lite.sim``), for tests and the demo.

::

                       ┌── RA ── GA (gateway A) ──┐
    S ── R1[C1] ───────┤                          ├── RD ── D (198.19.9.0/24)
                       └── RB ── GB (gateway B) ──┘

S sends form-2 packets to D; R1 diverts them (DSCP) to C1, whose service tunnels each to the
gateway whose link the ISP reports less congested; the gateways decapsulate
(``examples.mobility.ipip``) and deliver to D. The ISP writes its congestion table through its
own connection to the site's SQLite FIS file, so the site sees changes through its node-local
cache (staleness 5 ms, of the simulator's clock) as a real site would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from examples.mobility.ipip import decapsulate
from pcdemo.example_testbed import SimSite
from pcsite_lite.fis import ISP, CachedFIS, SqliteFIS
from pcsite_lite.sim import Host, Network, Received, SiteNode
from pcsock.wire import build_service_packet, parse

from .control import SERVICE_ID, CongestionPSP, IspCongestion

__all__ = ["GATEWAYS", "PSP", "World", "build_world"]

PSP = "adaptco"
DEST_PREFIX = "198.19.9.0/24"
GATEWAYS = {"A": "198.18.21.2", "B": "198.18.22.2"}


class IspWriter:
    """The ISP's own connection to the site's FIS file (not the site's cache)."""

    def __init__(self, path: str) -> None:
        self.fis = SqliteFIS(path)

    def isp_lpm_put(self, table: str, prefix: str, value: Any) -> None:
        self.fis.lpm_put(ISP, table, prefix, value, writer=ISP)


@dataclass
class World:
    net: Network
    psp: CongestionPSP
    isp: IspCongestion
    sender: Host
    dest: Host
    gateways: dict[str, Host]
    site: SiteNode
    #: (time, gateway, inner payload) of every tunnelled packet at a gateway
    via: list[tuple[float, str, bytes]]

    def packet(self, payload: bytes) -> bytes:
        return bytes(
            build_service_packet(
                src=self.sender.ip, dst=self.dest.ip, service_id=SERVICE_ID, payload=payload
            )
        )


def build_world(fis_path: Path) -> World:
    net = Network(trace=False)
    r1 = net.router("R1", "198.18.1.1")
    ra = net.router("RA", "198.18.21.1")
    rb = net.router("RB", "198.18.22.1")
    rd = net.router("RD", "198.19.9.1")
    s = net.host("S", "198.18.1.10")
    d = net.host("D", "198.19.9.10", prefix=DEST_PREFIX)
    gws = {k: net.host("G" + k, ip) for k, ip in GATEWAYS.items()}
    net.link(s, r1)
    net.link(r1, ra, delay=0.002)
    net.link(r1, rb, delay=0.002)
    net.link(gws["A"], ra)
    net.link(gws["B"], rb)
    net.link(ra, rd, delay=0.010)
    net.link(rb, rd, delay=0.010)
    net.link(rd, d)
    fis = CachedFIS(SqliteFIS(str(fis_path)), clock=lambda: net.now)
    site = net.site("C1", "198.18.254.1", router=r1, fis=fis)
    net.compute_routes()
    via: list[tuple[float, str, bytes]] = []

    def gateway(name: str) -> Any:
        def on_receive(host: Host, got: Received) -> None:
            inner = bytes(decapsulate(got.data))
            via.append((got.time, name, bytes(parse(inner).payload)))
            host.send(inner)

        return on_receive

    for name, g in gws.items():
        g.on_receive = gateway(name)
    psp = CongestionPSP([SimSite(site, PSP)])
    psp.deploy(list(GATEWAYS.values()))
    psp.route(DEST_PREFIX, [GATEWAYS["A"], GATEWAYS["B"]])
    isp = IspCongestion([IspWriter(str(fis_path))])
    return World(net, psp, isp, s, d, gws, site, via)
