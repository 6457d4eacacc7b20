"""Property tests for pcsock.wire: round trips over all fields, checksums, per-hop rewrites."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pcsock import wire
from tests.support.site_topo import circuit_packet

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u24 = st.integers(0, 0xFFFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
keys = st.binary(min_size=16, max_size=32)
payloads = st.binary(max_size=300)

SETTINGS = settings(max_examples=150, deadline=None)


def reference_checksum(data: bytes) -> int:
    """RFC 1071 the textbook way (16-bit words, end-around carry), to check the fast one."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@SETTINGS
@given(st.binary(max_size=100))
def test_internet_checksum_matches_rfc1071_reference(data: bytes) -> None:
    assert wire.internet_checksum(data) == reference_checksum(data)


#: the fields both packet forms have (keywords of the builders)
IP_FIELDS = {
    "src": u32,
    "dst": u32,
    "metadata": u8,
    "next_proto": u8,
    "ttl": u8,
    "tos": u8,
    "ident": u16,
    "udp": st.booleans(),
    "sport": u16,
    "dport": st.integers(1, 0xFFFF),
    "payload": payloads,
}
CIRCUIT_FIELDS = {**IP_FIELDS, "label": u32, "orig_src": u32, "hop_limit": u8, "key": keys}
SERVICE_FIELDS = {**IP_FIELDS, "service_id": u24}


def _parse_and_check_ip_fields(raw: bytearray, f: dict[str, Any], form: int) -> wire.Packet:
    """Parse what a builder made of ``f``; the fields both forms carry came back."""
    pkt = wire.parse(bytes(raw), udp_port=f["dport"])
    assert pkt.form == form and pkt.encap == ("udp" if f["udp"] else "ip")
    assert (pkt.src, pkt.dst, pkt.ttl, pkt.tos) == (f["src"], f["dst"], f["ttl"], f["tos"])
    assert (pkt.metadata, pkt.next_proto) == (f["metadata"], f["next_proto"])
    assert bytes(pkt.payload) == f["payload"] and bytes(raw[4:6]) == f["ident"].to_bytes(2, "big")
    assert pkt.udp_ports == ((f["sport"], f["dport"]) if f["udp"] else None)
    return pkt


@SETTINGS
@given(st.fixed_dictionaries(CIRCUIT_FIELDS))
def test_circuit_packet_round_trips_every_field(f: dict[str, Any]) -> None:
    raw = wire.build_circuit_packet(**f)
    pkt = _parse_and_check_ip_fields(raw, f, wire.FORM_CIRCUIT)
    assert (pkt.label, pkt.orig_src, pkt.hop_limit) == (f["label"], f["orig_src"], f["hop_limit"])
    assert len(pkt) == len(raw) and raw[6] & 0x40  # DF set
    assert pkt.verify_mac(wire.HopKey(f["key"]))
    assert wire.internet_checksum(pkt.buf[:20]) == 0
    # stripping the shim gives back the original packet a legacy receiver expects
    plain = pkt.strip_shim()
    assert len(plain) == 20 + len(f["payload"]) and plain[2:4] == len(plain).to_bytes(2, "big")
    assert plain[9] == f["next_proto"] and plain[20:] == f["payload"]
    assert plain[12:20] == raw[12:20] and wire.internet_checksum(plain[:20]) == 0


@SETTINGS
@given(st.fixed_dictionaries(SERVICE_FIELDS))
def test_service_packet_round_trips_every_field(f: dict[str, Any]) -> None:
    raw = wire.build_service_packet(**f)
    pkt = _parse_and_check_ip_fields(raw, f, wire.FORM_SERVICE)
    assert pkt.service_id == f["service_id"]
    assert pkt.verify_check()


