"""The sans-IO session: encoding and decoding checked against scapy (an independent decoder)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP

from pcsock import wire
from pcsock.session import REPLY_LABEL, Circuit, Datagram, Session

S, C, D = "198.18.10.2", "198.18.254.2", "198.18.64.2"
KEY = wire.HopKey(bytes(range(16)))
CIRCUIT = Circuit(first_hop=C, label=77, key=KEY, destination=D)


def test_ip_mode_circuit_packet_is_well_formed_for_scapy():
    raw, addr = Session(S, mode="ip").encode_circuit(CIRCUIT, b"data", sport=5, dport=9)
    assert addr == (C, wire.UDP_PORT)
    ip = IP(raw)
    assert (ip.src, ip.dst, ip.proto, ip.len) == (S, C, 253, len(raw))
    assert ip.chksum == IP(bytes(IP(raw))).chksum  # scapy agrees on the header checksum
    pkt = wire.parse(raw)
    assert pkt.verify_mac(KEY) and pkt.label == 77 and pkt.next_proto == 17


def test_stripped_shim_is_an_ordinary_udp_datagram_to_the_application_port():
    raw, _ = Session(S, mode="ip").encode_circuit(CIRCUIT, b"legacy", sport=5, dport=9)
    plain = wire.parse(raw).strip_shim()
    ip = IP(bytes(plain))
    assert ip.proto == 17 and ip[UDP].sport == 5 and ip[UDP].dport == 9
    assert bytes(ip[UDP].payload) == b"legacy"


def test_udp_mode_returns_only_the_udp_payload():
    data, addr = Session(S).encode_circuit(CIRCUIT, b"x", dport=9)
    assert addr == (C, wire.UDP_PORT)
    assert data[0] == (wire.VERSION << 4 | wire.FORM_CIRCUIT) and len(data) == 16 + 8 + 1


def test_decode_round_trip_and_reply_swaps_ports():
    tx, rx = Session(S, mode="ip"), Session(D, mode="ip")
    circuit = Circuit(first_hop=D, label=3, key=KEY, destination=D)
    raw, _ = tx.encode_circuit(circuit, b"ping", metadata=4, sport=1234, dport=9)
    d = rx.decode(raw)
    assert d == Datagram(payload=b"ping", source=S, destination=D, form=1, metadata=4, label=3,
                         via=S, sport=1234, dport=9, encap="ip", tos=0)  # fmt: skip
    back, addr = rx.encode_reply(d, b"pong")
    assert addr == (S, wire.UDP_PORT)
    r = tx.decode(back)
    assert r is not None and r.is_reply and r.label == REPLY_LABEL
    assert (r.source, r.sport, r.dport, r.payload) == (D, 9, 1234, b"pong")


def test_service_packet_carries_flag_and_id():
    raw, addr = Session(S, mode="ip").encode_service(D, 0x123456, b"s", metadata=2, dport=7)
    assert addr == (D, wire.UDP_PORT)
    assert IP(raw).tos == wire.TOS_SERVICE
    d = Session(D, mode="ip").decode(raw)
    assert d is not None and (d.form, d.service_id, d.metadata, d.dport) == (2, 0x123456, 2, 7)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x11", "truncated"),
        (b"\x99\x01" + b"\x00" * 30, "bad_version"),
        (b"\x13\x11" + b"\x00" * 30, "unknown_form"),
    ],
)
def test_junk_is_dropped_and_counted(data, reason):
    s = Session(D)
    assert s.decode(data, (S, wire.UDP_PORT)) is None
    assert s.dropped == {reason: 1}


def test_corrupted_service_check_and_foreign_destination_are_dropped():
    raw = bytearray(Session(S, mode="ip").encode_service(D, 5, b"s")[0])
    raw[20 + 5] ^= 1  # metadata changed without resealing
    s = Session(D, mode="ip")
    assert s.decode(bytes(raw)) is None and s.dropped == {"bad_check": 1}
    other = Session("198.18.64.3", mode="ip")
    assert other.decode(Session(S, mode="ip").encode_service(D, 5, b"s")[0]) is None
    assert other.dropped == {"not_for_me": 1}


def test_plain_packets_are_not_packetcloud():
    s = Session(D, mode="ip")
    plain = wire.build_ipv4(src=S, dst=D, proto=17, payload=b"\0" * 8)
    assert s.decode(bytes(plain)) is None and s.dropped == {"not_packetcloud": 1}


def test_bad_mode_and_address_are_refused():
    with pytest.raises(ValueError):
        Session(S, mode="tcp")
    with pytest.raises(wire.WireError):
        Session("not-an-ip")
    with pytest.raises(wire.WireError):
        Session(S).encode_circuit(CIRCUIT, b"", dport=70000)


@given(payload=st.binary(max_size=1400), md=st.integers(0, 255), dport=st.integers(0, 65535))
def test_udp_mode_round_trip_property(payload, md, dport):
    tx, rx = Session(S), Session(D)
    data, _ = tx.encode_circuit(Circuit(first_hop=D, label=1, key=KEY, destination=D), payload,
                                metadata=md, dport=dport)  # fmt: skip
    d = rx.decode(data, (S, wire.UDP_PORT))
    assert d is not None and (d.payload, d.metadata, d.dport, d.source) == (payload, md, dport, S)


@given(payload=st.binary(max_size=600), md=st.integers(0, 255), label=st.integers(1, 2**32 - 1))
def test_udp_mode_cached_shim_equals_the_codec_output(payload, md, label):
    c = Circuit(first_hop=C, label=label, key=KEY, destination=D)
    sess = Session(S)
    for _ in range(2):  # first built, then from the cache
        data, _ = sess.encode_circuit(c, payload, metadata=md, sport=5, dport=9)
        full = wire.build_circuit_packet(
            src=S, dst=C, label=label, key=KEY, metadata=md, udp=True,
            payload=wire.UDP_HEADER.pack(5, 9, 8 + len(payload), 0) + payload,
        )  # fmt: skip
        assert data == bytes(full[28:])
