"""docs/protocol.md §9 test vectors, checked byte for byte (read from the doc itself)."""

from __future__ import annotations

import hashlib

import pytest

from pcsock import wire
from tests.support.wire_vectors import by_name, load, num, packet

VECTORS = load("vector")
HOPS = load("hop")
REJECTS = load("reject")


def test_the_spec_has_the_vectors_the_issue_asks_for() -> None:
    kinds = {(v["form"], v["encap"]) for v in VECTORS}
    assert kinds == {("1", "ip"), ("1", "udp"), ("2", "ip"), ("2", "udp")}
    assert len(VECTORS) + len(HOPS) >= 6
    assert all(num(v, "metadata") != 0 for v in VECTORS)
    assert {r["expect"] for r in REJECTS} >= {"bad_mac", "bad_check", "hop_limit_exceeded"}


def _build(v: dict[str, str]) -> bytearray:
    common = dict(
        src=v["src"],
        dst=v["dst"],
        metadata=num(v, "metadata"),
        next_proto=num(v, "next_proto"),
        ttl=num(v, "ttl"),
        tos=num(v, "tos"),
        ident=num(v, "ident"),
        udp=v["encap"] == "udp",
        payload=bytes.fromhex(v["payload"]),
    )
    if v["form"] == "1":
        return wire.build_circuit_packet(
            label=num(v, "label"),
            key=bytes.fromhex(v["key"]),
            orig_src=v["orig_src"],
            hop_limit=num(v, "hop_limit"),
            **common,  # type: ignore[arg-type]
        )
    return wire.build_service_packet(service_id=num(v, "service_id"), **common)  # type: ignore[arg-type]


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_builds_byte_for_byte(v: dict[str, str]) -> None:
    assert bytes(_build(v)).hex() == v["packet"]


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_parses_to_its_listed_fields(v: dict[str, str]) -> None:
    raw = packet(v)
    pkt = wire.parse(raw)
    assert pkt.form == int(v["form"]) and pkt.encap == v["encap"]
    assert (wire.int2ip(pkt.src), wire.int2ip(pkt.dst)) == (v["src"], v["dst"])
    assert (pkt.tos, pkt.ttl) == (num(v, "tos"), num(v, "ttl"))
    assert raw[4:6] == num(v, "ident").to_bytes(2, "big")
    assert raw[10:12] == num(v, "ip_checksum").to_bytes(2, "big")
    assert wire.internet_checksum(raw[:20]) == 0
    assert pkt.next_proto == num(v, "next_proto")
    assert pkt.metadata == num(v, "metadata")
    assert pkt.check.hex() == v["check"]
    assert bytes(pkt.payload).hex() == v["payload"]
    if v["encap"] == "udp":
        assert pkt.udp_ports == (num(v, "udp_sport"), num(v, "udp_dport"))
        assert raw[26:28] == num(v, "udp_checksum").to_bytes(2, "big")
        assert pkt.proto == 17
    else:
        assert pkt.proto == wire.IPPROTO_PACKETCLOUD
    if pkt.form == wire.FORM_CIRCUIT:
        assert pkt.label == num(v, "label") and pkt.hop_limit == num(v, "hop_limit")
        assert wire.int2ip(pkt.orig_src) == v["orig_src"]
        key = wire.HopKey(bytes.fromhex(v["key"]))
        assert pkt.verify_mac(key)
        # the check is exactly the documented BLAKE2s over shim[0..11] || dst
        shim = raw[pkt.shim_off : pkt.shim_off + 12]
        mac = hashlib.blake2s(shim + raw[16:20], key=key.key, digest_size=4).digest()
        assert mac.hex() == v["check"]
    else:
        assert pkt.tos == wire.TOS_SERVICE and pkt.tos >> 2 == wire.DSCP_SERVICE
        assert pkt.service_id == num(v, "service_id")
        assert pkt.verify_check()
        shim = raw[pkt.shim_off : pkt.shim_off + 6]
        assert hashlib.blake2s(shim, digest_size=3).hexdigest() == v["check"]


@pytest.mark.parametrize("h", HOPS, ids=[h["name"] for h in HOPS])
def test_hop_vector_is_the_site_per_hop_job(h: dict[str, str]) -> None:
    src = by_name()[h["from"]]
    pkt = wire.parse(packet(src))
    pkt.switch(
        wire.HopKey(bytes.fromhex(h["in_key"])),
        num(h, "out_label"),
        wire.ip2int(h["out_dst"]),
        wire.HopKey(bytes.fromhex(h["out_key"])),
        src=wire.ip2int(h["out_src"]),
    )
    assert bytes(pkt).hex() == h["packet"]
    # the same job through the individual setters gives the same bytes
    again = wire.parse(packet(src))
    assert again.verify_mac(wire.HopKey(bytes.fromhex(h["in_key"])))
    again.set_label(num(h, "out_label"))
    again.set_hop_limit(again.hop_limit - 1)
    again.set_dst(h["out_dst"])
    again.set_src(h["out_src"])
    again.sign(wire.HopKey(bytes.fromhex(h["out_key"])))
    assert bytes(again).hex() == h["packet"]
    out = wire.parse(packet(h))
    assert out.label == num(h, "out_label") and wire.int2ip(out.dst) == h["out_dst"]
    assert wire.int2ip(out.src) == h["out_src"] == src["dst"]  # the site's own address
    assert out.orig_src == wire.parse(packet(src)).orig_src
    assert out.hop_limit == num(h, "hop_limit") and out.check.hex() == h["check"]
    assert packet(h)[10:12].hex() == h["ip_checksum"][2:]
    assert out.verify_mac(wire.HopKey(bytes.fromhex(h["out_key"])))
    assert not out.verify_mac(wire.HopKey(bytes.fromhex(h["in_key"])))
    assert bytes(out.payload) == bytes(wire.parse(packet(src)).payload)


def site_receive(raw: bytes, key: bytes | None) -> wire.Packet:
    """What a site does on arrival (docs/protocol.md §5.3 steps 1-3 / §5.4)."""
    pkt = wire.parse(raw)
    if pkt.form == wire.FORM_CIRCUIT:
        key = key or bytes(16)  # a form-2 vector mutated into form 1: any key
        pkt.switch(wire.HopKey(key), 1, wire.ip2int("198.18.9.9"), wire.HopKey(key))
    elif pkt.form == wire.FORM_SERVICE and not pkt.verify_check():
        raise wire.WireError("bad_check")
    return pkt


@pytest.mark.parametrize("r", REJECTS, ids=[r["name"] for r in REJECTS])
def test_rejected_vector_is_dropped_with_its_reason(r: dict[str, str]) -> None:
    key = bytes.fromhex(r["key"]) if "key" in r else None
    with pytest.raises(wire.WireError) as info:
        site_receive(packet(r), key)
    assert info.value.reason == r["expect"]
    # and the vector it was derived from is accepted
    site_receive(packet(by_name()[r["from"]]), key)
