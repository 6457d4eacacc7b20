"""Scapy layers for the PacketCloud shims (docs/protocol.md §3-§4), for crafting and dissection.

Not on any fast path (that is :mod:`pcsock.wire`): these layers are for tests, tools and the
testbed, and an independent second implementation of the spec that the tests compare
:mod:`pcsock.wire` against. Importing this module binds the layers into scapy::

    >>> from scapy.layers.inet import IP, UDP
    >>> from pcsock.scapy import PacketCloudCircuit, sign_circuit
    >>> pkt = IP(src="198.18.0.1", dst="198.18.1.1") / PacketCloudCircuit(label=7) / UDP()
    >>> raw = sign_circuit(pkt, bytes(16))          # the form-1 check needs the hop key
    >>> IP(raw)[PacketCloudCircuit].label
    7

Both shims are bound to IP protocol 253 and to UDP port 6253 (source or destination; built
packets get both ports 6253 and UDP checksum 0, as the spec says). A dispatcher picks the layer
from the version/form byte, so ``IP(raw)`` dissects either shim, and the ``next_proto`` field
is bound to the inner layer (``IP()/PacketCloudCircuit()/UDP()`` fills it in; dissection
continues into UDP, TCP, ICMP, IPv4 or IPv6).
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from scapy.data import IP_PROTOS
from scapy.fields import (
    BitEnumField,
    BitField,
    ByteEnumField,
    ByteField,
    IPField,
    X3BytesField,
    XByteField,
    XIntField,
    XStrFixedLenField,
)
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet, Raw, bind_bottom_up, bind_layers, bind_top_down

from pcsock import wire

__all__ = [
    "PacketCloudCircuit",
    "PacketCloudService",
    "circuit_check",
    "sign_circuit",
]

_FORMS = {1: "circuit", 2: "service"}


_PROTOS: dict[int, str] = {num: str(IP_PROTOS[num]) for num in range(256) if num in IP_PROTOS}


def _dispatch(cls: type[Packet], _pkt: bytes | None = None, *args: Any, **kargs: Any) -> type:
    """Pick the layer from the version/form byte (scapy calls this before dissecting)."""
    if _pkt:
        vf = _pkt[0]
        if vf == wire.VERSION << 4 | wire.FORM_CIRCUIT:
            return PacketCloudCircuit
        if vf == wire.VERSION << 4 | wire.FORM_SERVICE:
            return PacketCloudService
        return Raw  # unknown version or form: leave the bytes undissected
    return cls


class PacketCloudCircuit(Packet):
    """Form-1 (source-controlled, circuit) shim, 16 bytes.

    ``orig_src`` left unset is filled from the IPv4 source below it. ``check`` left unset is
    zero: the MAC needs the hop key, so compute it with :func:`sign_circuit`.
    """

    name = "PacketCloud circuit shim"
    dispatch_hook = classmethod(_dispatch)  # scapy looks for it in the class's own __dict__
    fields_desc = [
        BitField("version", wire.VERSION, 4),
        BitEnumField("form", wire.FORM_CIRCUIT, 4, _FORMS),
        ByteEnumField("next_proto", 17, _PROTOS),
        ByteField("hop_limit", wire.DEFAULT_HOP_LIMIT),
        XByteField("metadata", 0),
        XIntField("label", 0),
        IPField("orig_src", None),
        XStrFixedLenField("check", b"\0" * wire.CIRCUIT_MAC_LEN, wire.CIRCUIT_MAC_LEN),
    ]

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.orig_src is None:
            ip = _ip_below(self)
            src = ip.src if ip is not None else "0.0.0.0"
            pkt = pkt[:8] + wire.ip2int(src).to_bytes(4, "big") + pkt[12:]
        return pkt + pay

    def mysummary(self) -> str:
        return str(self.sprintf("PacketCloud circuit label=%label% md=%metadata%"))


class PacketCloudService(Packet):
    """Form-2 (service-ID) shim, 9 bytes. ``check`` left unset is computed (unkeyed)."""

    name = "PacketCloud service shim"
    dispatch_hook = classmethod(_dispatch)
    fields_desc = [
        BitField("version", wire.VERSION, 4),
        BitEnumField("form", wire.FORM_SERVICE, 4, _FORMS),
        ByteEnumField("next_proto", 17, _PROTOS),
        X3BytesField("service_id", 0),
        XByteField("metadata", 0),
        XStrFixedLenField("check", None, wire.SERVICE_CHECK_LEN),
    ]

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.check is None:
            pkt = pkt[:6] + hashlib.blake2s(pkt[:6], digest_size=wire.SERVICE_CHECK_LEN).digest()
        return pkt + pay

    def mysummary(self) -> str:
        return str(self.sprintf("PacketCloud service sid=%service_id% md=%metadata%"))


def _ip_below(layer: Packet) -> Any:
    under = layer.underlayer
    while under is not None and not isinstance(under, IP):
        under = under.underlayer
    return under


def circuit_check(shim: bytes, dst: str | int, key: bytes | wire.HopKey) -> bytes:
    """The form-1 check for a built shim (16 or more bytes) toward IPv4 ``dst``.

    Computed here with :mod:`hashlib` straight from docs/protocol.md §5.1 (not through
    :mod:`pcsock.wire`), so that the tests compare two implementations.
    """
    raw_key = key.key if isinstance(key, wire.HopKey) else bytes(key)
    if not 16 <= len(raw_key) <= 32:
        raise wire.WireError("bad_field", "a hop key is 16 to 32 bytes")
    addr = dst if isinstance(dst, int) else int(ipaddress.IPv4Address(dst))
    data = bytes(shim[:12]) + addr.to_bytes(4, "big")
    return hashlib.blake2s(data, key=raw_key, digest_size=wire.CIRCUIT_MAC_LEN).digest()


def sign_circuit(pkt: Packet, key: bytes | wire.HopKey) -> bytes:
    """Build ``pkt`` (an IP packet holding a :class:`PacketCloudCircuit`) with the check
    computed under ``key`` for its IPv4 destination; returns the wire bytes.

    The check covers fields that scapy fills in while building (``orig_src``, ``next_proto``),
    so the packet is built once, the MAC computed over the built shim, and the result
    rebuilt with the check set.
    """
    built = pkt.__class__(bytes(pkt))
    shim = built[PacketCloudCircuit]
    shim.check = circuit_check(bytes(shim)[:12], built[IP].dst, key)
    return bytes(built)


# --- bindings -------------------------------------------------------------------------------
# Dissection: either layer class is chosen through dispatch_hook by the version/form byte.
bind_bottom_up(IP, PacketCloudCircuit, proto=wire.IPPROTO_PACKETCLOUD)
bind_bottom_up(UDP, PacketCloudCircuit, dport=wire.UDP_PORT)
bind_bottom_up(UDP, PacketCloudCircuit, sport=wire.UDP_PORT)
# Building: what the layer below gets set to (form 2 over IP also sets the DSCP 43 flag).
bind_top_down(IP, PacketCloudCircuit, proto=wire.IPPROTO_PACKETCLOUD)
bind_top_down(IP, PacketCloudService, proto=wire.IPPROTO_PACKETCLOUD, tos=wire.TOS_SERVICE)
for _shim in (PacketCloudCircuit, PacketCloudService):
    bind_top_down(UDP, _shim, sport=wire.UDP_PORT, dport=wire.UDP_PORT, chksum=0)
    # next protocol: building fills next_proto, dissection continues into the inner layer
    bind_layers(_shim, ICMP, next_proto=1)
    bind_layers(_shim, IP, next_proto=4)
    bind_layers(_shim, TCP, next_proto=6)
    bind_layers(_shim, UDP, next_proto=17)
    bind_layers(_shim, IPv6, next_proto=41)
del _shim
