"""pcsock.scapy against pcsock.wire, field by field: an independent check of the codec."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Raw

from pcsock import wire
from pcsock.scapy import PacketCloudCircuit, PacketCloudService, circuit_check, sign_circuit
from tests.support.site_topo import circuit_packet
from tests.support.wire_vectors import load, num, packet

warnings.filterwarnings("ignore", message=".*No IP underlayer.*")

VECTORS = load("vector") + load("hop")
INNER = {17: UDP, 6: TCP, 1: ICMP}
u8 = st.integers(0, 255)
u32 = st.integers(0, 0xFFFFFFFF)
addrs = u32.map(wire.int2ip)
SETTINGS = settings(max_examples=60, deadline=None)


def _shim(pkt: ScapyPacket) -> ScapyPacket:
    if PacketCloudCircuit in pkt:
        return pkt[PacketCloudCircuit]
    return pkt[PacketCloudService]


def assert_same_fields(sp: ScapyPacket, wp: wire.Packet) -> None:
    """Every field scapy dissected equals what pcsock.wire parsed."""
    ip = sp[IP]
    assert (ip.src, ip.dst) == (wire.int2ip(wp.src), wire.int2ip(wp.dst))
    assert (ip.tos, ip.ttl, ip.proto, ip.len) == (wp.tos, wp.ttl, wp.proto, len(wp))
    if wp.encap == "udp":
        assert (sp[UDP].sport, sp[UDP].dport) == wp.udp_ports
    shim = _shim(sp)
    assert shim.version == wire.VERSION and shim.form == wp.form
    assert shim.next_proto == wp.next_proto and shim.metadata == wp.metadata
    assert shim.check == wp.check
    if wp.form == wire.FORM_CIRCUIT:
        assert isinstance(shim, PacketCloudCircuit)
        assert (shim.label, shim.hop_limit) == (wp.label, wp.hop_limit)
        assert shim.orig_src == wire.int2ip(wp.orig_src)
    else:
        assert isinstance(shim, PacketCloudService)
        assert shim.service_id == wp.service_id
    assert bytes(shim.payload) == bytes(wp.payload)


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_scapy_dissects_every_spec_vector_like_wire(v: dict[str, str]) -> None:
    raw = packet(v)
    sp = IP(raw)
    assert_same_fields(sp, wire.parse(raw))
    shim = _shim(sp)
    assert isinstance(shim.payload, INNER[shim.next_proto])  # next-protocol binding
    assert bytes(sp) == raw  # and it rebuilds the same bytes
    if "label" in v:
        assert shim.label == num(v, "label")


@SETTINGS
@given(
    src=addrs,
    dst=addrs,
    label=u32,
    metadata=u8,
    hop_limit=u8,
    ttl=u8,
    key=st.binary(min_size=16, max_size=32),
    udp=st.booleans(),
    data=st.binary(max_size=40),
)
def test_scapy_built_circuit_packets_decode_with_wire(
    src: str,
    dst: str,
    label: int,
    metadata: int,
    hop_limit: int,
    ttl: int,
    key: bytes,
    udp: bool,
    data: bytes,
) -> None:
    shim = PacketCloudCircuit(label=label, metadata=metadata, hop_limit=hop_limit)
    inner = UDP(sport=1234, dport=53) / Raw(data)
    outer = IP(src=src, dst=dst, ttl=ttl)
    pkt = outer / UDP() / shim / inner if udp else outer / shim / inner
    raw = sign_circuit(pkt, key)
    wp = wire.parse(raw)
    assert wp.form == wire.FORM_CIRCUIT and wp.encap == ("udp" if udp else "ip")
    assert (wp.label, wp.metadata, wp.hop_limit) == (label, metadata, hop_limit)
    assert wp.orig_src == wire.ip2int(src)  # filled from the IPv4 source
    assert wp.next_proto == 17  # filled by the next-protocol binding
    assert wp.verify_mac(wire.HopKey(key))
    if udp:
        assert wp.udp_ports == (wire.UDP_PORT, wire.UDP_PORT) and raw[26:28] == b"\0\0"
    assert_same_fields(IP(raw), wp)


@SETTINGS
@given(
    src=addrs,
    dst=addrs,
    service_id=st.integers(0, 0xFFFFFF),
    metadata=u8,
    udp=st.booleans(),
    data=st.binary(max_size=40),
)
def test_scapy_built_service_packets_decode_with_wire(
    src: str, dst: str, service_id: int, metadata: int, udp: bool, data: bytes
) -> None:
    shim = PacketCloudService(service_id=service_id, metadata=metadata)
    inner = TCP(sport=40000, dport=80) / Raw(data)
    pkt = (
        IP(src=src, dst=dst) / UDP() / shim / inner if udp else IP(src=src, dst=dst) / shim / inner
    )
    raw = bytes(pkt)
    wp = wire.parse(raw)
    assert wp.form == wire.FORM_SERVICE and wp.next_proto == 6
    assert (wp.service_id, wp.metadata) == (service_id, metadata)
    assert wp.verify_check()  # scapy computed the unkeyed check itself
    if not udp:
        assert wp.tos == wire.TOS_SERVICE  # the DSCP 43 flag comes with the binding
    assert_same_fields(IP(raw), wp)


@SETTINGS
@given(
    label=u32,
    metadata=u8,
    orig_src=addrs,
    next_proto=st.sampled_from([1, 6, 17, 99]),
    udp=st.booleans(),
    payload=st.binary(max_size=40),
)
def test_wire_built_circuit_packets_dissect_in_scapy(
    label: int, metadata: int, orig_src: str, next_proto: int, udp: bool, payload: bytes
) -> None:
    key = wire.HopKey(bytes(range(16)))
    raw = bytes(
        circuit_packet(
            label,
            payload,
            key=key,
            metadata=metadata,
            orig_src=orig_src,
            next_proto=next_proto,
            udp=udp,
        )
    )
    sp = IP(raw)
    assert_same_fields(sp, wire.parse(raw))
    # the scapy-side MAC helper agrees with wire's check
    shim = sp[PacketCloudCircuit]
    assert circuit_check(bytes(shim)[:12], sp.dst, key) == shim.check


def test_building_fills_the_layers_below_and_the_next_protocol() -> None:
    circuit = IP(bytes(IP(dst="198.18.1.1") / PacketCloudCircuit() / TCP()))
    assert circuit.proto == wire.IPPROTO_PACKETCLOUD and circuit.tos == 0
    assert circuit[PacketCloudCircuit].next_proto == 6 and TCP in circuit
    service = IP(bytes(IP(dst="198.18.1.1") / PacketCloudService() / ICMP()))
    assert service.tos == wire.TOS_SERVICE and service[PacketCloudService].next_proto == 1
    over_udp = IP(bytes(IP(dst="198.18.1.1") / UDP() / PacketCloudCircuit() / UDP()))
    assert (over_udp[UDP].sport, over_udp[UDP].dport, over_udp[UDP].chksum) == (6253, 6253, 0)
    # a shim answered from port 6253 to a NAT's port still dissects
    back = IP(bytes(IP() / UDP(sport=6253, dport=40000) / PacketCloudService(service_id=5)))
    assert back[PacketCloudService].service_id == 5


def test_unknown_version_or_form_stays_raw() -> None:
    raw = bytearray(
        wire.build_circuit_packet(src=1, dst=2, label=1, key=None, payload=b"x", next_proto=99)
    )
    raw[20] = 0x13  # form 3
    sp = IP(bytes(raw))
    assert PacketCloudCircuit not in sp and PacketCloudService not in sp
    assert isinstance(sp.payload, Raw)
