"""Metering: exact per-service and per-PSP counters, usage records per interval (paper §2.5)."""

from __future__ import annotations

from pcsite_lite.circuits import OutHopEntry
from pcsite_lite.metering import Counters
from pcsite_lite.services import source
from pcsite_lite.verdicts import Drop, Forward
from tests.support import FakeClock
from tests.support.site_topo import (
    NEXT_IP,
    OUT_KEY,
    PSP,
    SRCROUTE,
    circuit,
    circuit_packet,
    one_site,
)

METERED = """
def process(pkt):
    pkt.fetch("a")
    pkt.lookup("t", "198.18.1.1")
    pkt.isp_fetch("b")
    pkt.store("seen", 1)
    pkt.cache("k", b"0123456789")
    pkt.log("one")
    pkt.log("two")
"""


def test_counters_are_exact() -> None:
    site, pipe, lines = one_site(local_prefixes=["198.18.6.0/24"])
    pipe.clock = FakeClock(step=250)
    site.deploy(PSP, "m", METERED)
    local = circuit(site, "m")  # out hop 198.18.6.1: inside the ISP
    remote = circuit(site, "m", out=[OutHopEntry(5, "198.19.200.1", OUT_KEY)])
    sizes = []
    for i in range(3):
        data = circuit_packet(local, b"x" * (10 + i))
        sizes.append(len(data))
        [v] = pipe.process(data, 1.0)
        assert isinstance(v, Forward) and v.next_hop == NEXT_IP
    remote_pkt = circuit_packet(remote, b"y" * 100)
    [v] = pipe.process(remote_pkt, 2.0)
    assert isinstance(v, Forward)
    c = site.runtime.counters(PSP, "m")
    total_in = sum(sizes) + len(remote_pkt)
    assert c.as_dict() == {
        "packets": 4,
        "bytes_in": total_in,
        "bytes_out": total_in,  # label swap keeps the size
        "cpu_ns": 4 * 250,
        "fis_reads": 4 * 3,
        "fis_writes": 4,
        "cache_bytes": 4 * 11,
        "log_lines": 8,
        "bytes_interdomain": len(remote_pkt),
        "bytes_local": sum(sizes),
        "drops": 0,
    }
    assert lines == ["one", "two"] * 4
    assert site.fis.get(f"{PSP}/m", "seen") == 1


def test_drops_count_against_the_service_and_by_reason() -> None:
    site, pipe, _ = one_site()
    site.deploy(PSP, "d", "def process(pkt):\n    pkt.drop('no')\n")
    label = circuit(site, "d")
    for _ in range(3):
        [v] = pipe.process(circuit_packet(label), 1.0)
        assert isinstance(v, Drop)
    pipe.process(b"\x45junk", 1.0)
    c = site.runtime.counters(PSP, "d")
    assert (c.packets, c.drops, c.bytes_out) == (3, 3, 0)
    assert site.drops == {"service_drop": 3, "truncated": 1}


def test_snapshot_emits_one_usage_record_per_service_and_restarts_counters() -> None:
    site, pipe, _ = one_site(now=0.0)
    site.deploy(PSP, SRCROUTE, source("source_routing"))
    site.deploy(PSP, "noop", source("noop"))
    site.deploy("other", "noop", source("noop"))
    sr = circuit(site, SRCROUTE, expires=1000.0)
    site.fis.put(f"{PSP}/{SRCROUTE}", str(sr), {"label": 77, "next_hop": NEXT_IP}, writer=PSP)
    n1 = circuit(site, "noop", expires=1000.0)
    n2 = circuit(site, "noop", psp="other", expires=1000.0)
    for label in (sr, sr, n1, n2):
        [v] = pipe.process(circuit_packet(label), 5.0)
        assert isinstance(v, Forward)
    per_psp = site.psp_usage()
    assert per_psp[PSP].packets == 3 and per_psp["other"].packets == 1
    records = site.snapshot(60.0)
    assert sorted((r.psp, r.service, r.counters.packets) for r in records) == [
        (PSP, "noop", 1),
        (PSP, SRCROUTE, 2),
        ("other", "noop", 1),
    ]
    assert all((r.site, r.interval_start, r.interval_end) == ("c", 0.0, 60.0) for r in records)
    assert next(r for r in records if r.service == SRCROUTE).counters.fis_reads == 2
    # counters restarted; an idle interval produces no records
    assert site.runtime.counters(PSP, SRCROUTE) == Counters()
    assert site.snapshot(120.0) == []
    pipe.process(circuit_packet(n1), 130.0)
    [r] = site.snapshot(180.0)
    assert (r.interval_start, r.interval_end, r.counters.packets) == (120.0, 180.0, 1)


def test_log_sinks_are_flushed_at_snapshot() -> None:
    class Sink:
        def __init__(self) -> None:
            self.lines: list[str] = []
            self.flushed = 0

        def __call__(self, text: str) -> None:
            self.lines.append(text)

        def flush(self) -> None:
            self.flushed += 1

    sinks: dict[tuple[str, str], Sink] = {}

    def factory(psp: str, service: str) -> Sink:
        return sinks.setdefault((psp, service), Sink())

    from pcsite_lite.pipeline import Pipeline
    from pcsite_lite.site import Site

    site = Site("c", "198.18.5.1", log_sinks=factory)
    pipe = Pipeline(site)
    site.deploy(PSP, "l", "def process(pkt):\n    pkt.log('hello ' + pkt.src)\n")
    label = circuit(site, "l", out=[OutHopEntry(1, NEXT_IP, OUT_KEY)], destination=None, expires=10)
    pipe.process(circuit_packet(label), 1.0)
    site.snapshot(2.0)
    sink = sinks[(PSP, "l")]
    assert sink.lines == ["hello 198.18.0.10"] and sink.flushed == 1


def test_first_usage_interval_starts_at_the_sites_start_time() -> None:
    start = 1_764_028_800.0  # a daemon passes its wall clock
    site, pipe, _ = one_site(now=start)
    site.deploy(PSP, "noop", source("noop"))
    label = circuit(site, "noop", expires=start + 1000)
    assert site.interval_start == start
    pipe.process(circuit_packet(label), start + 5)
    [r] = site.snapshot(start + 60)
    assert (r.interval_start, r.interval_end) == (start, start + 60)


def test_without_a_start_time_the_first_interval_starts_at_the_first_packet() -> None:
    site, pipe, _ = one_site()
    site.deploy(PSP, "noop", source("noop"))
    t = 1_764_028_800.0
    label = circuit(site, "noop", expires=t + 1000)
    pipe.process(circuit_packet(label), t + 5)
    pipe.process(circuit_packet(label), t + 7)
    [r] = site.snapshot(t + 60)
    assert (r.interval_start, r.interval_end) == (t + 5, t + 60)  # never 1970
    pipe.process(circuit_packet(label), t + 61)
    [r] = site.snapshot(t + 120)
    assert r.interval_start == t + 60


def test_a_simulated_site_starts_at_the_networks_time() -> None:
    from pcsite_lite.sim import Network

    net = Network(seed=1)
    router = net.router("R", "198.18.100.1")
    net.now = 42.0  # the simulated clock has moved on
    node = net.site("C", "198.18.1.1", router=router)
    assert node.site.interval_start == 42.0 and node.site.now == 42.0