@SETTINGS
@given(
    label=u32,
    out_label=u32,
    out_dst=u32,
    hop_limit=st.integers(1, 255),
    k_in=keys,
    k_out=keys,
    udp=st.booleans(),
    udp_checksum=u16,
    payload=payloads,
    site=st.one_of(st.none(), u32),
)
def test_switch_equals_setters_and_full_recomputation(
    label: int,
    out_label: int,
    out_dst: int,
    hop_limit: int,
    k_in: bytes,
    k_out: bytes,
    udp: bool,
    udp_checksum: int,
    payload: bytes,
    site: int | None,
) -> None:
    raw = circuit_packet(label, payload, key=k_in, hop_limit=hop_limit, udp=udp)
    if udp:  # a sender that set a (made-up) UDP checksum: it must be carried along correctly
        raw[26:28] = udp_checksum.to_bytes(2, "big")
    fused = wire.parse(bytes(raw))
    fused.switch(wire.HopKey(k_in), out_label, out_dst, wire.HopKey(k_out), src=site)
    manual = wire.parse(bytes(raw))
    manual.set_label(out_label)
    manual.set_hop_limit(hop_limit - 1)
    manual.set_dst(out_dst)
    if site is not None:
        manual.set_src(site)
    manual.sign(wire.HopKey(k_out))
    assert bytes(fused) == bytes(manual)
    out = wire.parse(bytes(fused))  # verifies the IPv4 checksum in full
    assert (out.label, out.dst, out.hop_limit) == (out_label, out_dst, hop_limit - 1)
    assert out.verify_mac(wire.HopKey(k_out))
    # the incremental IPv4 checksum equals a from-scratch recomputation, bit for bit
    hdr = bytearray(fused.buf[:20])
    hdr[10:12] = b"\0\0"
    assert fused.buf[10:12] == wire.internet_checksum(hdr).to_bytes(2, "big")
    if udp:  # the shim changed: the packet goes on with no UDP checksum (protocol.md §2.2)
        assert fused.buf[26:28] == b"\0\0"


@SETTINGS
@given(
    header=st.binary(min_size=20, max_size=20),
    field=st.sampled_from([(12, 4), (16, 4), (8, 2), (0, 2), (4, 2)]),
    value=u32,
)
def test_rfc1624_incremental_update_equals_full_recomputation(
    header: bytes, field: tuple[int, int], value: int
) -> None:
    """Any IPv4 header (version 4), any 16- or 32-bit field rewrite."""
    hdr = bytearray(header)
    hdr[0] = 0x45
    hdr[10:12] = b"\0\0"
    hdr[10:12] = wire.internet_checksum(hdr).to_bytes(2, "big")
    off, width = field
    old = int.from_bytes(hdr[off : off + width], "big")
    new = value & ((1 << (8 * width)) - 1)
    if off == 0:
        new = 0x4500 | (new & 0xFF)  # keep version/IHL: only the ToS byte varies
    incremental = wire.checksum_update(int.from_bytes(hdr[10:12], "big"), old, new)
    hdr[off : off + width] = new.to_bytes(width, "big")
    hdr[10:12] = b"\0\0"
    assert incremental == wire.internet_checksum(hdr)


@SETTINGS
@given(src=u32, dst=u32, new_dst=u32, payload=st.binary(max_size=64))
def test_patch_checksum_keeps_a_udp_checksum_valid_and_leaves_none_alone(
    src: int, dst: int, new_dst: int, payload: bytes
) -> None:
    """A UDP checksum over the pseudo-header stays what a full recomputation gives (RFC 768:
    0 is sent as 0xFFFF) when the destination changes; a checksum of 0 (none sent) stays 0."""

    def udp_sum(d: int, udp: bytes) -> int:
        pseudo = src.to_bytes(4, "big") + d.to_bytes(4, "big") + bytes((0, 17))
        pseudo += len(udp).to_bytes(2, "big")
        return wire.internet_checksum(pseudo + udp) or 0xFFFF

    udp = bytearray(wire.UDP_HEADER.pack(1, 2, 8 + len(payload), 0) + payload)
    udp[6:8] = udp_sum(dst, bytes(udp)).to_bytes(2, "big")
    wire.patch_checksum(udp, 6, dst, new_dst, udp=True)
    got = int.from_bytes(udp[6:8], "big")
    udp[6:8] = b"\0\0"
    assert got == udp_sum(new_dst, bytes(udp))
    none = bytearray(udp)
    wire.patch_checksum(none, 6, dst, new_dst, udp=True)
    assert none[6:8] == b"\0\0"


@SETTINGS
@given(addr=u32, ttl=u8, tos=u8, payload=payloads)
def test_setters_keep_the_ip_checksum_valid(addr: int, ttl: int, tos: int, payload: bytes) -> None:
    pkt = wire.parse(
        wire.build_service_packet(src=1, dst=2, service_id=3, payload=payload, udp=True)
    )
    pkt.set_dst(addr)
    pkt.set_src(addr ^ 0xFFFF)
    pkt.set_ttl(ttl)
    pkt.set_tos(tos)
    again = wire.parse(bytes(pkt))
    assert (again.dst, again.src, again.ttl, again.tos) == (addr, addr ^ 0xFFFF, ttl, tos)
    assert again.verify_check()
