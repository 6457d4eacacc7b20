"""Drops only the kernel sees (a full TUN queue) are in ``pcsite_drops_total``, so the site's
metrics conserve packets: every packet sent at the site is read by a worker or dropped with a
reason, and every packet a worker read is sent on or dropped with a reason."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import struct
from pathlib import Path

import pytest

from pcsite_lite.daemon.config import DataplaneConfig
from pcsite_lite.daemon.kstats import udp_socket_drops
from pcsock import wire
from tests.support import wait_until
from tests.support.sites import ADMIN, LiveSite, have_tools

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
K1 = bytes(range(16))


def _sum(metrics: str, name: str, **labels: str) -> int:
    total = 0
    for line in metrics.splitlines():
        if not line.startswith(f"pcsite_{name}_total{{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += int(line.rsplit(" ", 1)[1])
    return total


def test_snmp_udp_buffer_errors_are_parsed() -> None:
    text = (
        "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n"
        "Udp: 10 2 3 4 5 6\n"
    )
    assert udp_socket_drops(text) == {"socket_rcvbuf": 5, "socket_sndbuf": 6}
    assert udp_socket_drops("Ip: 1\n") == {}


def test_tun_queue_drops_are_counted_and_packets_conserved(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not have_tools():
        pytest.skip("needs root, ip, nft and /dev/net/tun")
    with LiveSite(tmp_path, workers=1) as site:
        admin = site.client(token=ADMIN, psp=None)
        acme = site.client()
        label = acme.allocate_circuit("relay")["label"]
        acme.install_hop(label, in_key=K1, deliver=LiveSite.D, strip=False)
        (pid,) = [int(p) for p in re.findall(r"ready \(pid (\d+)\)", site.log.read_text())]
        udp = struct.pack("!HHHH", 5555, 9999, 8 + 64, 0) + bytes(64)
        pkt = bytes(
            wire.build_circuit_packet(
                src=LiveSite.S, dst=LiveSite.SITE, label=label, key=K1, payload=udp
            )
        )
        bad = pkt[:30]  # truncated: the worker drops it with a reason
        before = admin.metrics()
        qlen = {f.name: f.default for f in dataclasses.fields(DataplaneConfig)}["queue_len"]
        n = qlen + 1000
        tx = site.raw_sender()
        os.kill(pid, signal.SIGSTOP)  # the worker reads nothing: its queue (qlen) overflows
        try:
            for i in range(n):
                tx.sendto(bad if i % 10 == 0 else pkt, (LiveSite.SITE, 0))
        finally:
            os.kill(pid, signal.SIGCONT)
            tx.close()

        def delta(name: str, **labels: str) -> int:
            return _sum(text, name, **labels) - _sum(before, name, **labels)

        def settled() -> bool:  # every packet sent is accounted for, and none is in the worker
            nonlocal text
            text = admin.metrics()
            rx = delta("rx_packets")
            return rx + delta("drops", reason="nic_rx") >= n and rx == delta("tx_packets") + delta(
                "drops", worker="0"
            )

        text = before
        wait_until(settled, 20, 0.2)
        rx = delta("rx_packets")
        queue = delta("drops", reason="tun_queue")
        nic = delta("drops", reason="nic_rx")
        drops = delta("drops", worker="0")
        txp = delta("tx_packets")
    # the queue held what it could; the rest is a counted drop, not a silent loss
    assert queue >= n - qlen - 100, text
    assert 'reason="tun_queue"' in text
    # end to end: what was sent either reached the worker's queue or was a counted NIC drop
    assert rx + nic == n, (rx, nic, n)
    # and every packet that reached the queue was sent on or dropped with a reason
    assert rx == txp + drops, (rx, txp, drops)
    assert txp > 0


def test_fold_counts_queue_drops_as_received_and_late_drops_as_not_sent() -> None:
    from pcsite_lite.daemon.kstats import fold
    from pcsite_lite.metrics import WorkerStats

    w = WorkerStats(rx_packets=90, tx_packets=70, tx_errors=2, drops={"bad_mac": 18})
    got = fold(w, {"tun_queue": 10, "tun_out": 3})
    assert got.drops == {"bad_mac": 18, "tx_error": 2, "tun_queue": 10, "tun_out": 3}
    assert (got.rx_packets, got.tx_packets) == (100, 67)
    assert got.rx_packets == got.tx_packets + sum(got.drops.values())  # conservation
    assert w.drops == {"bad_mac": 18}  # the supervisor's own record is untouched
