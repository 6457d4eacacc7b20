"""``wire.switch_hop``, the fused per-hop entry point: same acceptance as ``parse`` (every
malformed input rejected with the same reason), same output as ``Packet.switch`` and the
individual setters, None for what it does not switch, nothing written when it raises."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcsock import wire
from tests.support.site_topo import SENDER, circuit_packet
from tests.support.wire_vectors import load, packet

VECTORS = load("vector") + load("hop")
IDS = [v["name"] for v in VECTORS]
ANY_KEY = wire.HopKey(bytes(16))
u32 = st.integers(0, 2**32 - 1)


def _key(v: dict[str, str]) -> wire.HopKey:
    for name in ("key", "out_key"):
        if name in v:
            return wire.HopKey(bytes.fromhex(v[name]))
    return ANY_KEY


def _with_ip_options(raw: bytes | bytearray) -> bytearray:
    """The same packet with a 4-byte IPv4 option (four NOPs): IHL 6, shim at offset 24+."""
    out = bytearray(raw[:20]) + b"\x01\x01\x01\x01" + raw[20:]
    out[0] = 0x46
    out[2:4] = len(out).to_bytes(2, "big")
    out[10:12] = b"\0\0"
    out[10:12] = wire.internet_checksum(out[:24]).to_bytes(2, "big")
    return out


def _outcome(fn: object) -> tuple[str, bytes | None]:
    """("ok", output bytes), ("none", None) or ("error:<reason>", None)."""
    try:
        out = fn()  # type: ignore[operator]
    except wire.WireError as exc:
        return f"error:{exc.reason}", None
    return ("none", None) if out is None else ("ok", bytes(out))


def _via_parse(raw: bytes | bytearray, routes: dict[int, wire.Route], src: int | None) -> object:
    """The reference: parse, look the label up, Packet.switch."""
    pkt = wire.parse(bytes(raw))
    if pkt.form != wire.FORM_CIRCUIT:
        return None
    route = routes.get(pkt.label)
    if route is None:
        return None
    pkt.switch(*route, src=src)
    return pkt.buf


@settings(max_examples=200, deadline=None)
@given(
    label=u32,
    out_label=u32,
    out_dst=u32,
    hop_limit=st.integers(0, 255),
    udp=st.booleans(),
    udp_checksum=st.integers(0, 0xFFFF),
    options=st.booleans(),
    site=st.one_of(st.none(), u32),
    payload=st.binary(max_size=40),
    known=st.booleans(),
)
def test_switch_hop_equals_parse_and_packet_switch(
    label: int,
    out_label: int,
    out_dst: int,
    hop_limit: int,
    udp: bool,
    udp_checksum: int,
    options: bool,
    site: int | None,
    payload: bytes,
    known: bool,
) -> None:
    k_in, k_out = wire.HopKey(b"i" * 16), wire.HopKey(b"o" * 32)
    raw = circuit_packet(label, payload, key=k_in, hop_limit=hop_limit, udp=udp)
    if udp:
        raw[26:28] = udp_checksum.to_bytes(2, "big")
    if options:
        raw = _with_ip_options(raw)
    routes = {label if known else label ^ 1: (k_in, out_label, out_dst, k_out)}
    expected = _outcome(lambda: _via_parse(raw, routes, site))
    got = _outcome(lambda: wire.switch_hop(bytes(raw), routes.get, site))
    assert got == expected
    if not known:
        assert got == ("none", None)
    elif hop_limit == 0:
        assert got == ("error:hop_limit_exceeded", None)
    else:
        assert got[0] == "ok" and got[1] is not None
        out = wire.parse(got[1])  # verifies the IPv4 header checksum in full
        assert (out.label, out.dst, out.hop_limit) == (out_label, out_dst, hop_limit - 1)
        assert out.src == (wire.ip2int(SENDER) if site is None else site)
        assert out.verify_mac(k_out) and out.ihl == (24 if options else 20)


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_every_truncation_and_bit_flip_is_judged_like_parse(v: dict[str, str]) -> None:
    """switch_hop shares parse's checks: for every truncation and single-bit flip of every
    vector, it raises the same reason (or switches to the same bytes) as parse + switch."""
    raw = packet(v)
    key = _key(v)
    good = wire.parse(raw)
    label = good.label if good.form == wire.FORM_CIRCUIT else 0
    routes = {label: (key, 5, wire.ip2int("198.18.5.5"), ANY_KEY)}
    inputs = [raw[:cut] for cut in range(len(raw))]
    for byte in range(len(raw)):
        for bit in range(8):
            bad = bytearray(raw)
            bad[byte] ^= 1 << bit
            inputs.append(bytes(bad))
    errors = 0
    for data in inputs:
        expected = _outcome(lambda d=data: _via_parse(d, routes, None))
        got = _outcome(lambda d=data: wire.switch_hop(d, routes.get))
        assert got == expected, data.hex()
        errors += got[0].startswith("error:")
    assert errors >= len(raw)  # every truncation at least


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    routes = {n: (ANY_KEY, 1, 1, ANY_KEY) for n in range(4)}
    got = _outcome(lambda: wire.switch_hop(data, routes.get))
    assert got == _outcome(lambda: _via_parse(data, routes, None))
    if got[0].startswith("error:"):
        assert got[0][6:] in wire.REASONS


def test_not_switched_returns_none_and_leaves_the_packet_alone() -> None:
    routes = {7: (ANY_KEY, 8, 9, ANY_KEY)}
    service = wire.build_service_packet(src=1, dst=2, service_id=7)
    plain = wire.build_ipv4(src=1, dst=2, proto=17, payload=b"x" * 12)
    unknown = wire.build_circuit_packet(src=1, dst=2, label=6, key=ANY_KEY)
    for raw in (service, plain, unknown):
        before = bytes(raw)
        assert wire.switch_hop(raw, routes.get) is None
        assert raw == before


def test_bytearray_input_is_switched_in_place() -> None:
    raw = wire.build_circuit_packet(src=1, dst=2, label=7, key=ANY_KEY, payload=b"abc")
    out = wire.switch_hop(raw, {7: (ANY_KEY, 8, 9, ANY_KEY)}.get, 3)
    assert out is raw and wire.parse(raw).label == 8
    longer = bytearray(raw) + b"trailing"  # beyond the IP total length: a trimmed copy
    out = wire.switch_hop(longer, {8: (ANY_KEY, 9, 9, ANY_KEY)}.get)
    assert out is not None and out is not longer and len(out) == len(raw)


@pytest.mark.parametrize(
    "route, src",
    [
        ((ANY_KEY, 2**32, 5, ANY_KEY), None),
        ((ANY_KEY, 5, -1, ANY_KEY), None),
        ((ANY_KEY, 5, 5, ANY_KEY), 2**32),
        ((ANY_KEY, 5, 5, ANY_KEY), -1),
        ((ANY_KEY, "5", 5, ANY_KEY), None),
        ((ANY_KEY, 5, 5, ANY_KEY), "198.18.0.1"),
        ((ANY_KEY, 5, 5, ANY_KEY), 1.0),
    ],
)
def test_bad_route_values_raise_bad_field_and_write_nothing(route: object, src: object) -> None:
    for udp in (False, True):
        raw = wire.build_circuit_packet(src=1, dst=2, label=7, key=ANY_KEY, udp=udp)
        before = bytes(raw)
        with pytest.raises(wire.WireError) as info:
            wire.switch_hop(raw, {7: route}.get, src)  # type: ignore[dict-item,arg-type]
        assert info.value.reason == "bad_field" and raw == before


def test_bad_mac_and_hop_limit_write_nothing() -> None:
    raw = wire.build_circuit_packet(src=1, dst=2, label=7, key=ANY_KEY, hop_limit=0)
    before = bytes(raw)
    with pytest.raises(wire.WireError) as info:
        wire.switch_hop(raw, {7: (wire.HopKey(b"x" * 16), 1, 1, ANY_KEY)}.get)
    assert info.value.reason == "bad_mac" and raw == before
    with pytest.raises(wire.WireError) as info:
        wire.switch_hop(raw, {7: (ANY_KEY, 1, 1, ANY_KEY)}.get)
    assert info.value.reason == "hop_limit_exceeded" and raw == before


def test_ip_checksum_is_verified_unless_disabled() -> None:
    raw = wire.build_circuit_packet(src=1, dst=2, label=7, key=ANY_KEY)
    raw[10] ^= 0xFF
    routes = {7: (ANY_KEY, 8, 9, ANY_KEY)}
    with pytest.raises(wire.WireError) as info:
        wire.switch_hop(bytes(raw), routes.get)
    assert info.value.reason == "bad_ip_checksum"
    assert wire.switch_hop(bytes(raw), routes.get, verify_ip_checksum=False) is not None
