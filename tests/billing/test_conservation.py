"""Conservation: what the ledger bills equals what the site's pipeline actually did.

A real :class:`~pcsite_lite.site.Site` runs three PSP services (form 1 circuits, a form-2
service ID, a form-3 destination owner) over a few thousand packets; every interval the site
snapshots its meters into the ledger, exactly as a worker does. Then, per (psp, service):

* bytes: the ledger's bytes_in / bytes_out / bytes_local / bytes_interdomain equal, exactly,
  the bytes of the packets handed to the pipeline and of the verdicts it returned, split by an
  independent check of each output packet's IP destination against the ISP's prefixes;
* CPU: the ledger's summed cpu_ns is within 5 % of the thread CPU time the test measured
  around the pipeline calls (the services do enough work per packet to dominate it);
* logging API: every ``log(text)`` a service made is a log line in the ledger.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from pcdemo.onesite import open_circuit
from pcsite_lite.billing.invoice import build_invoice
from pcsite_lite.billing.ledger import Ledger
from pcsite_lite.billing.prices import PriceSheet
from pcsite_lite.circuits import OutHopEntry
from pcsite_lite.confine import ConfinedService, IsolationPolicy, process_cpu_ns
from pcsite_lite.pipeline import Pipeline
from pcsite_lite.sandbox import Budget
from pcsite_lite.site import Site
from pcsite_lite.verdicts import Deliver, Drop, Forward
from pcsock import wire

ISP = ipaddress.ip_network("198.18.0.0/16")  # the ISP's own prefixes: "local"
SITE_IP = "198.18.0.1"
SENDER = "198.18.44.4"

CRUNCH = """
def process(pkt):
    acc = 0
    for i in range(1500):
        acc = (acc * 31 + i) & 0xFFFF
    if pkt.fetch("mode") is None:
        pkt.log("crunched " + str(acc))
"""
FIREWALL = """
def process(pkt):
    acc = 0
    for i in range(1200):
        acc = acc + i
    if pkt.read(0, 1) == b"\\x00":
        pkt.drop("blocked")
"""
RELAY = """
def process(pkt):
    acc = 0
    for i in range(1200):
        acc = acc ^ i
    pkt.cache(pkt.shim.label, pkt.read(0, 16))
