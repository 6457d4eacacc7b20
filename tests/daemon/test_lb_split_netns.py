"""The kernel split of a live two-worker site gives each worker its share of many circuits."""

from __future__ import annotations

import random
import struct
import time
from pathlib import Path

import pytest

from pcsock import wire
from tests.support import wait_until
from tests.support.sites import ADMIN, Chain

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]


def _rx_per_worker(ch: Chain) -> dict[str, int]:
    admin = ch.client("a", token=ADMIN, psp=None)
    return {
        line.split('worker="')[1].split('"')[0]: int(float(line.rsplit(" ", 1)[1]))
        for line in admin.metrics().splitlines()
        if line.startswith("pcsite_rx_packets_total{")
    }


def test_two_workers_each_receive_at_least_35_percent_of_many_circuits(tmp_path: Path) -> None:
    rng = random.Random(14)
    labels = [rng.getrandbits(32) for _ in range(400)]
    key = bytes(range(16))
    with Chain(tmp_path) as ch:
        ch.start_site("a", 2)
        status = ch.client("a", token=ADMIN, psp=None).status()
        assert all(w["buckets"] > 0 for w in status["workers"]), status
        tx = ch.raw_sender()
        sent = 0
        for i, label in enumerate(labels):
            # IP mode and UDP-encapsulated: the kernel hashes the label in both
            pkt = wire.build_circuit_packet(
                src=Chain.S, dst=Chain.SITE_A, label=label, key=key,
                payload=struct.pack("!I", i), udp=bool(i % 2),
            )  # fmt: skip
            for _ in range(3):
                tx.sendto(bytes(pkt), (Chain.SITE_A, 0))
                sent += 1
            if i % 50 == 49:
                time.sleep(0.01)  # stay below the TUN queue length on a loaded machine
        wait_until(lambda: sum(_rx_per_worker(ch).values()) >= sent, 20, 0.1)
        rx = _rx_per_worker(ch)
        tx.close()
    assert sum(rx.values()) == sent, (rx, sent)
    shares = {w: n / sent for w, n in rx.items()}
    assert set(shares) == {"0", "1"} and min(shares.values()) >= 0.35, shares
