"""The redundancy-elimination PSP's control plane (the ISP, in the paper's example).

:class:`RedundancyPSP` deploys ``service.py`` at an ingress and an egress site that share one
FIS (the packet store), opens a circuit for a sender through both
(:func:`examples.encryption.circuit.open_chain`) and tells each site the role of the circuit's
label there (FIS ``hop:<label>`` -> ``{"role": "encode" | "decode"}``).
"""

from __future__ import annotations

from pathlib import Path

from examples.encryption.circuit import SitePairPSP

__all__ = ["SERVICE", "SERVICE_SOURCE", "RedundancyPSP"]

SERVICE = "re"
SERVICE_SOURCE = Path(__file__).with_name("service.py").read_text()


class RedundancyPSP(SitePairPSP):
    """Redundancy elimination between ``ingress`` and ``egress`` (sites sharing a FIS)."""

    SERVICE, SOURCE, ROLES = SERVICE, SERVICE_SOURCE, ("encode", "decode")
