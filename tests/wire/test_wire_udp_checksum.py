"""The outer UDP checksum in UDP mode (protocol.md §2.2): a site never forwards a wrong one."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from pcsock import wire


def udp_checksum(pkt: bytes) -> int:
    """RFC 768 checksum of the UDP datagram in ``pkt`` (field taken as zero)."""
    ihl = (pkt[0] & 15) * 4
    seg = bytearray(pkt[ihl:])
    seg[6:8] = b"\0\0"
    pseudo = pkt[12:20] + struct.pack("!BBH", 0, 17, len(seg))
    return wire.internet_checksum(pseudo + seg) or 0xFFFF


def with_real_udp_checksum(raw: bytearray) -> bytearray:
    raw[26:28] = udp_checksum(bytes(raw)).to_bytes(2, "big")
    return raw


u32 = st.integers(1, 0xFFFFFFFE)


@given(dst=u32, payload=st.binary(max_size=64))
def test_address_rewrite_alone_keeps_a_senders_checksum_valid(dst: int, payload: bytes) -> None:
    raw = with_real_udp_checksum(
        wire.build_circuit_packet(
            src="198.18.0.1", dst="198.18.1.1", label=5, key=bytes(16), payload=payload, udp=True
        )
    )
    pkt = wire.parse(bytes(raw))
    pkt.set_dst(dst)
    got = int.from_bytes(pkt.buf[26:28], "big")
    assert got == udp_checksum(bytes(pkt.buf))


@given(out_label=u32, metadata=st.integers(0, 255), payload=st.binary(max_size=64))
def test_any_shim_change_sends_no_checksum_rather_than_a_wrong_one(
    out_label: int, metadata: int, payload: bytes
) -> None:
    key = wire.HopKey(bytes(16))
    raw = with_real_udp_checksum(
        wire.build_circuit_packet(
            src="198.18.0.1", dst="198.18.1.1", label=5, key=key, payload=payload, udp=True
        )
    )
    for change in (
        lambda p: p.set_label(out_label),
        lambda p: p.set_metadata(metadata),
        lambda p: p.set_hop_limit(3),
        lambda p: p.sign(key),
        lambda p: p.switch(
            key, out_label, wire.ip2int("198.18.2.2"), key, src=wire.ip2int("198.18.1.1")
        ),
    ):
        pkt = wire.parse(bytes(raw))
        change(pkt)
        assert pkt.buf[26:28] == b"\0\0"
    hop = wire.switch_hop(bytes(raw), {5: (key, out_label, wire.ip2int("198.18.2.2"), key)}.get)
    assert hop is not None and hop[26:28] == b"\0\0"


def test_form2_metadata_update_in_udp_mode_drops_the_checksum() -> None:
    raw = with_real_udp_checksum(
        wire.build_service_packet(src="198.18.0.1", dst="198.18.9.9", service_id=7, udp=True)
    )
    pkt = wire.parse(bytes(raw))
    pkt.set_metadata(9)
    pkt.seal()
    assert pkt.buf[26:28] == b"\0\0" and pkt.verify_check()
