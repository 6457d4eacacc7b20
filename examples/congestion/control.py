"""Congestion-aware forwarding: the PSP's control plane and the ISP's congestion publisher.

:class:`CongestionPSP` deploys ``service.py`` at the ISP's sites, has the ISP register its
form-2 service ID there (with the gateways' prefixes as the only tunnel end points the service
may use) and writes the destination -> gateways table (FIS LPM ``"egress"``).

:class:`IspCongestion` is the ISP's side: it publishes each gateway link's congestion level
in the ISP namespace (``pcsite_lite.fis.ISP``, table ``pcsite_lite.fis.CONGESTION``) of every
site. Site handles: :class:`pcdemo.example_testbed.SimSite` (simulator) or
:class:`pcsock.control.SiteHandle` with the ISP's credential (a site daemon, the namespace
testbed).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pcsite_lite.fis import CONGESTION

__all__ = ["SERVICE", "SERVICE_ID", "SERVICE_SOURCE", "CongestionPSP", "IspCongestion"]

SERVICE = "congestion"
SERVICE_ID = 0x00C6F0
SERVICE_SOURCE = Path(__file__).with_name("service.py").read_text()


class CongestionPSP:
    def __init__(
        self, sites: Iterable[Any], *, service: str = SERVICE, service_id: int = SERVICE_ID
    ) -> None:
        self.sites = list(sites)
        self.service = service
        self.service_id = service_id

    def deploy(self, gateways: list[str]) -> None:
        """Deploy at every site; the ISP allows tunnels only to ``gateways`` (/32 each)."""
        for s in self.sites:
            s.deploy(self.service, SERVICE_SOURCE)
            s.register_service_id(self.service_id, self.service, [f"{g}/32" for g in gateways])

    def route(self, prefix: str, gateways: list[str]) -> None:
        """Destinations in ``prefix`` leave through one of ``gateways`` (in preference order)."""
        for s in self.sites:
            s.fis_lpm_put(self.service, "egress", prefix, {"via": list(gateways)})


class IspCongestion:
    """The ISP publishes link congestion in every site's FIS (namespace ``isp``)."""

    def __init__(self, sites: Iterable[Any]) -> None:
        self.sites = list(sites)

    def publish(self, prefix: str, level: float) -> None:
        if not 0.0 <= level <= 1.0:
            raise ValueError("congestion level must be within 0.0..1.0")
        for s in self.sites:
            s.isp_lpm_put(CONGESTION, prefix, {"level": float(level)})
