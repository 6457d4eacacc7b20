"""Amplification caps of ``replicate`` and the supervisor's worker watchdog."""

from __future__ import annotations

import subprocess
import sys
import time

import trio
import trio.testing

from pcsite_lite.circuits import OutHopEntry
from pcsite_lite.daemon.supervisor import Supervisor, WorkerSlot
from pcsite_lite.pipeline import Pipeline
from pcsite_lite.site import Site
from pcsite_lite.verdicts import Drop, Forward
from pcsock.wire import HopKey, build_circuit_packet

SITE_IP = "198.18.9.1"
KEY = bytes(range(16))
HOPS = [f"198.18.6.{i}" for i in range(1, 6)]


def _site(caps: tuple[int, int | None]) -> tuple[Site, Pipeline, int]:
    site = Site("c", SITE_IP, replicate_caps=caps)
    label = site.circuits.allocate("p", now=0.0)
    outs = [OutHopEntry(label=10 + i, next_hop=h, key=HopKey(KEY)) for i, h in enumerate(HOPS)]
    site.circuits.install(label, psp="p", service="rep", in_key=KEY, out_hops=outs,
                          expires=1e12)  # fmt: skip
    return site, Pipeline(site), label


def _pkt(label: int) -> bytearray:
    return build_circuit_packet(src="198.18.5.1", dst=SITE_IP, label=label, key=HopKey(KEY),
                                payload=b"x")  # fmt: skip


def test_replicate_is_capped_per_packet_and_refuses_duplicates() -> None:
    site, pipe, label = _site((3, None))
    site.deploy("p", "rep", f"def process(pkt):\n    pkt.replicate({HOPS[:3]!r})\n")
    out = pipe.process(_pkt(label), 1.0)
    assert [v.next_hop for v in out] == HOPS[:3]  # type: ignore[union-attr]
    assert site.runtime.counters("p", "rep").bytes_out == sum(len(v.data) for v in out)  # type: ignore[union-attr]
    for targets in (HOPS[:4], [HOPS[0]] * 64, [HOPS[0], 10]):  # label 10 is HOPS[0] again
        site.deploy("p", "rep", f"def process(pkt):\n    pkt.replicate({targets!r})\n")
        [v] = pipe.process(_pkt(label), 1.0)
        assert isinstance(v, Drop) and v.reason == "api_misuse", v


def test_replicate_is_capped_per_second_by_the_packet_clock() -> None:
    site, pipe, label = _site((16, 10))  # 10 copies per second
    site.deploy("p", "rep", f"def process(pkt):\n    pkt.replicate({HOPS[:2]!r})\n")
    results = [pipe.process(_pkt(label), 100.0) for _ in range(6)]
    assert [len(r) for r in results[:5]] == [2] * 5  # the bucket's 10 copies
    [v] = results[5]
    assert isinstance(v, Drop) and v.reason == "api_misuse" and "per second" in v.detail
    assert all(isinstance(v, Forward) for v in pipe.process(_pkt(label), 100.5))  # refilled


def test_watchdog_kills_a_worker_that_stops_sending_heartbeats() -> None:
    sup = Supervisor.__new__(Supervisor)  # only the watchdog's parts
    sup.watchdog_s = 0.3
    logged: list[str] = []
    sup.log = logged.append  # type: ignore[method-assign]
    # kept: the worker's stand-in idles (the workload) until the watchdog kills it
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    slot = WorkerSlot(index=0, tun=None, proc=proc)
    try:
        t0 = time.monotonic()
        trio.run(sup._watchdog, slot)
        assert proc.wait(timeout=10) < 0  # killed
        assert slot.watchdog_kills == 1 and "no progress" in logged[0]
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_watchdog_spares_a_worker_that_keeps_reporting() -> None:
    sup = Supervisor.__new__(Supervisor)
    sup.watchdog_s = 0.3
    sup.log = lambda msg: None  # type: ignore[method-assign]
    # kept: the worker's stand-in idles (the workload); it must outlive the watchdog's checks
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    slot = WorkerSlot(index=0, tun=None, proc=proc)

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(sup._watchdog, slot)
            for _ in range(10):  # 1 s of heartbeats every 0.1 s (the workload, not a wait)
                await trio.sleep(0.1)
                slot.last_seen = trio.current_time()
            n.cancel_scope.cancel()

    try:
        # on trio's virtual clock: the watchdog and the heartbeats see the same 1 s, however
        # loaded the machine (the watchdog runs on trio time only)
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        assert proc.poll() is None and slot.watchdog_kills == 0
    finally:
        proc.kill()
        proc.wait()
