"""A live site on the C accelerator and on the pure-Python path (``PACKETCLOUD_PURE=1``): the
same traffic -- good packets, forged and guessed labels, hop limit 0, bit flips -- through the
real daemons in namespaces gives the same packets on the wire between the sites (captured on
B's link), the same deliveries and the same counters by reason."""

from __future__ import annotations

import os
import re
import socket
import struct
import time
from pathlib import Path

import pytest

from pcsite_lite.control.client import OutHop
from pcsock import wire
from tests.support import wait_until
from tests.support.sites import ADMIN, Chain, in_ns

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(180),
    pytest.mark.skipif(wire._accel is None, reason=f"C accelerator not built: {wire.PURE_REASON}"),
]

KA, KB = bytes(range(16)), bytes(range(1, 17))
#: the counters that must agree (CPU time may not)
_COMPARED = re.compile(
    r"^(pcsite_drops_total|pcsite_rx_packets_total|pcsite_tx_packets_total|pcsite_rx_bytes_total"
    r"|pcsite_tx_bytes_total|pcsite_service_(packets|bytes_in|bytes_out|drops|fis_reads)_total)"
)


def _udp(payload: bytes) -> bytes:
    return struct.pack("!HHHH", 5555, 9999, 8 + len(payload), 0) + payload


def _traffic(la: int) -> tuple[list[bytes], int]:
    """The packets S sends to site A (label ``la``) and how many of them reach D."""

    def pkt(payload: bytes, **kw: object) -> bytearray:
        args: dict[str, object] = dict(src=Chain.S, dst=Chain.SITE_A, label=la, key=KA)
        args.update(kw)
        return wire.build_circuit_packet(payload=_udp(payload), **args)  # type: ignore[arg-type]

    good = [bytes(pkt(b"m%02d" % i, metadata=i % 4)) for i in range(24)]
    out = list(good)
    out += [bytes(pkt(b"forged", key=bytes(16))) for _ in range(3)]
    out += [bytes(pkt(b"guess", label=la ^ 1)) for _ in range(3)]
    out += [bytes(pkt(b"hops", hop_limit=0)) for _ in range(2)]
    base = pkt(b"flip")
    for i in range(20, 36):  # one bit flipped in every shim byte
        bad = bytearray(base)
        bad[i] ^= 1 << (i % 8)
        out.append(bytes(bad))
    return out, len(good)


def _maps_accel(cfg: Path) -> bool:
    """True if a process of the site run with ``cfg`` has pcsock._accel loaded."""
    found = False
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            maps = Path(f"/proc/{pid}/maps").read_bytes() if str(cfg).encode() in cmd else b""
            found = found or b"/_accel.cpython" in maps
        except OSError:
            continue
    return found


def _capture(ch: Chain) -> socket.socket:
    """An AF_PACKET socket on B's link from A: every IPv4 packet site A sends to B."""

    def mk() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        s.bind((ch.iface("b", "a"), 0))
        s.settimeout(0.2)
        return s

    return in_ns(ch.ns["b"], mk)


def _normalised(pkt: bytes, lb: int) -> bytes:
    """A captured A -> B packet with the hop's label and check zeroed (labels are drawn at
    random per run), after checking that the check verifies for the label it carries."""
    p = wire.parse(pkt)
    assert p.label == lb and p.verify_mac(wire.HopKey(KB))
    out = bytearray(pkt)
    out[24:28] = out[32:36] = b"\0\0\0\0"
    return bytes(out)


def _run(tmp: Path, pure: bool) -> tuple[list[bytes], list[bytes], dict[str, str]]:
    before = os.environ.get("PACKETCLOUD_PURE")
    os.environ["PACKETCLOUD_PURE"] = "1" if pure else ""  # inherited by the site daemons
    try:
        with Chain(tmp) as ch:
            ch.start_site("a", 1)
            ch.start_site("b", 1)
            assert _maps_accel(tmp / "site-a.toml") is not pure
            cb = ch.client("b")
            lb = cb.allocate_circuit("srcroute")["label"]
            cb.install_hop(lb, in_key=KB, deliver=Chain.D, strip=True)
            ca = ch.client("a")
            la = ca.allocate_circuit("srcroute")["label"]
            ca.install_hop(la, in_key=KA, out=[OutHop(lb, Chain.SITE_B, KB)])
            rx = ch.udp_receiver(9999)
            cap = _capture(ch)
            tx = ch.raw_sender()
            packets, n_good = _traffic(la)
            for p in packets:
                tx.sendto(p, (Chain.SITE_A, 0))
                time.sleep(0.002)  # well below any queue bound
            got: list[bytes] = []
            deadline = time.monotonic() + 10
            while len(got) < n_good and time.monotonic() < deadline:
                try:
                    got.append(rx.recv(2048))
                except TimeoutError:
                    pass
            admin = ch.client("a", token=ADMIN, psp=None)

            def counted() -> bool:  # site A has counted every packet
                rxp = sum(
                    int(line.rsplit(" ", 1)[1])
                    for line in admin.metrics().splitlines()
                    if line.startswith("pcsite_rx_packets_total")
                )
                return rxp >= len(packets)

            wait_until(counted, 10, 0.1)
            text = admin.metrics()
            wire_ab: list[bytes] = []
            while True:
                try:
                    frame = cap.recv(4096)
                except TimeoutError:
                    break
                if frame[9] == wire.IPPROTO_PACKETCLOUD and frame[16:20] == socket.inet_aton(
                    Chain.SITE_B
                ):
                    wire_ab.append(_normalised(frame, lb))
            rx.close()
            cap.close()
            tx.close()
    finally:
        os.environ.pop("PACKETCLOUD_PURE", None)
        if before is not None:
            os.environ["PACKETCLOUD_PURE"] = before
    counters = {
        line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1]
        for line in text.splitlines()
        if _COMPARED.match(line) and 'dev="' not in line  # NIC counters name per-run devices
    }
    return sorted(got), sorted(wire_ab), counters


def test_accelerated_and_pure_sites_send_deliver_and_count_the_same(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "p").mkdir()
    got_c, wire_c, counters_c = _run(tmp_path / "c", pure=False)
    got_p, wire_p, counters_p = _run(tmp_path / "p", pure=True)
    assert got_c == got_p == sorted(_udp(b"m%02d" % i)[8:] for i in range(24))
    assert len(wire_c) == 24 and wire_c == wire_p
    assert counters_c == counters_p
    drops = {k for k in counters_c if k.startswith("pcsite_drops_total")}
    reasons = {re.search(r'reason="(\w+)"', k).group(1) for k in drops}  # type: ignore[union-attr]
    assert {"bad_mac", "unknown_label", "hop_limit_exceeded"} <= reasons
