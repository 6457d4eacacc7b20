"""A circuit through a chain of sites, set up by the PSP (the lookup service's part).

Used by the examples whose service runs at two or more presences on one path (encryption
offload, redundancy elimination, rule-based forwarding). Sites are any handle with
``public_ip``, ``allocate_label(service)`` and ``install(label, service, in_key, out)`` --
``examples.multicast.control.LocalSite`` (simulator) and :class:`pcsock.control.SiteHandle`
(a site daemon, the namespace testbed) both are.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pcsock.wire import build_circuit_packet

__all__ = ["Chain", "SimSite", "open_chain"]


@dataclass(frozen=True, slots=True)
class Chain:
    """What the sender gets: the first site, the first label and hop key; and every label."""

    first_hop: str
    label: int
    key: bytes
    labels: tuple[int, ...]  #: incoming label at each site, in path order

    def packet(self, src: str, payload: bytes, *, metadata: int = 0) -> bytearray:
        """A form-1 packet from ``src`` into the circuit."""
        return build_circuit_packet(
            src=src,
            dst=self.first_hop,
            label=self.label,
            key=self.key,
            payload=payload,
            metadata=metadata,
        )


def open_chain(sites: Sequence[Any], service: str, destination: str) -> Chain:
    """Allocate a label at every site and install the hops back to front; the last site
    forwards to ``destination`` (label 0, no MAC: the receiver does not verify)."""
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
    return Chain(sites[0].public_ip, labels[0], keys[0], tuple(labels))


class SimSite:
    """A simulator site (``pcsite_lite.sim.SiteNode``) as a PSP's site handle: the
    ``examples.multicast.control.LocalSite`` calls plus ``fis_delete``, ``fis_lpm_put`` and
    the ISP's writes (``isp_put``/``isp_lpm_put``, namespace ``isp``)."""

    def __init__(self, node: Any, psp: str) -> None:
        from examples.multicast.control import LocalSite

        self.node = node
        self.site = node.site
        self.psp = psp
        self.public_ip: str = node.site.public_ip
        self.name: str = node.site.name
        self._local = LocalSite(node.site, psp)

    def _ns(self, service: str) -> str:
        from pcsite_lite.fis import namespace

        return namespace(self.psp, service)

    def deploy(self, service: str, source: str) -> None:
        self._local.deploy(service, source)

    def allocate_label(self, service: str) -> int:
        return self._local.allocate_label(service)

    def install(
        self, label: int, service: str, in_key: bytes, out: list[tuple[int, str, bytes | None]]
    ) -> None:
        self._local.install(label, service, in_key, out)

    def fis_put(self, service: str, key: str, value: Any) -> None:
        self._local.fis_put(service, key, value)

    def fis_delete(self, service: str, key: str) -> None:
        self.site.fis.delete(self._ns(service), key, writer=self.psp)

    def fis_lpm_put(self, service: str, table: str, prefix: str, value: Any) -> None:
        self.site.fis.lpm_put(self._ns(service), table, prefix, value, writer=self.psp)

    def isp_lpm_put(self, table: str, prefix: str, value: Any) -> None:
        from pcsite_lite.fis import ISP

        self.site.fis.lpm_put(ISP, table, prefix, value, writer=ISP)

    def register_service_id(
        self, service_id: int, service: str, redirect_prefixes: list[str] | None = None
    ) -> None:
        """Form 2: the ISP registers ``service_id`` for this PSP's ``service``."""
        self.site.register_service_id(
            service_id, self.psp, service, redirect_prefixes=tuple(redirect_prefixes or ())
        )
