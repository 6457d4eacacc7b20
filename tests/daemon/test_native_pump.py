"""The worker's TUN pump with the native switch: the same packets through a pump that switches
natively and one that hands every packet to the pipeline give the same packets out (in the
same order), the same worker stats and the same metering. A datagram socket pair stands in
for the TUN device (one datagram = one packet)."""

from __future__ import annotations

import random
import socket
import time
from typing import Any

import pytest

from pcdemo.onesite import open_circuit
from pcsite_lite import native
from pcsite_lite.circuits import OutHopEntry as OutHop
from pcsite_lite.daemon.tunpump import TunPump
from pcsite_lite.metrics import WorkerStats
from pcsite_lite.pipeline import Pipeline
from pcsite_lite.services import source
from pcsite_lite.site import Site
from pcsock.wire import HopKey, build_circuit_packet

pytestmark = pytest.mark.skipif(native._switch is None, reason=native._WHY_NOT)

SITE, NEXT, SENDER = "198.18.5.1", "198.18.6.1", "198.18.0.10"
K_IN, K_OUT = HopKey(b"in-key-0123456789"), HopKey(b"out-key-012345678")


def _site() -> tuple[Site, list[int]]:
    site = Site("c", SITE, randbits=random.Random(3).getrandbits, now=0.0)
    site.deploy("acme", "sr", source("source_routing"))
    site.deploy("acme", "plain", "def process(pkt):\n    pass\n")
    labels = []
    for svc in ("sr", "sr", "plain"):
        la = open_circuit(site, psp="acme", service=svc, in_key=K_IN,
                          out_hops=[OutHop(7, NEXT, K_OUT)], expires=1e12)  # fmt: skip
        site.fis.put("acme/sr", str(la), {"label": 7, "next_hop": NEXT}, writer="acme")
        labels.append(la)
    return site, labels


def _run(use_native: bool, packets: list[bytes], tx: list[bytes]) -> tuple[Any, ...]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    try:
        site, _ = _site()
        pipe = Pipeline(site, verify_ip_checksum=False)
        sw = native.NativeSwitch(pipe, batch=64, bufsize=2048) if use_native else None
        stats = WorkerStats()
        pump = TunPump(b.fileno(), pipe.process, time.time, stats, batch=64,
                       account=pipe.account, native=sw)  # fmt: skip
        for i in range(0, len(packets), 8):  # within the socket pair's datagram queue
            for p in packets[i : i + 8]:
                a.send(p)
            pump.drain()
            while True:
                try:
                    tx.append(a.recv(4096, socket.MSG_DONTWAIT))
                except BlockingIOError:
                    break
        counters = {}
        for s in site.runtime.slots():
            c = s.ctx.counters.as_dict()
            c.pop("cpu_ns")
            counters[s.name] = c
        return stats, counters, dict(site.drops)
    finally:
        a.close()
        b.close()


def test_native_pump_equals_the_python_pump() -> None:
    _, labels = _site()
    rng = random.Random(5)
    packets = []
    for i in range(600):
        la = rng.choice([*labels, 999])
        udp = rng.random() < 0.3
        key = K_IN if rng.random() < 0.95 else HopKey(b"wrong-key-0123456")
        packets.append(bytes(build_circuit_packet(src=SENDER, dst=SITE, label=la, key=key,
                                                  payload=b"p%d" % i, udp=udp)))  # fmt: skip
    out_py: list[bytes] = []
    out_c: list[bytes] = []
    st_py, m_py, d_py = _run(False, packets, out_py)
    st_c, m_c, d_c = _run(True, packets, out_c)
    assert out_c == out_py and len(out_c) > 400
    assert (m_c, d_c) == (m_py, d_py)
    assert d_c["bad_mac"] > 0 and d_c["unknown_label"] > 0
    for f in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "tx_errors", "drops"):
        assert getattr(st_c, f) == getattr(st_py, f), f
    assert st_py.native_packets == 0 and st_c.native_packets > 250
