"""PacketCloud wire format: sans-IO encode/decode of IPv4 + PacketCloud shims.

This module is the executable form of ``docs/protocol.md`` (the normative spec). It never
touches a socket, a clock or a file, and it never imports scapy: it is the per-packet fast
path of senders, sites and receivers.

Layouts (all fields in network byte order)::

    common first two bytes of every shim
      0      version (high nibble, = 1) | form (low nibble: 1 circuit, 2 service ID)
      1      next protocol: IP protocol number of what follows the shim

    form 1, circuit shim (16 bytes)               form 2, service-ID shim (9 bytes)
      0  ver|form=1                                  0  ver|form=2
      1  next protocol                               1  next protocol
      2  hop limit                                   2..4  service ID (24 bits)
      3  metadata                                    5  metadata
      4..7   circuit label (this hop's)              6..8  check (24 bits)
      8..11  original source IPv4 address
      12..15 check: truncated keyed MAC

The form-1 check is ``BLAKE2s(key=hop key, digest_size=4)`` over shim bytes 0..11 followed by
the IPv4 destination address: a hop that does not know the hop key cannot forge or guess a label
it may use, and every site re-MACs with the next hop's key after swapping the label. The form-2
check is an unkeyed ``BLAKE2s(digest_size=3)`` over shim bytes 0..5 (an integrity check that
tells a real shim from junk or corruption; form 2 carries no per-hop secret).

Every malformed input raises :class:`WireError` whose ``reason`` is one of :data:`REASONS`.

>>> key = HopKey(bytes(16))
>>> raw = build_circuit_packet(src="198.18.0.1", dst="198.18.1.1", label=7, key=key,
...                            payload=b"hello", metadata=3)
>>> pkt = parse(raw)
>>> (pkt.form, pkt.label, pkt.metadata, int2ip(pkt.orig_src), bytes(pkt.payload))
(1, 7, 3, '198.18.0.1', b'hello')
>>> pkt.verify_mac(key)
True

A site's per-hop job (docs/protocol.md §5.3) is one call: verify under the incoming hop key,
swap the label, decrement the hop limit, rewrite destination and source, re-MAC:

>>> out_key = HopKey(bytes(range(16)))
>>> pkt.switch(key, 9, ip2int("198.18.2.1"), out_key, src=ip2int("198.18.1.1"))
>>> again = parse(bytes(pkt))
>>> (again.label, again.hop_limit, int2ip(again.dst), again.verify_mac(out_key))
(9, 15, '198.18.2.1', True)

The next site does the same job straight from the received bytes with :func:`switch_hop`
(the same checks as :func:`parse`, the circuit-table lookup, the same code as ``switch``):

>>> routes = {9: (out_key, 4, ip2int("198.18.3.1"), key)}  # label -> Route
>>> out = switch_hop(bytes(pkt), routes.get, ip2int("198.18.2.1"))
>>> again = parse(out)
>>> (again.label, again.hop_limit, int2ip(again.dst), again.verify_mac(key))
(4, 14, '198.18.3.1', True)
>>> switch_hop(bytes(pkt), {}.get) is None  # a label the site does not know
True
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import struct
from collections.abc import Callable
from enum import StrEnum
from hmac import compare_digest as _compare
from typing import Any, Final

from pcsock.errors import CodedError

__all__ = [
    "ACCELERATED",
    "CIRCUIT_SHIM",
    "CIRCUIT_SHIM_LEN",
    "DEFAULT_HOP_LIMIT",
    "DSCP_SERVICE",
    "FORM_CIRCUIT",
    "FORM_NONE",
    "FORM_SERVICE",
    "IPPROTO_PACKETCLOUD",
    "IPV4_HEADER",
    "PURE",
    "PURE_REASON",
    "REASONS",
    "SERVICE_SHIM",
    "SERVICE_SHIM_LEN",
    "TOS_SERVICE",
    "UDP_HEADER",
    "UDP_PORT",
    "VERSION",
    "HopKey",
    "Packet",
    "Route",
    "WireError",
    "WireReason",
    "accelerator",
    "build_circuit_packet",
    "build_ipv4",
    "build_service_packet",
    "checksum_update",
    "circuit_mac",
    "form1_out",
    "int2ip",
    "internet_checksum",
    "ip2int",
    "parse",
    "patch_checksum",
    "service_check",
    "switch_hop",
    "use_accelerator",
]

# --- constants (docs/protocol.md §1) ------------------------------------------------------

#: IP protocol number that marks a PacketCloud packet: 253 is reserved for experimentation
#: and testing by RFC 3692. Configurable per deployment (every API takes ``proto=``).
IPPROTO_PACKETCLOUD: Final = 253
#: UDP destination port of the UDP-encapsulation mode (unprivileged senders, NAT traversal).
UDP_PORT: Final = 6253
#: DSCP that flags form-2 packets for the legacy router's policy routing: 43 (0b101011) is in
#: RFC 2474 pool 2 (xxxx11), reserved for experimental and local use.
DSCP_SERVICE: Final = 43
#: The whole ToS byte a form-2 sender sets (DSCP in the upper six bits, ECN bits zero).
TOS_SERVICE: Final = DSCP_SERVICE << 2
VERSION: Final = 1
FORM_NONE: Final = 0  # a plain IPv4 packet (form 3 traffic, or anything else)
FORM_CIRCUIT: Final = 1
FORM_SERVICE: Final = 2
DEFAULT_HOP_LIMIT: Final = 16

IPPROTO_UDP: Final = 17

# --- header layouts -------------------------------------------------------------------------

#: IPv4 header without options: ver/ihl, tos, total length, id, flags/frag, ttl, proto,
#: checksum, src, dst.
IPV4_HEADER: Final = struct.Struct("!BBHHHBBHII")
#: UDP header: source port, destination port, length, checksum.
UDP_HEADER: Final = struct.Struct("!HHHH")
#: Form-1 shim: ver|form, next proto, hop limit, metadata, label, original source, check.
CIRCUIT_SHIM: Final = struct.Struct("!BBBBII4s")
CIRCUIT_SHIM_LEN: Final = CIRCUIT_SHIM.size  # 16
CIRCUIT_MAC_LEN: Final = 4
#: Form-2 shim: ver|form, next proto, service ID (3 bytes), metadata, check (3 bytes).
SERVICE_SHIM: Final = struct.Struct("!BB3sB3s")
SERVICE_SHIM_LEN: Final = SERVICE_SHIM.size  # 9
SERVICE_CHECK_LEN: Final = 3

#: The IPv4 fields parse() looks at: ver/ihl, total length, flags/fragment offset, protocol.
_IP_FIELDS: Final = struct.Struct("!BxHxxHxB")
_H: Final = struct.Struct("!H")
#: IPv4 header checksum, source and destination (bytes 10..19), rewritten together per hop.
_CSUM_SRC_DST: Final = struct.Struct("!HII")
_I: Final = struct.Struct("!I")

_VF_CIRCUIT: Final = VERSION << 4 | FORM_CIRCUIT
_VF_SERVICE: Final = VERSION << 4 | FORM_SERVICE
_from_bytes = int.from_bytes
_new = object.__new__

MAX_LABEL: Final = 0xFFFFFFFF
MAX_SERVICE_ID: Final = 0xFFFFFF


class WireReason(StrEnum):
    """Every reason a :class:`WireError` can carry (a ``str``: counters and JSON key on the
    value)."""

    TRUNCATED = "truncated"  # fewer bytes than a header or the IP total length says
    NOT_IPV4 = "not_ipv4"  # IP version field is not 4
    BAD_IP_HEADER_LENGTH = "bad_ip_header_length"  # IHL < 5
    BAD_IP_TOTAL_LENGTH = "bad_ip_total_length"  # total length < header length
    BAD_IP_CHECKSUM = "bad_ip_checksum"  # IPv4 header checksum does not verify
    FRAGMENT = "fragment"  # a fragment: sites do not reassemble (docs/protocol.md §6)
    BAD_UDP_LENGTH = "bad_udp_length"  # UDP length disagrees with the IP payload
    BAD_VERSION = "bad_version"  # shim version is not 1
    UNKNOWN_FORM = "unknown_form"  # shim form is not 1 or 2
    BAD_MAC = "bad_mac"  # form-1 check does not verify under the hop key
    BAD_CHECK = "bad_check"  # form-2 check does not verify
    HOP_LIMIT_EXCEEDED = "hop_limit_exceeded"  # a form-1 packet reached a site with hop limit 0
    BAD_FIELD = "bad_field"  # a value given to an encoder or setter is out of range


#: Every reason a :class:`WireError` can carry, as a set.
REASONS: Final = frozenset(WireReason)


class WireError(CodedError):
    """A packet (or a value for one) that does not follow docs/protocol.md.

    ``reason`` is a short machine-readable token from :data:`REASONS`; drops on the data path
    are counted under it.
    """

    CODES = REASONS


# --- the C accelerator -----------------------------------------------------------------------
#
# pcsock/_accel.c does what this module's per-packet functions do -- _frame (so parse),
# switch_hop, Packet.switch, build_circuit_packet -- in C, with the same results, the same
# WireError reasons and the same order of checks (tests/wire/test_accel_differential.py). This
# module stays the reference; the C versions replace the Python ones at the end of the module
# when pcsock._accel can be imported and PACKETCLOUD_PURE is not set.

_log = logging.getLogger("pcsock")


def _load_accel() -> tuple[object | None, str]:
    if os.environ.get("PACKETCLOUD_PURE", "") not in ("", "0"):
        return None, "PACKETCLOUD_PURE is set"
    try:
        import pcsock._accel as mod
    except ImportError as exc:
        return None, f"pcsock._accel could not be imported ({exc})"
    mod._setup(WireError)
    return mod, ""


_accel: Any
_accel, PURE_REASON = _load_accel()
#: True when the C accelerator is in use (False: the pure-Python path, see PURE_REASON);
#: set by use_accelerator() at the end of the module.
ACCELERATED: bool
if _accel is None and PURE_REASON != "PACKETCLOUD_PURE is set":
    _log.warning("pcsock: using the pure-Python codec: %s", PURE_REASON)


# --- helpers --------------------------------------------------------------------------------


def ip2int(addr: str | int | ipaddress.IPv4Address) -> int:
    """Dotted quad (or int, or IPv4Address) to a 32-bit integer; WireError(bad_field) if not."""
    if isinstance(addr, int):
        if 0 <= addr <= 0xFFFFFFFF:
            return addr
        raise WireError("bad_field", f"IPv4 address out of range: {addr}")
    try:
        return int(ipaddress.IPv4Address(addr))
    except (ipaddress.AddressValueError, ValueError) as exc:
        raise WireError("bad_field", f"not an IPv4 address: {addr!r}") from exc


def int2ip(value: int) -> str:
    """32-bit integer to a dotted quad."""
    return f"{value >> 24 & 255}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 one's-complement checksum of ``data`` (odd lengths padded with a zero byte).

    The one's-complement sum of 16-bit words is the big-endian integer of ``data`` modulo
    0xFFFF (2**16 = 1 mod 0xFFFF), with a non-zero multiple of 0xFFFF summing to 0xFFFF: one
    ``int.from_bytes`` and one ``%`` instead of a loop or unpacking words in Python.
    """
    v = int.from_bytes(data, "big")
    if len(data) % 2:
        v <<= 8
    s = v % 0xFFFF
    if s == 0 and v:
        s = 0xFFFF
    return s ^ 0xFFFF


