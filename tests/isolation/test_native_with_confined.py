"""The worker's native switch beside confined tenants: a confined service (even one that
declares a native kernel) never runs natively, the TUN pump prefetches its packets for its
process, and the pump's output, stats and metering equal the pump's without the switch."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from pcsite_lite import native
from pcsite_lite.circuits import OutHopEntry as OutHop
from pcsite_lite.confine import ConfinedService, IsolationPolicy, Prefetcher
from pcsite_lite.daemon.tunpump import TunPump
from pcsite_lite.metrics import WorkerStats
from pcsite_lite.pipeline import Pipeline
from pcsite_lite.services import source
from pcsite_lite.site import Site
from pcsock.wire import HopKey, build_circuit_packet
from tests.support import wait_until

from .test_confinement import _SITES, _close_sites  # noqa: F401 (the autouse fixture)

pytestmark = pytest.mark.skipif(native._switch is None, reason=native._WHY_NOT)

SITE_IP, NEXT = "198.18.9.1", "198.18.6.1"
KEY = HopKey(bytes(range(16)))


def _site() -> tuple[Site, dict[str, int]]:
    # "p/sr" in the trusted lane (native), "p/conf" confined although it declares "noop"
    policy = IsolationPolicy(trusted=("p/sr",), deadline_ms=2000)
    labels_left = iter(range(100, 200))
    site = Site("c", SITE_IP, isolation=policy, randbits=lambda _bits: next(labels_left))
    _SITES.append(site)
    site.deploy("p", "sr", source("source_routing"))
    conf = site.deploy("p", "conf", source("noop")).process
    assert isinstance(conf, ConfinedService) and conf.wait_ready(20)
    labels = {}
    for svc in ("sr", "conf"):
        la = site.circuits.allocate("p", now=0.0)
        site.circuits.install(la, psp="p", service=svc, in_key=KEY,
                              out_hops=[OutHop(7, NEXT, KEY)], expires=1e12)  # fmt: skip
        labels[svc] = la
    site.fis.put("p/sr", str(labels["sr"]), {"label": 7, "next_hop": NEXT}, writer="p")
    return site, labels


def _run(use_native: bool) -> tuple[Any, ...]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    try:
        site, labels = _site()
        pipe = Pipeline(site, verify_ip_checksum=False)
        sw = native.NativeSwitch(pipe, batch=64, bufsize=2048) if use_native else None
        stats = WorkerStats()
        pump = TunPump(b.fileno(), pipe.process, lambda: 5.0, stats, batch=64,
                       account=pipe.account, prefetch=Prefetcher(site), native=sw)  # fmt: skip
        out: list[bytes] = []

        def collect() -> None:
            while True:
                try:
                    out.append(a.recv(4096, socket.MSG_DONTWAIT))
                except BlockingIOError:
                    return

        for i in range(40):
            svc = ("sr", "conf")[i % 2 if i < 20 else int(i % 5 == 0)]
            a.send(bytes(build_circuit_packet(src="198.18.5.1", dst=SITE_IP, label=labels[svc],
                                              key=KEY, payload=b"%d" % i)))  # fmt: skip
            if i % 8 == 7:  # within the socket pair's datagram queue
                pump.drain()
                collect()
        # the packets still in the confined process: as the worker loop does, until answered
        assert wait_until(lambda: (pump.flush(), collect(), not pump.pending())[2], 30)
        conf = site.runtime.slot("p", "conf")
        assert isinstance(conf.process, ConfinedService)
        counters = {}
        for s in site.runtime.slots():
            c = s.ctx.counters.as_dict()
            c.pop("cpu_ns")
            counters[s.name] = c
        return out, counters, dict(site.drops), stats, conf.process.batch_hits
    finally:
        a.close()
        b.close()


@pytest.mark.netns  # root: the confined processes' chroot, setuid and cgroups
def test_native_switch_leaves_confined_services_to_their_process() -> None:
    t0 = time.monotonic()
    out_py, m_py, d_py, st_py, hits_py = _run(False)
    out_c, m_c, d_c, st_c, hits_c = _run(True)
    # the same packets out (a confined service's come when its process answered: the order
    # between batches depends on its timing)
    assert sorted(out_c) == sorted(out_py) and len(out_c) == 40
    assert (m_c, d_c) == (m_py, d_py) and m_c["p/conf"]["packets"] > 10
    assert st_c.native_packets > 15 and st_py.native_packets == 0
    # every packet of the confined service was prefetched in its batch (one message per
    # service per batch), natively switched batches included
    assert hits_c == hits_py == m_c["p/conf"]["packets"]
    assert time.monotonic() - t0 < 60
