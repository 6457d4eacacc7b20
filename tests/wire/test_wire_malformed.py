"""Malformed input: exhaustive truncation and single-bit flips of every spec vector, fuzzing,
and out-of-range values. Everything raises only WireError with a documented reason, or (for
flips in fields no check covers) parses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcsock import wire
from tests.support.wire_vectors import load, packet

VECTORS = load("vector") + load("hop")
IDS = [v["name"] for v in VECTORS]


def _key(v: dict[str, str]) -> bytes | None:
    for name in ("key", "out_key"):
        if name in v:
            return bytes.fromhex(v[name])
    return None


def site_receive(raw: bytes | bytearray, key: bytes | None) -> wire.Packet:
    """A site's checks on arrival (docs/protocol.md §2.4, §5.3 steps 1-3, §5.4)."""
    pkt = wire.parse(raw)
    if pkt.form == wire.FORM_CIRCUIT:
        key = key or bytes(16)  # a form-2 vector mutated into form 1: any key
        pkt.switch(wire.HopKey(key), 1, 1, wire.HopKey(key))
    elif pkt.form == wire.FORM_SERVICE and not pkt.verify_check():
        raise wire.WireError("bad_check")
    return pkt


def _fix_ip(raw: bytearray) -> bytearray:
    """Make the IPv4 total length and checksum agree with the bytes present."""
    raw[2:4] = len(raw).to_bytes(2, "big")
    raw[10:12] = b"\0\0"
    raw[10:12] = wire.internet_checksum(raw[:20]).to_bytes(2, "big")
    return raw


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_every_truncation_raises_truncated(v: dict[str, str]) -> None:
    raw = packet(v)
    for cut in range(len(raw)):
        with pytest.raises(wire.WireError) as info:
            wire.parse(raw[:cut])
        assert info.value.reason == "truncated", cut
    site_receive(raw, _key(v))  # the whole packet is fine


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_every_truncation_with_consistent_ip_header_is_rejected(v: dict[str, str]) -> None:
    """Cut anywhere inside the (UDP header and) shim, with the IPv4 header made consistent:
    the shim or UDP layer notices."""
    raw = packet(v)
    first = wire.parse(raw)
    for cut in range(20, first.payload_off):
        short = _fix_ip(bytearray(raw[:cut]))
        try:
            pkt = site_receive(short, _key(v))
        except wire.WireError as exc:
            assert exc.reason in {"truncated", "bad_udp_length"}, (cut, exc.reason)
        else:  # fewer than 8 UDP bytes: not recognisably UDP mode, so a plain packet
            assert first.encap == "udp" and cut < 28 and pkt.form == wire.FORM_NONE


def _flip_expectation(pkt: wire.Packet, byte: int) -> str:
    """What a single-bit flip at ``byte`` must lead to: "reject", "parse", or "plain"."""
    if byte < pkt.ihl:
        return "reject"  # the IPv4 header checksum covers it
    if pkt.encap == "udp" and byte < pkt.ihl + 8:
        rel = byte - pkt.ihl
        return {0: "parse", 1: "parse", 2: "plain", 3: "plain", 6: "parse", 7: "parse"}.get(
            rel, "reject"
        )  # source port and UDP checksum unchecked; destination port: no longer ours
    if byte < pkt.payload_off:
        return "reject"  # the shim: the MAC (form 1) or the check (form 2) covers every byte
    return "parse"  # the payload is not covered by the shim (its transport checks it)


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_every_single_bit_flip_is_rejected_or_harmless(v: dict[str, str]) -> None:
    raw = packet(v)
    good = wire.parse(raw)
    outcomes: dict[str, int] = {"reject": 0, "parse": 0, "plain": 0}
    for byte in range(len(raw)):
        expect = _flip_expectation(good, byte)
        for bit in range(8):
            bad = bytearray(raw)
            bad[byte] ^= 1 << bit
            try:
                pkt = site_receive(bad, _key(v))
            except wire.WireError as exc:
                assert exc.reason in wire.REASONS
                assert expect == "reject", (byte, bit, exc.reason)
            else:
                assert expect in {"parse", "plain"}, (byte, bit)
                if expect == "plain":
                    assert pkt.form == wire.FORM_NONE
                else:
                    assert pkt.form == good.form
            outcomes[expect] += 1
    assert outcomes["reject"] >= 8 * (good.ihl + good.payload_off - good.shim_off)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    try:
        site_receive(data, bytes(16))
    except wire.WireError as exc:
        assert exc.reason in wire.REASONS


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(VECTORS),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=4),
    st.booleans(),
)
def test_mutated_vectors_raise_only_wire_error(
    v: dict[str, str], edits: list[tuple[int, int]], fix_ip: bool
) -> None:
    raw = bytearray(packet(v))
    for pos, value in edits:
        raw[pos % len(raw)] = value
    if fix_ip and raw[0] == 0x45:
        raw[10:12] = b"\0\0"
        raw[10:12] = wire.internet_checksum(raw[:20]).to_bytes(2, "big")
    try:
        pkt = site_receive(raw, _key(v))
    except wire.WireError as exc:
        assert exc.reason in wire.REASONS
    else:
        repr(pkt)  # every accessor that applies works


