"""Basic behaviour of pcsock.wire (the full vector, property and fuzz suites live beside it)."""

from __future__ import annotations

import pytest

from pcsock import wire


def test_circuit_packet_round_trips_and_mac_binds_destination() -> None:
    key = wire.HopKey(b"k" * 16)
    raw = wire.build_circuit_packet(
        src="198.18.0.1",
        dst="198.18.1.1",
        label=0xDEADBEEF,
        key=key,
        payload=b"data",
        metadata=9,
        hop_limit=5,
    )
    pkt = wire.parse(raw)
    assert (pkt.form, pkt.encap, pkt.label, pkt.metadata, pkt.hop_limit) == (
        1,
        "ip",
        0xDEADBEEF,
        9,
        5,
    )
    assert pkt.verify_mac(key)
    assert not pkt.verify_mac(wire.HopKey(b"x" * 16))
    pkt.set_dst("198.18.2.2")  # destination is covered by the MAC
    assert not pkt.verify_mac(key)
    pkt.sign(key)
    assert pkt.verify_mac(key)
    # incremental checksum equals a full recomputation
    assert wire.internet_checksum(pkt.buf[:20]) == 0
    wire.parse(bytes(pkt))


def test_label_swap_and_re_mac_per_hop() -> None:
    k_in, k_out = wire.HopKey(b"a" * 16), wire.HopKey(b"b" * 32)
    pkt = wire.parse(
        wire.build_circuit_packet(
            src="198.18.0.1", dst="198.18.1.1", label=1, key=k_in, payload=b"x", udp=True
        )
    )
    assert pkt.encap == "udp" and pkt.verify_mac(k_in)
    pkt.set_label(2)
    pkt.set_hop_limit(pkt.hop_limit - 1)
    pkt.set_dst("198.18.3.3")
    pkt.sign(k_out)
    again = wire.parse(bytes(pkt))
    assert again.label == 2 and again.verify_mac(k_out) and bytes(again.payload) == b"x"


def test_service_packet_check_and_strip() -> None:
    raw = wire.build_service_packet(
        src="198.18.0.1", dst="198.18.9.9", service_id=0xABCDEF, payload=b"hello", metadata=1
    )
    pkt = wire.parse(raw)
    assert pkt.form == 2 and pkt.service_id == 0xABCDEF and pkt.tos == wire.TOS_SERVICE
    assert pkt.verify_check()
    pkt.set_metadata(2)
    assert not pkt.verify_check()
    pkt.seal()
    assert pkt.verify_check()
    plain = wire.parse(pkt.strip_shim())
    assert plain.form == 0 and plain.proto == 17 and bytes(plain.payload) == b"hello"


@pytest.mark.parametrize("cut", range(0, 36))
def test_truncation_raises_wire_error_only(cut: int) -> None:
    raw = bytes(wire.build_circuit_packet(src=1, dst=2, label=3, key=None, payload=b"abc"))
    try:
        pkt = wire.parse(raw[:cut])
    except wire.WireError as exc:
        assert exc.reason in wire.REASONS
    else:  # only the complete packet parses
        assert cut >= len(raw) and pkt.form == 1


def test_plain_ipv4_is_form_none() -> None:
    pkt = wire.parse(wire.build_ipv4(src="198.18.0.1", dst="198.18.0.2", proto=6, payload=b"t"))
    assert pkt.form == wire.FORM_NONE and pkt.encap == "none"
    with pytest.raises(wire.WireError) as info:
        _ = pkt.label
    assert info.value.reason == "unknown_form"
