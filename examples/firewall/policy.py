"""The firewall's packet decision, pure (paper §2.6.2, the web-service example).

"Google may want to deploy a distributed in-network firewall system to filter out the packets
sent towards its data center that are non-TCP or have a destination port different from 80 or
443 [...] The service may also whitelist a number of source prefixes." StopIt filters
(Liu, Yang, Lu, "To Filter or to Authorize", SIGCOMM 2008) block one (source, destination)
pair on the destination's request until they expire.

Order of the checks: a live StopIt filter drops (the destination asked for it, even for a
whitelisted source); a whitelisted source passes; then only TCP to an allowed port passes.
FIS look-ups are passed in as callables so that this module stays I/O-free and testable.

>>> from pcsock.wire import build_ipv4
>>> syn = build_ipv4(src="198.18.9.9", dst="198.19.0.80", proto=6,
...                  payload=bytes([0x30, 0x39, 0, 80]) + bytes(16))
>>> decide(syn, whitelisted=lambda s: False, blocked=lambda s, d: False)
Decision(allow=True, reason='web')
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Final

__all__ = ["WEB_PORTS", "Decision", "decide"]

WEB_PORTS: Final = frozenset({80, 443})
IPPROTO_TCP: Final = 6


@dataclass(frozen=True, slots=True)
class Decision:
    """``allow`` or not, and why (drop reasons are counted by the site)."""

    allow: bool
    reason: str


def decide(
    packet: bytes | bytearray | memoryview,
    *,
    whitelisted: Callable[[int], bool],
    blocked: Callable[[int, int], bool],
    ports: Collection[int] = WEB_PORTS,
) -> Decision:
    """Allow or drop one IPv4 packet.

    Reasons: ``fw_malformed`` (not a whole IPv4 header), ``fw_stopit`` (a StopIt filter for
    (src, dst) is live), ``whitelist``, ``fw_not_tcp``, ``fw_fragment`` (a non-first fragment
    carries no ports), ``fw_truncated`` (TCP header cut short), ``fw_port``, ``web``.
    """
    n = len(packet)
    if n < 20 or packet[0] >> 4 != 4 or (packet[0] & 15) * 4 > n:
        return Decision(False, "fw_malformed")
    ihl = (packet[0] & 15) * 4
    src = int.from_bytes(packet[12:16], "big")
    dst = int.from_bytes(packet[16:20], "big")
    if blocked(src, dst):
        return Decision(False, "fw_stopit")
    if whitelisted(src):
        return Decision(True, "whitelist")
    if packet[9] != IPPROTO_TCP:
        return Decision(False, "fw_not_tcp")
    if (packet[6] & 0x1F) or packet[7]:
        return Decision(False, "fw_fragment")
    if n < ihl + 4:
        return Decision(False, "fw_truncated")
    dport = packet[ihl + 2] << 8 | packet[ihl + 3]
    if dport not in ports:
        return Decision(False, "fw_port")
    return Decision(True, "web")
