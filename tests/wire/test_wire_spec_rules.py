"""The rules of docs/protocol.md that a §9 vector cannot show: the order of the receive checks
(§2.4), the checksum update at its ±0 edge (§5.3), bytes past the IPv4 total length, ``src=None``,
the destination check left to the site, route errors after packet errors, form-2 shims with any
ToS. Like every codec test, each runs on the C accelerator and on the pure-Python reference."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcsock import wire
from tests.support.wire_vectors import DOC, by_name, packet

KEY = wire.HopKey(bytes(range(16)))
OTHER = wire.HopKey(bytes(range(16, 32)))
SITE = wire.ip2int("198.18.1.1")


def reason(data: bytes | bytearray) -> str:
    """The reason both entry points give for ``data`` (they must agree)."""
    with pytest.raises(wire.WireError) as a:
        wire.parse(data)
    with pytest.raises(wire.WireError) as b:
        wire.switch_hop(data, {}.get)
    assert a.value.reason == b.value.reason
    return a.value.reason


def fix_ip(raw: bytearray) -> bytearray:
    """IPv4 total length = the bytes present, checksum recomputed."""
    ihl = (raw[0] & 15) * 4
    raw[2:4] = len(raw).to_bytes(2, "big")
    raw[10:12] = b"\0\0"
    raw[10:12] = wire.internet_checksum(raw[:ihl]).to_bytes(2, "big")
    return raw


# --- §2.4: the order of the receive checks --------------------------------------------------


@pytest.mark.parametrize("first", [0x45, 0xC5, 0x65, 0x4F, 0x44, 0x00, 0xFF])
def test_fewer_than_20_bytes_is_truncated_whatever_they_say(first: int) -> None:
    v1 = packet(by_name()["V1"])
    for n in range(20):
        data = bytes([first]) + v1[1:n] if n else b""
        assert reason(data) == "truncated", n
    if first >> 4 != 4:  # with 20 bytes the version is read
        assert reason(bytes([first]) + v1[1:20]) == "not_ipv4"


def _v1(**change: int) -> bytearray:
    raw = bytearray(packet(by_name()["V1"]))
    for off, value in change.items():
        raw[int(off[1:])] = value
    return raw


def _v2() -> bytearray:
    return bytearray(packet(by_name()["V2"]))


ORDER = [
    # (what the packet breaks, packet, expected reason): the earlier rule of §2.4 wins
    ("IHL 15 in 49 bytes (4) and checksum (7)", _v1(b0=0x4F), "truncated"),
    ("IHL 15 in 49 bytes (4) and total length 16 (5)", _v1(b0=0x4F, b3=16), "truncated"),
    ("IHL 4 (3) and checksum (7)", _v1(b0=0x44), "bad_ip_header_length"),
    ("version 6 (2) and IHL 4 (3)", _v1(b0=0x64), "not_ipv4"),
    ("total length 16 (5) and checksum (7)", _v1(b2=0, b3=16), "bad_ip_total_length"),
    ("total length 60 > 49 bytes (6) and checksum (7)", _v1(b3=60), "truncated"),
    ("checksum (7) and fragment offset (8)", _v1(b7=1), "bad_ip_checksum"),
    ("fragment (8) and shim version 2 (10)", fix_ip(_v1(b6=0x60, b20=0x21)), "fragment"),
    ("shim version 2 (10) and form 3", fix_ip(_v1(b20=0x23)), "bad_version"),
    ("shim form 3 in a 5-byte shim", fix_ip(_v1(b20=0x13)[:25]), "unknown_form"),
    ("shim version 2 in a 1-byte shim", fix_ip(_v1(b20=0x21)[:21]), "truncated"),
    ("form-1 shim of 10 bytes", fix_ip(_v1()[:30]), "truncated"),
]


@pytest.mark.parametrize(("what", "data", "expect"), ORDER, ids=[o[0] for o in ORDER])
def test_the_first_broken_rule_of_section_2_4_gives_the_reason(
    what: str, data: bytearray, expect: str
) -> None:
    assert reason(bytes(data)) == expect


def test_udp_mode_fragment_comes_before_the_udp_length_before_the_shim() -> None:
    raw = _v2()
    raw[24:26] = (99).to_bytes(2, "big")  # UDP length wrong (9)
    raw[28] = 0x21  # and shim version 2 (10)
    assert reason(bytes(fix_ip(bytearray(raw)))) == "bad_udp_length"
    raw[6] = 0x20  # and more fragments (8)
    assert reason(bytes(fix_ip(raw))) == "fragment"


def test_a_udp_6253_datagram_with_a_short_udp_header_is_plain() -> None:
    raw = fix_ip(_v2()[:27])  # 7 bytes of IPv4 payload
    assert wire.parse(bytes(raw)).form == wire.FORM_NONE
    assert wire.switch_hop(bytes(raw), {}.get) is None


# --- §2.4 / §5.3: bytes past the total length -------------------------------------------------


def _v5_route() -> dict[int, wire.Route]:
    h = by_name()["V5"]
    route = (
        wire.HopKey(bytes.fromhex(h["in_key"])),
        int(h["out_label"], 16),
        wire.ip2int(h["out_dst"]),
        wire.HopKey(bytes.fromhex(h["out_key"])),
    )
    return {0x00C0FFEE: route}


@pytest.mark.parametrize("pad", [1, 11, 200])
def test_bytes_past_the_total_length_are_ignored_and_not_forwarded(pad: int) -> None:
    v1, v5 = packet(by_name()["V1"]), packet(by_name()["V5"])
    padded = v1 + b"\xee" * pad
    assert bytes(wire.parse(padded).buf) == v1
    out = wire.switch_hop(padded, _v5_route().get, SITE)
    assert out is not None and bytes(out) == v5
    pkt = wire.parse(bytearray(padded))
    pkt.switch(*_v5_route()[0x00C0FFEE], src=SITE)
    assert bytes(pkt) == v5


# --- §5.3 step 1: the destination is the site's check -----------------------------------------


def test_switch_hop_does_not_check_that_the_packet_is_for_the_caller() -> None:
    other = "198.18.77.7"
    raw = bytes(wire.build_circuit_packet(src="198.18.0.1", dst=other, label=5, key=KEY))
    out = wire.switch_hop(raw, {5: (KEY, 6, wire.ip2int("198.18.2.1"), OTHER)}.get, SITE)
    assert out is not None and wire.parse(out).verify_mac(OTHER)
    # the MAC covers the arriving destination: MAC'd for another address, it fails
    moved = wire.parse(raw)
    moved.set_dst(SITE)
    with pytest.raises(wire.WireError) as info:
        wire.switch_hop(bytes(moved), {5: (KEY, 6, 1, OTHER)}.get, SITE)
    assert info.value.reason == "bad_mac"


# --- §5.3 step 6: src=None ----------------------------------------------------------------------


def test_src_none_keeps_the_arriving_source() -> None:
    v1, v5 = packet(by_name()["V1"]), packet(by_name()["V5"])
    out = wire.switch_hop(v1, _v5_route().get, None)
    assert out is not None
    got = wire.parse(out)  # verifies the IPv4 checksum
    assert got.src == wire.ip2int("198.18.0.1") and got.dst == wire.ip2int("198.18.2.1")
    # everything but the source and the header checksum is the hop vector's
    assert out[:10] == v5[:10] and out[12:16] == v1[12:16] and out[16:] == v5[16:]
    pkt = wire.parse(v1)
    pkt.switch(*_v5_route()[0x00C0FFEE])
    assert bytes(pkt) == bytes(out)


# --- §5.3: route errors come after packet errors -------------------------------------------------


@pytest.mark.parametrize(
    ("route", "src"),
    [((KEY, 2**32, 1, KEY), SITE), ((KEY, 1, -1, KEY), SITE), ((KEY, 1, 1, KEY), 2**32)],
)
def test_a_bad_route_value_is_reported_only_for_a_packet_that_passes_its_checks(
    route: wire.Route, src: int
) -> None:
    good = wire.build_circuit_packet(src="198.18.0.1", dst="198.18.1.1", label=5, key=KEY)
    forged = bytearray(good)
    forged[-1] ^= 1  # the check (no payload: the shim ends the packet)
    spent = wire.build_circuit_packet(
        src="198.18.0.1", dst="198.18.1.1", label=5, key=KEY, hop_limit=0
    )
    for data, expect in ((forged, "bad_mac"), (spent, "hop_limit_exceeded"), (good, "bad_field")):
        with pytest.raises(wire.WireError) as info:
            wire.switch_hop(bytes(data), {5: route}.get, src)
        assert info.value.reason == expect
        pkt = wire.parse(bytes(data))
        with pytest.raises(wire.WireError) as info:
            pkt.switch(*route, src=src)
        assert info.value.reason == expect and bytes(pkt) == bytes(data)


# --- §5.3: the checksum update, and its ±0 edge --------------------------------------------------


def eqn3_ones_complement(hc: int, old_words: list[int], new_words: list[int]) -> int:
    """RFC 1624 eqn. 3 evaluated literally in 16-bit one's-complement arithmetic."""

    def add(a: int, b: int) -> int:
        s = a + b
        return (s & 0xFFFF) + (s >> 16)

    s = ~hc & 0xFFFF
    for w in old_words:
        s = add(s, ~w & 0xFFFF)
    for w in new_words:
        s = add(s, w)
    return ~s & 0xFFFF


