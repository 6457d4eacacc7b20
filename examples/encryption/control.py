"""The encryption-offload PSP's control plane: circuits, roles and keys.

:class:`EncryptionPSP` deploys ``service.py`` at an ingress and an egress site, opens a circuit
for a sender through both (:func:`examples.encryption.circuit.open_chain`), tells each site the
role of the circuit's label there (FIS ``hop:<label>``), and generates and rotates the AES-256
keys (FIS ``key:<epoch>``, ``epoch``). The keys go only to the sites' FIS: the sender receives
the circuit (first site, label, hop key) and nothing else.

Sites are a PSP's site handles: :class:`pcdemo.example_testbed.SimSite` in the simulator,
:class:`pcsock.control.SiteHandle` of a site daemon in the namespace testbed.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from .circuit import SitePairPSP

__all__ = ["SERVICE", "SERVICE_SOURCE", "EncryptionPSP"]

SERVICE = "crypt"
SERVICE_SOURCE = Path(__file__).with_name("service.py").read_text()


class EncryptionPSP(SitePairPSP):
    """One PSP's encryption offload between ``ingress`` and ``egress`` sites."""

    SERVICE, SOURCE, ROLES = SERVICE, SERVICE_SOURCE, ("encrypt", "decrypt")

    def __init__(self, ingress: Any, egress: Any, *, service: str | None = None) -> None:
        super().__init__(ingress, egress, service=service)
        self.epoch = -1
        self.keys: dict[int, bytes] = {}

    def deploy(self) -> None:
        """Upload the service to both sites and install the first key."""
        super().deploy()
        self.rotate()

    def rotate(self) -> int:
        """A fresh key: the egress learns it first, then the ingress switches to it. The old
        key stays at the egress (packets sealed under it may still be in flight) until
        :meth:`retire`. Returns the new epoch (0..127, wrapping)."""
        epoch = (self.epoch + 1) % 128
        key = secrets.token_bytes(32)
        self.keys[epoch] = key
        self.egress.fis_put(self.service, f"key:{epoch}", key.hex())
        self.ingress.fis_put(self.service, f"key:{epoch}", key.hex())
        self.ingress.fis_put(self.service, "epoch", epoch)
        self.epoch = epoch
        return epoch

    def retire(self, epoch: int) -> None:
        """Forget an old epoch's key at both sites (its packets are dropped from now on)."""
        if epoch == self.epoch:
            raise ValueError("cannot retire the current epoch")
        self.keys.pop(epoch, None)
        for s in (self.ingress, self.egress):
            s.fis_delete(self.service, f"key:{epoch}")
