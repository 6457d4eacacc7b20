"""A circuit through a chain of sites, set up by the PSP (the lookup service's part).

Used by the examples whose service runs at two or more presences on one path (encryption
offload, redundancy elimination, rule-based forwarding); :class:`SitePairPSP` is the PSP of a
service that runs at an ingress and an egress site of each sender's circuit, each site told
its role for the circuit (encryption offload, redundancy elimination). Sites are any handle with
``public_ip``, ``allocate_label(service)`` and ``install(label, service, in_key, out)`` --
:class:`pcdemo.example_testbed.SimSite` (simulator) and :class:`pcsock.control.SiteHandle`
(a site daemon, the namespace testbed) both are.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from pcsite_lite.sim import CircuitHandle as Chain
from pcsock.wire import HopKey

__all__ = ["Chain", "SitePairPSP", "open_chain"]


def open_chain(sites: Sequence[Any], service: str, destination: str) -> Chain:
    """Allocate a label at every site and install the hops back to front; the last site
    forwards to ``destination`` (label 0, no MAC: the receiver does not verify). The sender's
    part is a :class:`pcsite_lite.sim.CircuitHandle` (first site, label, hop key; every label
    in path order; ``packet()`` builds a form-1 packet into the circuit)."""
    if not sites:
        raise ValueError("a chain needs at least one site")
    labels = [s.allocate_label(service) for s in sites]
    keys = [secrets.token_bytes(16) for _ in sites]
    for i in range(len(sites) - 1, -1, -1):
        if i == len(sites) - 1:
            out: list[tuple[int, str, bytes | None]] = [(0, destination, None)]
        else:
            out = [(labels[i + 1], sites[i + 1].public_ip, keys[i + 1])]
        sites[i].install(labels[i], service, keys[i], out)
    return Chain(sites[0].public_ip, labels[0], HopKey(keys[0]), tuple(labels))


class SitePairPSP:
    """A PSP whose service runs at ``ingress`` and ``egress``: each sender's circuit crosses
    both, and each site learns the role of the circuit's label there (FIS ``hop:<label>`` ->
    ``{"role": ROLES[0]}`` at the ingress, ``ROLES[1]`` at the egress). A subclass names its
    service (``SERVICE``, the default ``service`` name), its source file's text (``SOURCE``)
    and the two ``ROLES``."""

    SERVICE: str
    SOURCE: str
    ROLES: tuple[str, str]

    def __init__(self, ingress: Any, egress: Any, *, service: str | None = None) -> None:
        self.ingress, self.egress = ingress, egress
        self.service = service or self.SERVICE

    def deploy(self) -> None:
        """Upload the service to both sites."""
        for s in (self.ingress, self.egress):
            s.deploy(self.service, self.SOURCE)

    def connect(self, destination: str) -> Chain:
        """A circuit ingress -> egress -> ``destination`` for one sender."""
        chain = open_chain([self.ingress, self.egress], self.service, destination)
        sites = (self.ingress, self.egress)
        for site, label, role in zip(sites, chain.labels, self.ROLES, strict=True):
            site.fis_put(self.service, f"hop:{label}", {"role": role})
        return chain