def _words(*addrs: int) -> list[int]:
    return [w for a in addrs for w in (a >> 16, a & 0xFFFF)]


def test_the_documented_checksum_example() -> None:
    """docs/protocol.md §5.3: 255.255.255.255 -> 0.0.0.0 under an incoming checksum 0xFFFF."""
    text = DOC.read_text()
    before = "45ac 001d 7323 4000 40fd ffff c612 0003 ffff ffff | 1211 0a0b 0c07 401f b6"
    after = "45ac 001d 7323 4000 40fd 0000 c612 0003 0000 0000 | 1211 0a0b 0c07 401f b6"
    assert f"before: {before}" in text and f"after:  {after}" in text
    raw = bytes.fromhex(before.replace(" ", "").replace("|", ""))
    pkt = wire.parse(raw)  # 0xFFFF verifies
    assert pkt.form == wire.FORM_SERVICE and pkt.verify_check()
    pkt.set_dst("0.0.0.0")
    assert bytes(pkt) == bytes.fromhex(after.replace(" ", "").replace("|", ""))
    # the full recomputation agrees; literal eqn. 3 does not (the edge the rule settles)
    assert wire.internet_checksum(bytes(pkt.buf[:10]) + bytes(2) + bytes(pkt.buf[12:20])) == 0
    assert eqn3_ones_complement(0xFFFF, _words(0xFFFFFFFF), _words(0)) == 0xFFFF


