"""The multicast PSP's control plane: group circuits, membership and the BGP-like FIS tables.

What a PSP runs next to its sites (paper §2.6.2). Per group and per AS it asks the AS's site for
an incoming label (the group's circuit there) and installs the circuit with one out hop per
neighbour site (the neighbour's label and hop key for the group) and one per local receiver.
Membership lives in the FIS: every join or leave rewrites each site's table (:mod:`.bgp`) with
a new version, which is also the key of the first site's tree cache, so the next packet after
the update uses the new tree.

Sites are reached through a PSP's site handle: :class:`pcsock.control.SiteHandle` (a site
daemon, through its control API) or :class:`pcdemo.example_testbed.SimSite` (a simulated site).

Receivers get the payload after the 44-byte multicast header (:func:`receive_payload`): the
Packet API's ``replicate`` sends one payload to every target, so local receivers get the same
bytes as the next sites.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pcsock.wire import FORM_CIRCUIT, build_circuit_packet, parse

from .bgp import site_table
from .header import HEADER_LEN, MulticastHeader

__all__ = [
    "SERVICE",
    "SERVICE_SOURCE",
    "MulticastPSP",
    "receive_payload",
]

SERVICE = "multicast"
#: The service file this PSP uploads.
SERVICE_SOURCE = (Path(__file__).with_name("service.py")).read_text()
OutSpec = tuple[int, str, bytes | None]  # (label, next hop, hop key or None)


class MulticastPSP:
    """Groups, members and circuits of one multicast PSP over a set of AS sites.

    ``adjacency``: AS -> neighbour ASes (the inter-domain links); ``sites``: AS -> its site.
    ``allowed``: AS -> hosts that may ever join there; their out hops are installed with the
    circuit up front, so that a join or leave is only an FIS update (otherwise each join also
    reinstalls the circuit hop with the new receiver).
    """

    def __init__(
        self,
        adjacency: Mapping[int, set[int] | frozenset[int]],
        sites: Mapping[int, Any],
        *,
        service: str = SERVICE,
        allowed: Mapping[int, list[str]] | None = None,
    ) -> None:
        self.adjacency = {a: frozenset(n) for a, n in adjacency.items()}
        self.sites = dict(sites)
        self.service = service
        self.version = 0
        self.receivers: dict[int, dict[int, set[str]]] = {a: {} for a in self.sites}
        self.labels: dict[tuple[int, int], int] = {}
        self.keys: dict[tuple[int, int], bytes] = {}
        self.groups: set[int] = set()
        self.allowed = {a: set(h) for a, h in (allowed or {}).items()}

    def deploy(self) -> None:
        for s in self.sites.values():
            s.deploy(self.service, SERVICE_SOURCE)

    def add_group(self, group: int) -> None:
        """Allocate the group's circuit at every site and install it."""
        if group in self.groups:
            return
        for a, s in self.sites.items():
            self.labels[a, group] = s.allocate_label(self.service)
            self.keys[a, group] = os.urandom(16)
            s.fis_put(self.service, f"group:{self.labels[a, group]}", group)
        self.groups.add(group)
        for a in self.sites:
            self._install(a, group)
        self.publish()

    def _install(self, a: int, group: int) -> None:
        out: list[OutSpec] = [
            (self.labels[n, group], self.sites[n].public_ip, self.keys[n, group])
            for n in sorted(self.adjacency.get(a, ()))
            if n in self.sites
        ]
        hosts = self.receivers[a].get(group, set()) | self.allowed.get(a, set())
        out += [(0, h, None) for h in sorted(hosts)]
        self.sites[a].install(self.labels[a, group], self.service, self.keys[a, group], out)

    def join(self, asn: int, group: int, host: str) -> None:
        """``host`` in AS ``asn`` joins ``group`` (effective from the next packet)."""
        self.add_group(group)
        self.receivers[asn].setdefault(group, set()).add(host)
        self._install(asn, group)
        self.publish()

    def leave(self, asn: int, group: int, host: str) -> None:
        hosts = self.receivers[asn].get(group, set())
        hosts.discard(host)
        if not hosts:
            self.receivers[asn].pop(group, None)
        self.publish()
        self._install(asn, group)

    def publish(self) -> None:
        """Write every site's BGP-like table with a new version."""
        self.version += 1
        site_of = {a: s.public_ip for a, s in self.sites.items()}
        for a, s in self.sites.items():
            table = site_table(
                asn=a,
                adjacency=self.adjacency,
                site_of=site_of,
                receivers=self.receivers,
                version=self.version,
            )
            s.fis_put(self.service, "table", table)

    def sender_packet(
        self, asn: int, group: int, *, src: str, payload: bytes, udp: bool = False
    ) -> bytes:
        """The packet a sender in AS ``asn`` sends: form 1 to its site, the group's label."""
        return bytes(
            build_circuit_packet(
                src=src,
                dst=self.sites[asn].public_ip,
                label=self.labels[asn, group],
                key=self.keys[asn, group],
                payload=payload,
                udp=udp,
            )
        )


def receive_payload(packet: bytes) -> tuple[int, bytes] | None:
    """(group, application payload) of a multicast copy a receiver got, or None if not one."""
    try:
        pkt = parse(packet)
    except Exception:
        return None
    if pkt.form != FORM_CIRCUIT or len(pkt.payload) < HEADER_LEN:
        return None
    hdr, data = MulticastHeader.decode(pkt.payload)
    return hdr.group, data
