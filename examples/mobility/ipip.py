"""IP-in-IP encapsulation (RFC 2003), the tunnel of the mobility service (paper §2.6.1).

Pure functions over bytes. Per RFC 2003 §3.1 the outer header copies the inner ToS, sets DF
when the inner packet has DF set, uses protocol 4 and a fresh TTL; the encapsulator, being a
forwarding hop, decrements the inner TTL and refuses packets whose TTL would reach zero.
Per §3.1/§4 the decapsulator checks the outer protocol and length, and rejects an inner packet
whose source is the tunnel's own exit (a looping tunnel).

>>> from pcsock.wire import build_ipv4
>>> inner = build_ipv4(src="198.18.9.1", dst="198.19.1.5", proto=17, payload=b"hi")
>>> outer = encapsulate(inner, src="198.18.0.1", dst="198.18.200.2")
>>> outer[9], decapsulate(outer)[12:20] == inner[12:20]
(4, True)
"""

from __future__ import annotations

from typing import Final

from examples.errors import ReasonError
from pcsock.wire import build_ipv4, internet_checksum, ip2int, patch_checksum

__all__ = ["IPPROTO_IPIP", "TunnelError", "decapsulate", "encapsulate"]

IPPROTO_IPIP: Final = 4
OUTER_TTL: Final = 64


class TunnelError(ReasonError):
    """An unusable packet for the tunnel; ``reason`` is a drop reason a site can count."""


def _lengths(pkt: bytes | bytearray | memoryview, which: str) -> tuple[int, int]:
    """(header length, total length) of the IPv4 packet ``pkt``; :class:`TunnelError`
    ``<which>not_ipv4`` or ``<which>bad_length`` (``which``: "ipip_" for the outer packet,
    "ipip_inner_" for the inner one)."""
    if len(pkt) < 20 or pkt[0] >> 4 != 4:
        raise TunnelError(which + "not_ipv4")
    ihl = (pkt[0] & 15) * 4
    total = pkt[2] << 8 | pkt[3]
    if ihl < 20 or total < ihl or total > len(pkt):
        raise TunnelError(which + "bad_length")
    return ihl, total


def encapsulate(
    inner: bytes | bytearray | memoryview,
    *,
    src: str | int,
    dst: str | int,
    ttl: int = OUTER_TTL,
    ident: int = 0,
) -> bytearray:
    """``inner`` (a whole IPv4 packet) wrapped in an outer IPv4 header ``src -> dst``."""
    _ihl, total = _lengths(inner, "ipip_inner_")
    body = bytearray(inner[:total])
    if body[8] <= 1:
        raise TunnelError("ipip_ttl_exceeded")
    # decrement the inner TTL (RFC 2003 §3.1), RFC 1624 incremental checksum update
    old = body[8] << 8 | body[9]
    body[8] -= 1
    patch_checksum(body, 10, old, body[8] << 8 | body[9])
    df = bool(body[6] & 0x40)
    return build_ipv4(
        src=src,
        dst=dst,
        proto=IPPROTO_IPIP,
        payload=body,
        ttl=ttl,
        tos=body[1],
        ident=ident,
        dont_fragment=df,
    )


def decapsulate(outer: bytes | bytearray | memoryview, *, local: str | int | None = None) -> bytes:
    """The inner packet of an RFC 2003 packet; :class:`TunnelError` if it is not one.

    ``local`` is the decapsulator's address: an inner packet *from* it is a tunnel loop.
    """
    ihl, total = _lengths(outer, "ipip_")
    if internet_checksum(outer[:ihl]) != 0:
        raise TunnelError("ipip_bad_checksum")
    if outer[9] != IPPROTO_IPIP:
        raise TunnelError("ipip_not_ipip")
    inner = bytes(outer[ihl:total])
    _ihl, inner_total = _lengths(inner, "ipip_inner_")
    if inner_total != len(inner):
        raise TunnelError("ipip_inner_bad_length")
    if local is not None and int.from_bytes(inner[12:16], "big") == ip2int(local):
        raise TunnelError("ipip_loop")
    return inner