def _edge_packet() -> bytes:
    """A form-1 packet from and to 255.255.255.255 whose header checksum is sent as 0xFFFF."""
    ones = 0xFFFFFFFF
    probe = wire.build_circuit_packet(src=ones, dst=ones, label=5, key=KEY)
    ident = int.from_bytes(probe[10:12], "big")  # makes the canonical checksum 0x0000
    raw = wire.build_circuit_packet(src=ones, dst=ones, label=5, key=KEY, ident=ident)
    assert raw[10:12] == b"\0\0"
    raw[10:12] = b"\xff\xff"
    return bytes(raw)


def test_switch_hop_at_the_minus_zero_edge_writes_what_a_recomputation_gives() -> None:
    raw = _edge_packet()
    wire.parse(raw)  # valid
    out = wire.switch_hop(raw, {5: (KEY, 6, 0, OTHER)}.get, 0)
    assert out is not None
    assert out[10:12] == b"\0\0"  # the rule; literal eqn. 3 would write 0xFFFF:
    assert eqn3_ones_complement(0xFFFF, _words(0xFFFFFFFF, 0xFFFFFFFF), _words(0, 0)) == 0xFFFF
    pkt = wire.parse(raw)
    pkt.switch(KEY, 6, 0, OTHER, src=0)
    assert bytes(pkt) == bytes(out)


@settings(max_examples=150, deadline=None)
@given(
    src=st.integers(0, 0xFFFFFFFF),
    dst=st.integers(0, 0xFFFFFFFF),
    new_src=st.integers(0, 0xFFFFFFFF),
    new_dst=st.integers(0, 0xFFFFFFFF),
    ident=st.integers(0, 0xFFFF),
    udp=st.booleans(),
)
def test_the_hop_checksum_always_equals_a_full_recomputation(
    src: int, dst: int, new_src: int, new_dst: int, ident: int, udp: bool
) -> None:
    raw = wire.build_circuit_packet(src=src, dst=dst, label=5, key=KEY, ident=ident, udp=udp)
    if raw[10:12] == b"\0\0":  # send the other zero too: the result must not depend on it
        raw[10:12] = b"\xff\xff"
    out = wire.switch_hop(bytes(raw), {5: (KEY, 6, new_dst, OTHER)}.get, new_src)
    assert out is not None
    header = bytes(out[:10]) + bytes(2) + bytes(out[12:20])
    assert int.from_bytes(out[10:12], "big") == wire.internet_checksum(header)


# --- §4.3: a form-2 shim is accepted with any ToS ------------------------------------------------


@pytest.mark.parametrize("tos", [0x00, wire.TOS_SERVICE, wire.TOS_SERVICE | 3, 0x10])
def test_a_form2_shim_parses_and_verifies_whatever_the_tos(tos: int) -> None:
    raw = wire.build_service_packet(src="198.18.0.3", dst="198.18.9.9", service_id=7, tos=tos)
    pkt = wire.parse(raw)
    assert pkt.form == wire.FORM_SERVICE and pkt.verify_check() and pkt.tos == tos


# --- the spec names files that exist ------------------------------------------------------------


def test_every_file_the_spec_names_exists() -> None:
    root = DOC.parents[1]
    named = set(re.findall(r"`((?:tests|pcsock|pcsite_lite|benchmarks|contrib)/[\w/.-]+\.\w+)`",
                           DOC.read_text()))  # fmt: skip
    assert "tests/wire/test_wire_vectors.py" in named
    missing = sorted(p for p in named if not (root / p).exists())
    assert not missing, missing