def checksum_update(check: int, old: int, new: int) -> int:
    """The tree's one incremental checksum update (RFC 1624; docs/protocol.md §5.3):
    ``HC' = (HC + m - m') mod 0xFFFF`` for a field changing from ``old`` to ``new``.

    In one's-complement arithmetic ``~x`` is ``-x`` modulo 0xFFFF and a 32-bit value is the
    sum of its 16-bit halves modulo 0xFFFF, so this is RFC 1624 eqn. 3, ``~(~HC + ~m + m')``,
    up to the representation of zero. The result is in 0..0xFFFE, exactly what a full
    recomputation gives (a header sum is never +0), which is the rule; eqn. 3 evaluated in
    16-bit one's-complement arithmetic differs only when HC is 0xFFFF and the changed words go
    from all ones to all zeros (it gives 0xFFFF, this gives 0). Works for 16- and 32-bit
    fields and for several fields at once (pass the sums of their old and new values);
    :func:`patch_checksum` applies it to a checksum in a buffer.
    """
    return (check + old - new) % 0xFFFF


def patch_checksum(buf: bytearray, off: int, old: int, new: int, *, udp: bool = False) -> None:
    """Rewrite the 16-bit checksum at ``buf[off:off + 2]`` for a covered field changing from
    ``old`` to ``new`` (:func:`checksum_update`). ``udp=True``: a UDP checksum, left at 0 if
    it is 0 (none sent) and sent as 0xFFFF if it computes to 0 (RFC 768)."""
    c = buf[off] << 8 | buf[off + 1]
    if udp:
        if not c:
            return
        c = checksum_update(c, old, new) or 0xFFFF
    else:
        c = checksum_update(c, old, new)
    buf[off] = c >> 8
    buf[off + 1] = c & 0xFF