"""


#: the site's services, (PSP, name) -> code
SERVICES = {("acme", "crunch"): CRUNCH, ("acme", "relay"): RELAY, ("zeta", "fw"): FIREWALL}


def _is_local(data: bytes) -> bool:
    return ipaddress.ip_address(data[16:20]) in ISP


@pytest.mark.parametrize("confined", [False, True], ids=["in_worker", "confined"])
def test_ledger_usage_equals_pipeline_bytes_exactly_and_cpu_within_5_percent(
    tmp_path: Path, run_id: str, confined: bool
) -> None:
    """In the worker (trusted lane) the CPU is checked against a meter around each service's
    code; confined, against the CPU the kernel accounted to each service's process."""
    site_name = f"{run_id}-site"
    ledger = Ledger(tmp_path / "site.ledger")
    clock = time.thread_time_ns  # CPU time of this thread: what a worker can bill
    site = Site(
        site_name,
        SITE_IP,
        local_prefixes=[str(ISP)],
        log_sinks=ledger.log_sinks(site_name, clock=lambda: site.now),
        budget=Budget(clock=clock),
        isolation=IsolationPolicy(deadline_ms=5000) if confined else None,
    )
    t0 = 1_764_028_800.0
    site.interval_start = t0  # the first metering interval starts now, not at the epoch
    pipeline = Pipeline(site, cpu_clock=clock)
    for (psp, name), code in SERVICES.items():
        site.deploy(psp, name, code)
    site.register_service_id(7, "acme", "crunch")
    site.register_destination("198.19.5.0/24", "zeta", "fw")
    k_in, k_out = wire.HopKey(b"i" * 16), wire.HopKey(b"o" * 16)
    labels = []
    for hop in (
        OutHopEntry(label=77, next_hop="198.19.9.1", key=k_out),  # to another ISP's site
        OutHopEntry(label=0, next_hop="198.18.7.7", final=True, strip=True),  # legacy receiver
    ):
        labels.append(open_circuit(site, psp="acme", service="relay", in_key=k_in, out_hops=[hop],
                                   expires=t0 + 3600, now=t0))  # fmt: skip

    def packet(i: int) -> tuple[bytes, tuple[str, str]]:
        payload = bytes([i % 7]) + bytes(20 + i % 300)
        kind = i % 4
        if kind == 0:
            dst = f"198.{18 + i % 2}.{i % 200}.9"  # local and inter-domain destinations
            raw = wire.build_service_packet(src=SENDER, dst=dst, service_id=7, payload=payload)
            return bytes(raw), ("acme", "crunch")
        if kind == 1:
            raw = wire.build_ipv4(src=SENDER, dst="198.19.5.20", proto=17, payload=payload)
            return bytes(raw), ("zeta", "fw")
        raw = wire.build_circuit_packet(
            src=SENDER, dst=SITE_IP, label=labels[kind - 2], key=k_in, payload=payload
        )
        return bytes(raw), ("acme", "relay")

    # an independent meter around each service's code, outside the pipeline's own metering
    in_service: Counter[tuple[str, str]] = Counter()
    for key in SERVICES:
        slot = site.runtime.slot(*key)
        inner = slot.process
        assert inner is not None
        if confined:
            assert isinstance(inner, ConfinedService) and inner.wait_ready(20)
            continue

        def timed(api: object, inner=inner, key=key) -> object:
            c0 = clock()
            try:
                return inner(api)
            finally:
                in_service[key] += clock() - c0

        slot.process = timed

    truth: dict[tuple[str, str], Counter[str]] = {}
    measured_cpu = 0
    t = t0
    try:
        for i in range(2400):
            data, owner = packet(i)
            t = t0 + i * 0.01
            c0 = clock()
            verdicts = pipeline.process(data, t)
            measured_cpu += clock() - c0
            tr = truth.setdefault(owner, Counter())
            tr["packets"] += 1
            tr["bytes_in"] += len(data)
            for v in verdicts:
                if isinstance(v, Forward | Deliver):
                    tr["bytes_out"] += len(v.data)
                    tr["bytes_local" if _is_local(v.data) else "bytes_interdomain"] += len(v.data)
                else:
                    assert isinstance(v, Drop)
                    assert v.reason == "service_drop", v  # only the firewall's own drops
                    tr["drops"] += 1
            if i % 500 == 499:  # a metering interval ends: snapshot into the ledger
                ledger.append_many(site.snapshot(t))
        ledger.append_many(site.snapshot(t + 0.01))

        billed: dict[tuple[str, str], Counter[str]] = {}
        for r in ledger.records():
            assert r.site == site_name
            billed.setdefault((r.psp, r.service), Counter()).update(r.counters.as_dict())
        assert set(billed) == set(truth)
        for key, tr in truth.items():
            b = billed[key]
            for name in ("packets", "bytes_in", "bytes_out", "bytes_local", "bytes_interdomain"):
                assert b[name] == tr[name], (key, name)
            assert b["drops"] == tr["drops"], key
            assert b["bytes_local"] + b["bytes_interdomain"] == b["bytes_out"]
        # both prices apply: every service but the firewall sent inter-domain and local bytes
        assert billed[("acme", "relay")]["bytes_interdomain"] > 0
        assert billed[("acme", "relay")]["bytes_local"] > 0
        assert billed[("zeta", "fw")]["drops"] == truth[("zeta", "fw")]["drops"] > 0

        # CPU: per service, the billed CPU time is within 5 % of the CPU time measured in its
        # code; all of it was spent inside the pipeline calls the test timed. Confined: the
        # kernel's count for its process (since it entered its cgroup), within 2 %.
        if confined:
            for key, b in billed.items():
                proxy = site.runtime.slot(*key).process
                assert isinstance(proxy, ConfinedService) and proxy.proc is not None
                assert proxy.restarts == 0
                kernel = process_cpu_ns(proxy.proc.pid) - proxy._cpu_base
                assert abs(b["cpu_ns"] - kernel) <= 0.02 * kernel, key
                print(f"{key}: billed/kernel CPU = {b['cpu_ns'] / kernel:.4f}")
            site.runtime.close()
        for key, b in billed.items():
            if confined:
                break
            assert in_service[key] > 0
            assert abs(b["cpu_ns"] - in_service[key]) <= 0.05 * in_service[key], key
            print(f"{key}: billed/measured CPU = {b['cpu_ns'] / in_service[key]:.4f}")
        metered_cpu = sum(b["cpu_ns"] for b in billed.values())
        assert confined or metered_cpu <= measured_cpu
        if not confined:
            print(f"billed CPU = {metered_cpu / measured_cpu:.1%} of the pipeline's CPU time")

        # logging API: every log() call landed in the ledger, attributed to its service
        logs = ledger.logs("acme", service="crunch")
        assert len(logs) == billed[("acme", "crunch")]["log_lines"] == 600
        assert all(ln.text.startswith("crunched ") and ln.site == site_name for ln in logs)
        assert billed[("acme", "relay")]["cache_bytes"] > 0

        # and the invoice prices exactly those counters
        inv = build_invoice(ledger.records(), "acme", t0, t0 + 3600, PriceSheet.default())
        got = {(li.service, li.resource): li.usage for li in inv.lines}
        assert (
            got[("relay", "bandwidth_interdomain")] == truth[("acme", "relay")]["bytes_interdomain"]
        )
        assert got[("crunch", "log_lines")] == 600
        assert inv.total == sum((li.amount for li in inv.lines), Decimal(0))
    finally:
        site.runtime.close()
        ledger.close()
