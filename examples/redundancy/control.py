"""The redundancy-elimination PSP's control plane (the ISP, in the paper's example).

:class:`RedundancyPSP` deploys ``service.py`` at an ingress and an egress site that share one
FIS (the packet store), opens a circuit for a sender through both
(:func:`examples.encryption.circuit.open_chain`) and tells each site the role of the circuit's
label there (FIS ``hop:<label>`` -> ``{"role": "encode" | "decode"}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from examples.encryption.circuit import Chain, open_chain

__all__ = ["SERVICE", "SERVICE_SOURCE", "RedundancyPSP"]

SERVICE = "re"
SERVICE_SOURCE = Path(__file__).with_name("service.py").read_text()


class RedundancyPSP:
    """Redundancy elimination between ``ingress`` and ``egress`` (sites sharing a FIS)."""

    def __init__(self, ingress: Any, egress: Any, *, service: str = SERVICE) -> None:
        self.ingress, self.egress = ingress, egress
        self.service = service

    def deploy(self) -> None:
        for s in (self.ingress, self.egress):
            s.deploy(self.service, SERVICE_SOURCE)

    def connect(self, destination: str) -> Chain:
        """A circuit ingress -> egress -> ``destination`` for one sender."""
        chain = open_chain([self.ingress, self.egress], self.service, destination)
        self.ingress.fis_put(self.service, f"hop:{chain.labels[0]}", {"role": "encode"})
        self.egress.fis_put(self.service, f"hop:{chain.labels[1]}", {"role": "decode"})
        return chain
