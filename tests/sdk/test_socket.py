"""pcsock sockets on real kernel sockets, inside a throw-away namespace (UDP and raw-IP mode)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import trio

import pcsock
from pcsock import wire
from pcsock.session import Circuit
from tests.support.netns import call_in, netns

A, B = "198.18.200.1", "198.18.200.2"
KEY = wire.HopKey(bytes(range(16)))

pytestmark = pytest.mark.netns


@pytest.fixture
def ns():
    with netns([A, B]) as name:
        yield name


@pytest.mark.parametrize("mode", ["udp", "ip"])
def test_circuit_datagram_carries_original_source_and_reply_returns(ns, mode):
    rx = call_in(ns, lambda: pcsock.listen(B, mode=mode, timeout=2.0))
    tx = call_in(ns, lambda: pcsock.listen(A, mode=mode, timeout=2.0))
    with rx, tx:
        circuit = Circuit(first_hop=B, label=4242, key=KEY, destination=B)
        tx.send_on(circuit, b"hello", metadata=7)
        d = rx.recv()
        assert (d.payload, d.source, d.label, d.metadata, d.form) == (b"hello", A, 4242, 7, 1)
        assert d.encap == mode and not d.is_reply
        rx.reply(d, b"ack", metadata=1)
        r = tx.recv()
        assert r.is_reply and r.source == B and r.payload == b"ack" and r.metadata == 1
        assert tx.session.sent == 1 and rx.session.received == 1


def test_raw_mode_packet_is_ip_protocol_253_with_a_valid_mac(ns):
    rx = call_in(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 253))
    tx = call_in(ns, lambda: pcsock.listen(A, mode="ip"))
    with rx, tx:
        rx.settimeout(2)
        tx.send_on(Circuit(first_hop=B, label=9, key=KEY, destination=B), b"x")
        pkt = wire.parse(rx.recv(2000))
        assert pkt.proto == 253 and pkt.form == wire.FORM_CIRCUIT and pkt.verify_mac(KEY)
        assert wire.int2ip(pkt.dst) == B and wire.int2ip(pkt.orig_src) == A


def test_service_socket_sets_the_tos_flag_and_service_id(ns):
    rx = call_in(ns, lambda: pcsock.listen(B, mode="ip", timeout=2.0))
    tx = call_in(ns, lambda: pcsock.service_socket(B, 0xABCDEF, mode="ip", local_ip=A))
    with rx, tx:
        tx.send(b"svc", metadata=3)
        d = rx.recv()
        assert (d.form, d.service_id, d.metadata, d.payload) == (2, 0xABCDEF, 3, b"svc")
        assert d.tos == wire.TOS_SERVICE and d.source == A


def test_udp_service_socket_sends_with_tos_0xac(ns):
    def make_rx():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
        s.bind((B, wire.UDP_PORT))
        return s

    rx = call_in(ns, make_rx)
    tx = call_in(ns, lambda: pcsock.service_socket(B, 77, local_ip=A))
    with rx, tx:
        rx.settimeout(2)
        tx.send(b"p")
        data, anc, _, src = rx.recvmsg(2000, socket.CMSG_SPACE(1))
        assert anc and anc[0][2][0] == wire.TOS_SERVICE
        d = tx.session.decode(data, src, destination=B)
        assert d is not None and d.service_id == 77


def test_recv_times_out_and_junk_is_dropped_with_a_reason(ns):
    rx = call_in(ns, lambda: pcsock.listen(B, timeout=0.3))
    junk = call_in(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with rx, junk:
        junk.sendto(b"\x99\x01garbage", (B, wire.UDP_PORT))
        with pytest.raises(TimeoutError):
            rx.recv()
        assert rx.session.dropped == {"bad_version": 1}


def test_closed_socket_refuses_io(ns):
    s = call_in(ns, lambda: pcsock.listen(A))
    s.close()
    with pytest.raises(pcsock.PcsockError):
        s.send_on(Circuit(first_hop=B, label=1, key=KEY, destination=B), b"x")
    with pytest.raises(pcsock.PcsockError):
        s.recv(timeout=0.1)


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        pcsock.PacketCloudSocket("198.18.200.1", mode="tcp")


def test_trio_socket_round_trip(ns):
    rx = call_in(ns, lambda: pcsock.AsyncPacketCloudSocket(B))
    tx = call_in(ns, lambda: pcsock.AsyncPacketCloudSocket(A))

    async def main():
        async with rx, tx:
            await tx.send_on(Circuit(first_hop=B, label=5, key=KEY, destination=B), b"t")
            with trio.fail_after(10):  # a hang guard, not a timing claim
                d = await rx.recv()
                await rx.reply(d, b"r")
                r = await tx.recv()
            return d, r

    d, r = trio.run(main)
    assert d.source == A and d.label == 5 and r.is_reply and r.payload == b"r"


@pytest.mark.skipif(os.geteuid() != 0, reason="drops privileges with setpriv (needs root)")
def test_raw_mode_without_privileges_raises_privilege_error():
    code = (
        "import pcsock\n"
        "try:\n    pcsock.listen('198.18.200.1', mode='ip')\n"
        "except pcsock.PrivilegeError as e:\n    print('PRIV', e)\n"
    )
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         sys.executable, "-c", code],
        capture_output=True, text=True, timeout=30, cwd=os.path.dirname(pcsock.__path__[0]),
    )  # fmt: skip
    assert out.stdout.startswith("PRIV"), out.stderr
    assert "CAP_NET_RAW" in out.stdout and "mode='udp'" in out.stdout
