"""The congestion example's simulated network (``pcsite_lite.sim``), for tests and the demo.

The network is the namespace demo's, from the same file (``congestion.toml``)::

                       ┌─2ms─ RA ── GA (gateway A) ─5ms─┐
    S ── R1[C1] ───────┤                                ├── RD ── D (its prefix)
                       └─2ms─ RB ── GB (gateway B) ─5ms─┘

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
from pcdemo.example_testbed import SimSite, addresses, sim_network
from pcsite_lite.fis import ISP, CachedFIS, SqliteFIS
from pcsite_lite.sim import Host, Network, Received, SiteNode
from pcsock.wire import build_service_packet, parse

from .control import SERVICE_ID, CongestionPSP, IspCongestion

__all__ = ["DEST_PREFIX", "GATEWAYS", "PSP", "TOPOLOGY", "World", "build_world"]

PSP = "adaptco"
TOPOLOGY = Path(__file__).with_name("congestion.toml")
_ADDRESS = addresses(TOPOLOGY)
DEST_PREFIX = _ADDRESS["D"].rsplit(".", 1)[0] + ".0/24"  #: D's prefix in the file
GATEWAYS = {"A": _ADDRESS["GA"], "B": _ADDRESS["GB"]}


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


def build_world(fis_path: Path, *, topology: Path = TOPOLOGY) -> World:
    def fis(name: str, net: Network) -> dict[str, Any]:
        return {"fis": CachedFIS(SqliteFIS(str(fis_path)), clock=lambda: net.now)}

    sn = sim_network(topology, site_kwargs=fis)
    net, s, d, site = sn.net, sn.nodes["S"], sn.nodes["D"], sn.nodes["C1"]
    gws = {"A": sn.nodes["GA"], "B": sn.nodes["GB"]}
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
    psp.deploy([g.ip for g in gws.values()])
    psp.route(d.prefixes[-1], [gws["A"].ip, gws["B"].ip])  # D's prefix in the file
    isp = IspCongestion([IspWriter(str(fis_path))])
    return World(net, psp, isp, s, d, gws, site, via)