def _check_range(name: str, value: int, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise WireError("bad_field", f"{name} must be an integer in 0..{maximum}, got {value!r}")
    return value


class HopKey:
    """A per-hop MAC key, pre-keyed once so that each MAC costs one copy + update.

    Keys are 16 to 32 bytes (BLAKE2s accepts up to 32).
    """

    __slots__ = ("_ck", "_proto", "key")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or not 16 <= len(key) <= 32:
            raise WireError("bad_field", "a hop key is 16 to 32 bytes")
        self.key = bytes(key)
        self._proto = hashlib.blake2s(key=self.key, digest_size=CIRCUIT_MAC_LEN)
        #: the same pre-keyed state in the C accelerator (None without it)
        self._ck = None if _accel is None else _accel.Key(self.key, CIRCUIT_MAC_LEN)

    def mac(self, data: bytes | bytearray | memoryview) -> bytes:
        h = self._proto.copy()
        h.update(data)
        return h.digest()

    def __repr__(self) -> str:  # never print key material
        return "HopKey(<redacted>)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HopKey) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


if _accel is not None:
    _accel._register_hopkey(HopKey)


def circuit_mac(key: HopKey, shim_head: bytes | bytearray | memoryview, dst: int) -> bytes:
    """The form-1 check: MAC over shim bytes 0..11 and the IPv4 destination."""
    h = key._proto.copy()
    h.update(shim_head)
    h.update(_I.pack(dst))
    return h.digest()


def service_check(shim_head: bytes | bytearray | memoryview) -> bytes:
    """The form-2 check: unkeyed BLAKE2s-24 over shim bytes 0..5."""
    return hashlib.blake2s(shim_head, digest_size=SERVICE_CHECK_LEN).digest()


def _as_key(key: HopKey | bytes) -> HopKey:
    return key if isinstance(key, HopKey) else HopKey(key)


# --- parsing --------------------------------------------------------------------------------


class Packet:
    """A parsed IPv4 packet (PacketCloud or plain) over a mutable buffer.

    Field reads decode from the buffer on demand; setters rewrite in place and keep the IPv4
    header checksum right by RFC 1624 incremental update. ``bytes(pkt)`` is the wire image.
    """

    __slots__ = ("buf", "encap", "form", "ihl", "payload_off", "shim_off")

    buf: bytearray
    ihl: int  #: IPv4 header length in bytes
    encap: str  #: "ip" (IP protocol number), "udp" (UDP port) or "none" (plain IPv4)
    form: int  #: FORM_NONE, FORM_CIRCUIT or FORM_SERVICE
    shim_off: int  #: offset of the shim (-1 for plain packets)
    payload_off: int  #: offset of what follows the shim (or the IP header)

    # ---- IPv4 fields
    @property
    def tos(self) -> int:
        return self.buf[1]

    @property
    def total_length(self) -> int:
        return len(self.buf)

    @property
    def ttl(self) -> int:
        return self.buf[8]

    @property
    def proto(self) -> int:
        """The IPv4 protocol field (253 or 17 for PacketCloud packets)."""
        return self.buf[9]

    @property
    def src(self) -> int:
        return _I.unpack_from(self.buf, 12)[0]

    @property
    def dst(self) -> int:
        return _I.unpack_from(self.buf, 16)[0]

    # ---- shim fields (common)
    @property
    def next_proto(self) -> int:
        """The protocol of the payload (the IPv4 protocol field for plain packets)."""
        return self.buf[self.shim_off + 1] if self.form else self.buf[9]

    @property
    def metadata(self) -> int:
        self._need_shim()
        return self.buf[self.shim_off + (3 if self.form == FORM_CIRCUIT else 5)]

    @property
    def check(self) -> bytes:
        self._need_shim()
        if self.form == FORM_CIRCUIT:
            return bytes(self.buf[self.shim_off + 12 : self.shim_off + 16])
        return bytes(self.buf[self.shim_off + 6 : self.shim_off + 9])

    # ---- form 1
    @property
    def label(self) -> int:
        """This hop's circuit label (form 1)."""
        if self.form != FORM_CIRCUIT:
            self._need_form(FORM_CIRCUIT)
        return _I.unpack_from(self.buf, self.shim_off + 4)[0]

    @property
    def hop_limit(self) -> int:
        self._need_form(FORM_CIRCUIT)
        return self.buf[self.shim_off + 2]

    @property
    def orig_src(self) -> int:
        self._need_form(FORM_CIRCUIT)
        return _I.unpack_from(self.buf, self.shim_off + 8)[0]

    # ---- form 2
    @property
    def service_id(self) -> int:
        self._need_form(FORM_SERVICE)
        o = self.shim_off
        b = self.buf
        return b[o + 2] << 16 | b[o + 3] << 8 | b[o + 4]

    @property
    def payload(self) -> memoryview:
        """What follows the shim (for plain packets: what follows the IPv4 header)."""
        return memoryview(self.buf)[self.payload_off :]

    @property
    def udp_ports(self) -> tuple[int, int] | None:
        """(source, destination) UDP ports of the encapsulation, or None in IP mode."""
        if self.encap != "udp":
            return None
        sport, dport = struct.unpack_from("!HH", self.buf, self.ihl)
        return sport, dport

    def _need_shim(self) -> None:
        if not self.form:
            raise WireError("unknown_form", "plain IPv4 packet has no shim")

    def _need_form(self, form: int) -> None:
        if self.form != form:
            raise WireError("unknown_form", f"field needs form {form}, packet is form {self.form}")

    # ---- in-place rewrites
    def _set_addr(self, off: int, addr: int | str) -> None:
        new = ip2int(addr)
        b = self.buf
        old = b[off] << 24 | b[off + 1] << 16 | b[off + 2] << 8 | b[off + 3]
        _I.pack_into(b, off, new)
        patch_checksum(b, 10, old, new)
        if self.encap == "udp":  # the UDP pseudo-header covers the addresses
            patch_checksum(b, self.ihl + 6, old, new, udp=True)

    def set_dst(self, addr: int | str) -> None:
        """Rewrite the IPv4 destination, updating the header checksum incrementally (and a
        non-zero outer UDP checksum, whose pseudo-header covers the address)."""
        self._set_addr(16, addr)

    def set_src(self, addr: int | str) -> None:
        """Rewrite the IPv4 source (platform use only: a site sends from its own address)."""
        self._set_addr(12, addr)

    def _set_header_byte(self, off: int, name: str, value: int) -> None:
        """Rewrite IPv4 header byte ``off``, updating the header checksum incrementally
        (RFC 1624 over the 16-bit word that holds it)."""
        _check_range(name, value, 255)
        b = self.buf
        w = off & ~1
        old = b[w] << 8 | b[w + 1]
        b[off] = value
        patch_checksum(b, 10, old, b[w] << 8 | b[w + 1])

    def set_ttl(self, ttl: int) -> None:
        """Rewrite the IPv4 TTL, updating the header checksum incrementally."""
        self._set_header_byte(8, "ttl", ttl)

    def set_tos(self, tos: int) -> None:
        """Rewrite the IPv4 ToS byte (e.g. clear the form-2 DSCP flag), updating the checksum."""
        self._set_header_byte(1, "tos", tos)

    def switch(
        self, in_key: HopKey, label: int, dst: int, out_key: HopKey, src: int | None = None
    ) -> None:
        """A site's whole per-hop job on a form-1 packet, in place (docs/protocol.md §5.3).

        Verify the check under ``in_key`` (else ``bad_mac``), refuse a packet whose hop limit
        is already 0 (``hop_limit_exceeded``), write the outgoing ``label``, decrement the hop
        limit, rewrite the IPv4 destination to ``dst`` and, if given, the source to ``src``
        (the site's own address; 32-bit integers) with an incremental checksum update, and
        re-MAC under ``out_key``. The packet is unchanged if it raises. The same code as
        :func:`switch_hop`, for a packet already parsed.
        """
        if self.form != FORM_CIRCUIT:
            raise WireError("unknown_form", f"switch needs form 1, packet is form {self.form}")
        _switch_packet(self.buf, self.ihl, self.shim_off, in_key, label, dst, out_key, src)

    def _shim_changed(self) -> None:
        """The UDP payload (the shim) changed: a non-zero outer UDP checksum would now be
        wrong, so the packet goes on with none (RFC 768), as the spec says (§2.2)."""
        if self.encap == "udp":
            u = self.ihl + 6
            self.buf[u] = self.buf[u + 1] = 0

    def set_label(self, label: int) -> None:
        self._need_form(FORM_CIRCUIT)
        _I.pack_into(self.buf, self.shim_off + 4, _check_range("label", label, MAX_LABEL))
        self._shim_changed()

    def set_metadata(self, value: int) -> None:
        self._need_shim()
        _check_range("metadata", value, 255)
        self.buf[self.shim_off + (3 if self.form == FORM_CIRCUIT else 5)] = value
        self._shim_changed()

    def set_hop_limit(self, value: int) -> None:
        self._need_form(FORM_CIRCUIT)
        self.buf[self.shim_off + 2] = _check_range("hop_limit", value, 255)
        self._shim_changed()

    # ---- checks
    def _mac(self, key: HopKey) -> bytes:
        """The form-1 check of the current shim (bytes 0..11) and destination under ``key``."""
        self._need_form(FORM_CIRCUIT)
        o = self.shim_off
        h = key._proto.copy()
        h.update(self.buf[o : o + 12])
        h.update(self.buf[16:20])
        return h.digest()

    def verify_mac(self, key: HopKey) -> bool:
        """True if the form-1 check verifies under ``key`` (constant-time compare)."""
        o = self.shim_off
        return _compare(self._mac(key), self.buf[o + 12 : o + 16])

    def sign(self, key: HopKey) -> None:
        """Write the form-1 check for the current shim and destination under ``key``."""
        mac = self._mac(key)
        o = self.shim_off
        self.buf[o + 12 : o + 16] = mac
        self._shim_changed()

    def verify_check(self) -> bool:
        """True if the form-2 integrity check verifies."""
        self._need_form(FORM_SERVICE)
        o = self.shim_off
        return service_check(memoryview(self.buf)[o : o + 6]) == self.buf[o + 6 : o + 9]

    def seal(self) -> None:
        """Recompute the form-2 check (after a metadata update)."""
        self._need_form(FORM_SERVICE)
        o = self.shim_off
        self.buf[o + 6 : o + 9] = service_check(memoryview(self.buf)[o : o + 6])
        self._shim_changed()

    def strip_shim(self) -> bytearray:
        """The packet as the original sender's IP layer would have sent it to a legacy
        receiver: encapsulation and shim removed, protocol field restored, checksum fixed.
        For a plain packet, a copy."""
        b = self.buf
        if not self.form:
            return bytearray(b)
        hdr = bytearray(b[: self.ihl])
        out = hdr + b[self.payload_off :]
        out[2:4] = _H.pack(len(out))
        out[9] = self.next_proto
        out[10:12] = b"\0\0"
        out[10:12] = _H.pack(internet_checksum(out[: self.ihl]))
        return out

    def __bytes__(self) -> bytes:
        return bytes(self.buf)

    def __len__(self) -> int:
        return len(self.buf)

    def __repr__(self) -> str:
        base = f"{int2ip(self.src)}->{int2ip(self.dst)}"
        if self.form == FORM_CIRCUIT:
            return (
                f"<Packet form=1 {self.encap} {base} label={self.label} md={self.metadata} "
                f"hops={self.hop_limit} orig={int2ip(self.orig_src)} len={len(self.buf)}>"
            )
        if self.form == FORM_SERVICE:
            return (
                f"<Packet form=2 {self.encap} {base} sid={self.service_id} md={self.metadata} "
                f"len={len(self.buf)}>"
            )
        return f"<Packet plain {base} proto={self.proto} len={len(self.buf)}>"


def _parse_ip_slow(
    data: bytes | bytearray | memoryview, b0: int, total: int
) -> tuple[int, bytearray]:
    """IPv4 header checks for packets with options, trailing bytes or errors, in the order of
    docs/protocol.md §2.4 (fewer than 20 bytes is ``truncated`` before any field is looked at)."""
    n = len(data)
    if n < 20:
        raise WireError("truncated", f"{n} bytes is shorter than an IPv4 header")
    if b0 >> 4 != 4:
        raise WireError("not_ipv4", f"IP version {b0 >> 4}")
    if b0 & 15 < 5:
        raise WireError("bad_ip_header_length", f"IHL {b0 & 15}")
    ihl = (b0 & 15) << 2
    if ihl > n:
        raise WireError("truncated", f"IPv4 header of {ihl} bytes in {n} bytes")
    if total < ihl:
        raise WireError("bad_ip_total_length", f"total length {total} < header {ihl}")
    if total > n:
        raise WireError("truncated", f"IPv4 total length {total} but {n} bytes")
    if total == n:
        return ihl, data if type(data) is bytearray else bytearray(data)
    return ihl, bytearray(data[:total])


def _frame(
    data: bytes | bytearray | memoryview, verify_ip_checksum: bool, proto: int, udp_port: int
) -> tuple[bytearray, int, int, int]:
    """Every receive-side check of docs/protocol.md §2.4, shared by :func:`parse` and
    :func:`switch_hop` (one implementation, so both accept and reject exactly the same bytes).

    Returns ``(buf, ihl, vf, shim_off)``: the private buffer trimmed to the IP total length,
    the IPv4 header length, the shim's version/form byte (0 for a plain packet) and the shim's
    offset (``ihl`` in IP mode, ``ihl + 8`` in UDP mode, -1 for a plain packet). The shim is
    known to be complete: 16 bytes for form 1, 9 for form 2.
    """
    try:
        b0, total, frag, ip_proto = _IP_FIELDS.unpack_from(data)
    except struct.error:
        raise WireError("truncated", f"{len(data)} bytes is shorter than an IPv4 header") from None
    if b0 == 0x45 and total == len(data) >= 20:  # the common case: no options, no trailing bytes
        ihl = 20
        buf = data if type(data) is bytearray else bytearray(data)
    else:
        ihl, buf = _parse_ip_slow(data, b0, total)
    # one's-complement sum of the header words == 0xFFFF  <=>  header integer = 0 mod 0xFFFF
    # (the version nibble makes the header non-zero); see internet_checksum.
    if verify_ip_checksum and _from_bytes(buf[:ihl], "big") % 0xFFFF:
        raise WireError("bad_ip_checksum")
    if frag & 0x3FFF:  # MF flag or a fragment offset
        raise WireError("fragment", "sites do not reassemble fragments")
    if ip_proto == proto:
        off = ihl
    elif (
        ip_proto == IPPROTO_UDP
        and total >= ihl + 8
        and (buf[ihl + 2] << 8 | buf[ihl + 3]) == udp_port
    ):
        ulen = buf[ihl + 4] << 8 | buf[ihl + 5]
        if ulen != total - ihl:
            raise WireError("bad_udp_length", f"UDP length {ulen}, IP payload {total - ihl}")
        off = ihl + 8
    else:
        return buf, ihl, 0, -1
    if total >= off + CIRCUIT_SHIM_LEN and buf[off] == _VF_CIRCUIT:  # the common case
        return buf, ihl, _VF_CIRCUIT, off
    if total < off + 2:
        raise WireError("truncated", "shim header cut short")
    vf = buf[off]
    if vf == _VF_CIRCUIT:
        end = off + CIRCUIT_SHIM_LEN
    elif vf == _VF_SERVICE:
        end = off + SERVICE_SHIM_LEN
    elif vf >> 4 != VERSION:
        raise WireError("bad_version", f"shim version {vf >> 4}")
    else:
        raise WireError("unknown_form", f"shim form {vf & 15}")
    if total < end:
        raise WireError("truncated", f"form-{vf & 15} shim needs {end - off} bytes")
    return buf, ihl, vf, off


def parse(
    data: bytes | bytearray | memoryview,
    *,
    verify_ip_checksum: bool = True,
    proto: int = IPPROTO_PACKETCLOUD,
    udp_port: int = UDP_PORT,
) -> Packet:
    """Parse an IPv4 packet; recognise a PacketCloud shim by IP protocol or UDP port.

    Returns a :class:`Packet` over a private ``bytearray`` copy trimmed to the IP total length
    (passing a ``bytearray`` of exactly that length avoids the copy). Plain IPv4 packets parse
    with ``form == FORM_NONE``. Raises :class:`WireError` on anything malformed. Sites that read
    from a TUN device may pass ``verify_ip_checksum=False``: the kernel verified it on ingress.
    """
    buf, ihl, vf, off = _frame(data, verify_ip_checksum, proto, udp_port)
    pkt = _new(Packet)
    pkt.buf = buf
    pkt.ihl = ihl
    if vf == _VF_CIRCUIT:
        pkt.form = FORM_CIRCUIT
        pkt.payload_off = off + CIRCUIT_SHIM_LEN
    elif vf:
        pkt.form = FORM_SERVICE
        pkt.payload_off = off + SERVICE_SHIM_LEN
    else:
        pkt.encap = "none"
        pkt.form = FORM_NONE
        pkt.shim_off = -1
        pkt.payload_off = ihl
        return pkt
    pkt.encap = "ip" if off == ihl else "udp"
    pkt.shim_off = off
    return pkt


# --- the per-hop job ------------------------------------------------------------------------

#: What a site's circuit table gives for an incoming label: the incoming hop key, the
#: outgoing label, the next hop's IPv4 address (a 32-bit integer) and the outgoing hop key.
Route = tuple[HopKey, int, int, HopKey]

#: IPv4 checksum, source, destination (bytes 10..19) and the form-1 shim right after them:
#: an option-less IP-mode packet's whole per-hop state in one struct.
_HDR_SHIM: Final = struct.Struct("!HII" + CIRCUIT_SHIM.format[1:])
#: The form-1 MAC input (docs/protocol.md §5.1): shim bytes 0..11, then the IPv4 destination.
_MAC_INPUT: Final = struct.Struct("!BBBBIII")


#: Form-1 shim bytes 0..11 (the MAC input without the destination).
_SHIM_HEAD: Final = struct.Struct("!BBBBII")
#: Form-1 shim bytes 2..15 as a hop writes them: hop limit, metadata, label, original
#: source, check.
_SHIM_TAIL: Final = struct.Struct("!BBII4s")
_NO_MAC: Final = b"\0\0\0\0"


def _rewrite(
    b: bytearray,
    ihl: int,
    o: int,
    hop_limit: int,
    label: int,
    dst: int,
    key: HopKey | None,
    src: int | None,
) -> None:
    """THE form-1 hop's rewrite (docs/protocol.md §5.3 steps 3-5), the one implementation
    every caller uses (:func:`switch_hop`, :meth:`Packet.switch`, :func:`form1_out` and so
    the site pipeline): write the outgoing ``label`` and ``hop_limit``, the IPv4 source
    ``src`` (None: the destination the packet arrived with, i.e. the site) and destination
    ``dst`` with one incremental header-checksum update
    (:func:`checksum_update`), the check under ``key`` (None: a zero check, a hop to a
    receiver that verifies none) and, in UDP mode (``o != ihl``), no outer UDP checksum
    (§2.2). Every value is checked before anything is written: ``bad_field`` leaves ``b``
    unchanged."""
    if o == 20:  # option-less IP mode: header and shim are contiguous, one unpack
        old = _HDR_SHIM.unpack_from(b, 10)
        hc, old_src, old_dst, vf, nproto, _, md, _, orig, _ = old
    else:
        hc, old_src, old_dst = _CSUM_SRC_DST.unpack_from(b, 10)
        vf, nproto, _, md, _, orig = _SHIM_HEAD.unpack_from(b, o)
    if src is None:
        src = old_dst
    try:  # packing the MAC input checks hop limit, label and destination
        mac_input = _MAC_INPUT.pack(vf, nproto, hop_limit, md, label, orig, dst)
    except struct.error:
        raise WireError("bad_field", f"label {label!r} or address {dst!r} out of range") from None
    mac = _NO_MAC if key is None else key.mac(mac_input)
    try:
        csum = checksum_update(hc, old_src + old_dst, src + dst)
        if o == 20:
            _HDR_SHIM.pack_into(b, 10, csum, src, dst, vf, nproto, hop_limit, md, label, orig, mac)
            return
        head = _CSUM_SRC_DST.pack(csum, src, dst)
    except (struct.error, TypeError):
        if o == 20:  # only the source can be bad, and pack_into zeroed its span: restore it
            _HDR_SHIM.pack_into(b, 10, *old)
        raise WireError("bad_field", f"source address {src!r} out of range") from None
    b[10:20] = head
    _SHIM_TAIL.pack_into(b, o + 2, hop_limit, md, label, orig, mac)
    if o != ihl:  # UDP mode: the shim (UDP payload) changed, so send no checksum (§2.2)
        u = ihl + 6
        b[u] = b[u + 1] = 0


def _hop(
    b: bytearray,
    ihl: int,
    o: int,
    routes: Callable[[int], Route | None] | None,
    route: Route | None,
    src: int | None,
) -> bool:
    """The per-hop job of docs/protocol.md §5.3 on a form-1 shim at offset ``o`` of ``b``
    (validated by :func:`_frame`), for :func:`switch_hop` (``route`` looked up in ``routes``
    by label) and :meth:`Packet.switch` (``route`` given): verify, then :func:`_rewrite`.
    False if ``routes`` has no route for the label; the buffer is unchanged if it returns
    False or raises."""
    hops = b[o + 2]
    label = _I.unpack_from(b, o + 4)[0]
    if route is None:
        route = routes(label)  # type: ignore[misc]
        if route is None:
            return False
    in_key, out_label, dst, out_key = route
    h = in_key._proto.copy()
    h.update(b[o : o + 12])
    h.update(b[16:20])
    if not _compare(h.digest(), b[o + 12 : o + 16]):
        raise WireError("bad_mac")
    if not hops:
        raise WireError("hop_limit_exceeded")
    if out_key is None:  # as in C: a Route's out key is a HopKey (form1_out takes None)
        raise AttributeError("a route's outgoing hop key is None")
    if src is None:  # keep the arriving source
        src = _I.unpack_from(b, 12)[0]
    _rewrite(b, ihl, o, hops - 1, out_label, dst, out_key, src)
    return True


def _switch_packet(
    b: bytearray,
    ihl: int,
    o: int,
    in_key: HopKey,
    label: int,
    dst: int,
    out_key: HopKey,
    src: int | None,
) -> None:
    """:meth:`Packet.switch` after its form check (``_accel.switch_packet`` in C)."""
    _hop(b, ihl, o, None, (in_key, label, dst, out_key), src)


def switch_hop(
    data: bytes | bytearray | memoryview,
    routes: Callable[[int], Route | None],
    src: int | None = None,
    *,
    verify_ip_checksum: bool = True,
    proto: int = IPPROTO_PACKETCLOUD,
    udp_port: int = UDP_PORT,
) -> bytearray | None:
    """A site's whole per-hop job on a received packet, without a :class:`Packet` object.

    Checks ``data`` exactly as :func:`parse` does (the same code), looks the form-1 label up
    with ``routes(label)`` (e.g. ``dict.get`` of a circuit table) for its :data:`Route`
    ``(in_key, out_label, dst, out_key)`` and does what :meth:`Packet.switch` does (the same
    code): verify the check under ``in_key`` in constant time, refuse hop limit 0, write the
    outgoing label, decrement the hop limit, rewrite destination and (if given; None keeps the
    arriving source) source with an incremental IPv4 checksum update (docs/protocol.md §5.3:
    equal to a full recomputation), send UDP mode with UDP checksum 0, re-MAC under
    ``out_key``. It does not check that the packet is addressed to the caller (§5.3 step 1 is
    the site's); bytes past the IPv4 total length are not part of the result.

    Returns the outgoing packet (a private ``bytearray``; ``data`` itself if it is a
    ``bytearray`` of exactly the IP total length, rewritten in place), or ``None`` for a
    well-formed packet that is not form 1 or whose label ``routes`` does not know (the caller
    handles those through :func:`parse`). Raises :class:`WireError` for anything malformed,
    ``bad_mac``, ``hop_limit_exceeded`` and ``bad_field`` (a route's value out of range).
    """
    b, ihl, vf, o = _frame(data, verify_ip_checksum, proto, udp_port)
    if vf == _VF_CIRCUIT and _hop(b, ihl, o, routes, None, src):
        return b
    return None


def form1_out(
    buf: bytearray, o: int, hop_limit: int, label: int, dst: int, key: HopKey | None
) -> bytes:
    """The site pipeline's form-1 egress, in place on ``buf`` (a form-1 packet addressed to
    the site, shim at offset ``o``): :func:`_rewrite` with the IPv4 source set to the
    destination the packet arrived with (the site) and the destination to ``dst``; returns
    the outgoing bytes. ``pcsock._accel.form1_out`` in C (the same results)."""
    _rewrite(buf, (buf[0] & 15) << 2, o, hop_limit, label, dst, key, None)
    return bytes(buf)


# --- building -------------------------------------------------------------------------------


def build_ipv4(
    *,
    src: int | str,
    dst: int | str,
    proto: int,
    payload: bytes | bytearray | memoryview,
    ttl: int = 64,
    tos: int = 0,
    ident: int = 0,
    dont_fragment: bool = True,
) -> bytearray:
    """A 20-byte IPv4 header (no options, checksum filled in) followed by ``payload``."""
    total = 20 + len(payload)
    if total > 0xFFFF:
        raise WireError("bad_field", f"packet of {total} bytes exceeds the IPv4 maximum")
    _check_range("ttl", ttl, 255)
    _check_range("tos", tos, 255)
    _check_range("proto", proto, 255)
    _check_range("ident", ident, 0xFFFF)
    hdr = bytearray(
        IPV4_HEADER.pack(
            0x45,
            tos,
            total,
            ident,
            0x4000 if dont_fragment else 0,
            ttl,
            proto,
            0,
            ip2int(src),
            ip2int(dst),
        )
    )
    hdr[10:12] = _H.pack(internet_checksum(hdr))
    hdr += payload
    return hdr


def _udp_wrap(inner: bytes | bytearray, sport: int, dport: int) -> bytearray:
    _check_range("sport", sport, 0xFFFF)
    _check_range("dport", dport, 0xFFFF)
    if 28 + len(inner) > 0xFFFF:
        raise WireError("bad_field", f"UDP datagram of {8 + len(inner)} bytes is too large")
    # Checksum 0 (RFC 768: none computed): the shim has its own check and the payload its
    # own transport checksum; sites rewrite the outer header at every hop (protocol.md §2.2).
    out = bytearray(UDP_HEADER.pack(sport, dport, 8 + len(inner), 0))
    out += inner
    return out


def build_circuit_packet(
    *,
    src: int | str,
    dst: int | str,
    label: int,
    key: HopKey | bytes | None,
    payload: bytes | bytearray | memoryview = b"",
    metadata: int = 0,
    orig_src: int | str | None = None,
    next_proto: int = IPPROTO_UDP,
    hop_limit: int = DEFAULT_HOP_LIMIT,
    ttl: int = 64,
    tos: int = 0,
    ident: int = 0,
    udp: bool = False,
    sport: int = UDP_PORT,
    dport: int = UDP_PORT,
    proto: int = IPPROTO_PACKETCLOUD,
) -> bytearray:
    """Build IPv4 / [UDP] / form-1 shim / payload, MAC'd under ``key`` (check zero if None).

    ``dst`` is the first site's public address; ``orig_src`` defaults to ``src``.
    """
    src_i = ip2int(src)
    dst_i = ip2int(dst)
    if _build_circuit is not None:  # the C build-and-seal, after the same checks
        orig_i = src_i if orig_src is None else ip2int(orig_src)
        _check_range("next_proto", next_proto, 255)
        _check_range("hop_limit", hop_limit, 255)
        _check_range("metadata", metadata, 255)
        _check_range("label", label, MAX_LABEL)
        if key is not None:
            key = _as_key(key)
        if udp:
            _check_range("sport", sport, 0xFFFF)
            _check_range("dport", dport, 0xFFFF)
        else:
            _check_range("proto", proto, 255)
        _check_range("ttl", ttl, 255)
        _check_range("tos", tos, 255)
        _check_range("ident", ident, 0xFFFF)
        return _build_circuit(
            src_i, dst_i, label, key, payload, metadata, orig_i, next_proto, hop_limit,
            ttl, tos, ident, udp, sport if udp else 0, dport if udp else 0,
            0 if udp else proto,
        )  # fmt: skip
    shim = bytearray(
        CIRCUIT_SHIM.pack(
            VERSION << 4 | FORM_CIRCUIT,
            _check_range("next_proto", next_proto, 255),
            _check_range("hop_limit", hop_limit, 255),
            _check_range("metadata", metadata, 255),
            _check_range("label", label, MAX_LABEL),
            src_i if orig_src is None else ip2int(orig_src),
            b"\0\0\0\0",
        )
    )
    if key is not None:
        shim[12:16] = circuit_mac(_as_key(key), shim[:12], dst_i)
    inner = shim + payload
    if udp:
        return build_ipv4(
            src=src_i,
            dst=dst_i,
            proto=IPPROTO_UDP,
            ttl=ttl,
            tos=tos,
            ident=ident,
            payload=_udp_wrap(inner, sport, dport),
        )
    return build_ipv4(
        src=src_i, dst=dst_i, proto=proto, ttl=ttl, tos=tos, ident=ident, payload=inner
    )


def build_service_packet(
    *,
    src: int | str,
    dst: int | str,
    service_id: int,
    payload: bytes | bytearray | memoryview = b"",
    metadata: int = 0,
    next_proto: int = IPPROTO_UDP,
    ttl: int = 64,
    tos: int = TOS_SERVICE,
    ident: int = 0,
    udp: bool = False,
    sport: int = UDP_PORT,
    dport: int = UDP_PORT,
    proto: int = IPPROTO_PACKETCLOUD,
) -> bytearray:
    """Build IPv4(tos=flag) / [UDP] / form-2 shim / payload toward the real destination."""
    head = struct.pack(
        "!BB3sB",
        VERSION << 4 | FORM_SERVICE,
        _check_range("next_proto", next_proto, 255),
        _check_range("service_id", service_id, MAX_SERVICE_ID).to_bytes(3, "big"),
        _check_range("metadata", metadata, 255),
    )
    inner = bytearray(head + service_check(head))
    inner += payload
    if udp:
        return build_ipv4(
            src=src,
            dst=dst,
            proto=IPPROTO_UDP,
            ttl=ttl,
            tos=tos,
            ident=ident,
            payload=_udp_wrap(inner, sport, dport),
        )
    return build_ipv4(src=src, dst=dst, proto=proto, ttl=ttl, tos=tos, ident=ident, payload=inner)


# --- choosing the implementation ------------------------------------------------------------

#: The pure-Python reference of every function the accelerator replaces (tests and benchmarks
#: compare the two; the docs teach these).
PURE: Final[dict[str, Any]] = {
    "_frame": _frame,
    "switch_hop": switch_hop,
    "_switch_packet": _switch_packet,
    "form1_out": form1_out,
    "_build_circuit": None,
}
_build_circuit: Any = None


def accelerator() -> Any:
    """The C accelerator module ``pcsock._accel`` if it is in use, else None."""
    return _accel if ACCELERATED else None


def use_accelerator(flag: bool) -> bool:
    """Switch this process between the C accelerator and the pure-Python reference (for tests
    and benchmarks that compare them); returns the previous setting. Objects made before the
    switch (a Pipeline, a socket's senders) keep the implementation they were made with.
    RuntimeError if the accelerator is asked for but not available."""
    global ACCELERATED, _frame, switch_hop, _switch_packet, _build_circuit, form1_out
    previous = ACCELERATED
    if flag and _accel is None:
        raise RuntimeError(f"the C accelerator is not available: {PURE_REASON}")
    if flag:
        _frame = _accel.frame
        switch_hop = _accel.switch_hop
        _switch_packet = _accel.switch_packet
        form1_out = _accel.form1_out
        _build_circuit = _accel.build_circuit
    else:
        _frame = PURE["_frame"]
        switch_hop = PURE["switch_hop"]
        _switch_packet = PURE["_switch_packet"]
        form1_out = PURE["form1_out"]
        _build_circuit = None
    ACCELERATED = flag
    return previous


ACCELERATED = False
use_accelerator(_accel is not None)