@pytest.mark.parametrize(
    "call",
    [
        lambda: wire.build_circuit_packet(src=1, dst=2, label=-1, key=None),
        lambda: wire.build_circuit_packet(src=1, dst=2, label=2**32, key=None),
        lambda: wire.build_circuit_packet(src=1, dst=2, label=1, key=b"short"),
        lambda: wire.build_circuit_packet(src=1, dst=2, label=1, key=None, hop_limit=256),
        lambda: wire.build_circuit_packet(src=1, dst=2, label=1, key=None, metadata=-1),
        lambda: wire.build_circuit_packet(src="1.2.3", dst=2, label=1, key=None),
        lambda: wire.build_circuit_packet(src=1, dst=2**32, label=1, key=None),
        lambda: wire.build_circuit_packet(
            src=1, dst=2, label=1, key=None, udp=True, payload=bytes(65500)
        ),
        lambda: wire.build_service_packet(src=1, dst=2, service_id=2**24),
        lambda: wire.build_service_packet(src=1, dst=2, service_id=1, next_proto=300),
        lambda: wire.build_service_packet(src=1, dst=2, service_id=1, payload=bytes(65520)),
        lambda: wire.build_ipv4(src=1, dst=2, proto=1, payload=b"", ttl=-1),
        lambda: wire.HopKey(bytes(33)),
        lambda: wire.ip2int("198.18.0.256"),
    ],
)
def test_out_of_range_values_raise_bad_field(call: object) -> None:
    with pytest.raises(wire.WireError) as info:
        call()  # type: ignore[operator]
    assert info.value.reason == "bad_field"


def test_setters_and_switch_reject_bad_values_and_leave_the_packet_unchanged() -> None:
    key = wire.HopKey(bytes(16))
    raw = bytes(wire.build_circuit_packet(src=1, dst=2, label=3, key=key))
    pkt = wire.parse(raw)
    for bad in (
        lambda: pkt.set_label(2**32),
        lambda: pkt.set_hop_limit(-1),
        lambda: pkt.set_metadata(256),
        lambda: pkt.set_dst(2**32),
        lambda: pkt.set_dst("nope"),
        lambda: pkt.set_tos(999),
        lambda: pkt.switch(key, 2**32, 5, key),
        lambda: pkt.switch(key, 5, -1, key),
    ):
        with pytest.raises(wire.WireError) as info:
            bad()
        assert info.value.reason == "bad_field"
        assert bytes(pkt) == raw
    with pytest.raises(wire.WireError) as info:
        pkt.switch(wire.HopKey(bytes(range(16))), 5, 5, key)
    assert info.value.reason == "bad_mac" and bytes(pkt) == raw
    service = wire.parse(wire.build_service_packet(src=1, dst=2, service_id=1))
    for wrong in (lambda: service.label, lambda: service.switch(key, 1, 1, key)):
        with pytest.raises(wire.WireError) as info:
            wrong()
        assert info.value.reason == "unknown_form"
