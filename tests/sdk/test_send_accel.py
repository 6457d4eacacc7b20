"""pcsock's send path through the C accelerator (pcsock._accel.Sender: the circuit's sealed
prefix + payload per sendmsg, sendmmsg for send_many) puts exactly the bytes of the pure-Python
path (Session.encode_circuit) on the wire, in UDP mode (loopback) and raw-IP mode (netns)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from pcsock import wire
from pcsock.session import Circuit, Session
from pcsock.socket import CircuitSocket, PacketCloudSocket, PcsockError
from tests.support.netns import call_in, netns

KEY = wire.HopKey(bytes(range(16)))
ACCEL = [True, False] if wire.accelerator() is not None else [False]
PAYLOADS = [b"", b"x", bytes(range(256)) * 4, b"y" * 1400]


def _receiver() -> socket.socket:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return rx


def _drain(rx: socket.socket, n: int) -> list[bytes]:
    return [rx.recv(70000) for _ in range(n)]


@pytest.mark.parametrize("accel", ACCEL)
def test_udp_datagrams_are_the_sessions_bytes(accel: bool) -> None:
    with _receiver() as rx:
        port = rx.getsockname()[1]
        circuit = Circuit("127.0.0.1", 0xC0FFEE, KEY, "x", port=port)
        ref = Session("127.0.0.1")
        with PacketCloudSocket("127.0.0.1", bind=False, app_port=4000, accel=accel) as tx:
            assert tx.accelerated == accel
            for md, payload in zip([0, 7, 0, 255], PAYLOADS):
                assert tx.send_on(circuit, payload, metadata=md, dport=53) == len(payload)
            got = _drain(rx, len(PAYLOADS))
            want = [
                ref.encode_circuit(circuit, p, metadata=md, sport=4000, dport=53)[0]
                for md, p in zip([0, 7, 0, 255], PAYLOADS)
            ]
            assert got == want
            # a bulk send: 150 datagrams (three sendmmsg batches with the accelerator)
            bulk = [i.to_bytes(2, "big") * (i % 50) for i in range(150)]
            assert tx.send_many_on(circuit, bulk, metadata=3, dport=9) == 150
            got = _drain(rx, 150)
            assert got == [
                ref.encode_circuit(circuit, p, metadata=3, sport=4000, dport=9)[0] for p in bulk
            ]
            assert tx.session.sent == len(PAYLOADS) + 150
            # the datagram is a valid PacketCloud packet for the first hop's key
            d = Session("127.0.0.1").decode(got[7], ("127.0.0.1", 4000))
            assert d is not None and d.label == 0xC0FFEE and d.payload == bulk[7]


class _Lookup:
    """A lookup service stand-in whose renewals hand out a new label."""

    def __init__(self) -> None:
        self.renewed = 0

    def renew(self, c: Circuit) -> Circuit:
        self.renewed += 1
        return Circuit(c.first_hop, c.label + 1, c.key, c.destination, expires=1e12, port=c.port)

    def teardown(self, c: Circuit) -> None:
        pass


@pytest.mark.parametrize("accel", ACCEL)
def test_circuit_socket_send_and_send_many_follow_renewal(accel: bool) -> None:
    with _receiver() as rx:
        port = rx.getsockname()[1]
        # expires in the past: the first send renews (label 10 -> 11)
        old = Circuit("127.0.0.1", 10, KEY, "x", circuit_id="c", expires=1.0, port=port)
        lookup = _Lookup()
        with CircuitSocket(old, "127.0.0.1", lookup=lookup, dport=7, bind=False, accel=accel) as s:
            s.send(b"one")
            s.send(b"two")
            assert s.send_many([b"a", b"b", b"c"]) == 3
            s.send(b"md", metadata=9)
            got = [Session("127.0.0.1").decode(d, ("127.0.0.1", 0)) for d in _drain(rx, 6)]
        assert lookup.renewed == 1
        assert [(d.label, d.payload, d.dport, d.metadata) for d in got if d] == [
            (11, b"one", 7, 0),
            (11, b"two", 7, 0),
            (11, b"a", 7, 0),
            (11, b"b", 7, 0),
            (11, b"c", 7, 0),
            (11, b"md", 7, 9),
        ]


@pytest.mark.parametrize("accel", ACCEL)
def test_oversized_payload_and_closed_socket_are_clear_errors(accel: bool) -> None:
    circuit = Circuit("127.0.0.1", 1, KEY, "x", port=9)
    tx = PacketCloudSocket("127.0.0.1", bind=False, accel=accel)
    with pytest.raises(wire.WireError) as exc:
        tx.send_on(circuit, b"z" * 65528)
    assert exc.value.reason == "bad_field"
    tx.close()
    with pytest.raises(PcsockError):
        tx.send_on(circuit, b"late")
    with pytest.raises(PcsockError):
        tx.send_many_on(circuit, [b"late"])


@pytest.mark.netns
@pytest.mark.parametrize("accel", ACCEL)
def test_raw_ip_mode_packets_are_whole_valid_ipv4_packets(accel: bool) -> None:
    a, b = "198.18.200.1", "198.18.200.2"
    with netns([a, b]) as ns:
        rx: Any = call_in(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 253))
        tx = call_in(ns, lambda: PacketCloudSocket(a, mode="ip", app_port=5, accel=accel))
        with rx, tx:
            rx.settimeout(5)
            circuit = Circuit(first_hop=b, label=77, key=KEY, destination=b)
            tx.send_on(circuit, b"first", metadata=1, dport=8)
            tx.send_many_on(circuit, [b"m%d" % i for i in range(70)], metadata=1, dport=8)
            pkts = [wire.parse(rx.recv(2000)) for _ in range(71)]  # verifies IPv4 checksums
    assert [bytes(p.payload)[8:] for p in pkts] == [b"first"] + [b"m%d" % i for i in range(70)]
    assert all(p.verify_mac(KEY) and p.label == 77 and p.metadata == 1 for p in pkts)
    assert len({int.from_bytes(p.buf[4:6], "big") for p in pkts}) == 71  # fresh identifications
    assert all(p.proto == 253 and wire.int2ip(p.orig_src) == a for p in pkts)


@pytest.mark.parametrize("accel", ACCEL)
def test_trio_socket_sends_the_sessions_bytes(accel: bool) -> None:
    """The trio socket's circuit datagrams: through the accelerator's senders (without
    blocking the event loop) or the pure path, the same bytes as Session.encode_circuit."""
    import trio

    from pcsock.socket import AsyncPacketCloudSocket

    with _receiver() as rx:
        port = rx.getsockname()[1]
        circuit = Circuit("127.0.0.1", 0xC0FFEE, KEY, "x", port=port)
        ref = Session("127.0.0.1")

        async def main() -> int:
            async with AsyncPacketCloudSocket(
                "127.0.0.1", bind=False, app_port=4000, accel=accel
            ) as tx:
                assert tx.accelerated == accel
                for md, payload in zip([0, 7, 0, 255], PAYLOADS):
                    assert await tx.send_on(circuit, payload, metadata=md, dport=53) == len(payload)
                for i in range(100):
                    await tx.send_on(circuit, b"%d" % i, metadata=1, dport=9)
                return tx.session.sent

        assert trio.run(main) == len(PAYLOADS) + 100
        got = _drain(rx, len(PAYLOADS) + 100)
        want = [
            ref.encode_circuit(circuit, p, metadata=md, sport=4000, dport=53)[0]
            for md, p in zip([0, 7, 0, 255], PAYLOADS)
        ]
        want += [
            ref.encode_circuit(circuit, b"%d" % i, metadata=1, sport=4000, dport=9)[0]
            for i in range(100)
        ]
        assert got == want
