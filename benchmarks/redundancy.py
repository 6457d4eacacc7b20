"""Redundancy elimination benchmark (``examples/redundancy``, Spring-Wetherall): bytes saved
and throughput on a synthetic workload with known redundancy.

The workload (``examples.redundancy.workload``): 1024-byte payloads, a 32-byte unique header
and a 992-byte body that, for half of the packets, is one of 20 popular bodies (a repeat once
sent). ``known_redundancy`` is the fraction of payload bytes that repeat earlier bytes.

Two site pipelines (``pcsite_lite.pipeline.Pipeline`` over two ``Site`` objects, each with its
node-local ``CachedFIS`` over one shared SQLite FIS -- the pair's packet store) run the real
sandboxed service: every packet goes through the ingress (encode) and then the egress
(decode), 1 ms apart in the sites' clocks. The baseline is the same two pipelines with a
pass-through service. Figures:

* ``re_bytes_saved_ratio``: 1 - payload bytes between the sites / payload bytes sent;
* ``known_redundancy``; ``re_saved_of_known``: the first over the second;
* ``re_throughput_mbps`` / ``passthrough_throughput_mbps``: payload megabits per second of
  CPU (thread time) through ingress + egress; ``re_throughput_ratio_vs_passthrough``;
* ``re_us_per_packet`` / ``passthrough_us_per_packet``; ``delivered_intact`` (must equal
  ``packets``) and ``site_drops``.

Run: ``python -m benchmarks.redundancy [--json PATH] [--quick] [--packets N]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._report import emit
from examples.redundancy.control import SERVICE_SOURCE
from examples.redundancy.workload import workload
from pcsite_lite.circuits import OutHopEntry
from pcsite_lite.fis import CachedFIS, SqliteFIS, namespace
from pcsite_lite.pipeline import Pipeline
from pcsite_lite.sandbox import tick_budget
from pcsite_lite.site import Site
from pcsite_lite.verdicts import Forward
from pcsock.wire import HopKey, build_circuit_packet, parse

PASSTHROUGH = "def process(pkt):\n    return None\n"
PSP, SERVICE = "isp-re", "re"
C1, C2, SRC, DST = "198.18.254.1", "198.18.254.2", "198.18.1.10", "198.18.2.10"


def run(source: str, payloads: list[bytes], fis_path: str) -> dict[str, Any]:
    engine = SqliteFIS(fis_path)
    clock = {"now": 0.0}
    sites = []
    for name, ip in (("C1", C1), ("C2", C2)):
        cache = CachedFIS(engine, clock=lambda: clock["now"])
        sites.append(Site(name, ip, fis=cache, budget=tick_budget()))
    k1, k2 = HopKey(b"k1" * 8), HopKey(b"k2" * 8)
    for s in sites:
        s.deploy(PSP, SERVICE, source)
    l1 = sites[0].circuits.allocate(PSP, now=0.0)
    l2 = sites[1].circuits.allocate(PSP, now=0.0)
    sites[1].circuits.install(
        l2, psp=PSP, service=SERVICE, in_key=k2, out_hops=[OutHopEntry(0, DST, None)], expires=1e12
    )
    sites[0].circuits.install(
        l1, psp=PSP, service=SERVICE, in_key=k1, out_hops=[OutHopEntry(l2, C2, k2)], expires=1e12
    )
    ns = namespace(PSP, SERVICE)
    engine.put(ns, f"hop:{l1}", {"role": "encode"}, writer=PSP)
    engine.put(ns, f"hop:{l2}", {"role": "decode"}, writer=PSP)
    p1, p2 = Pipeline(sites[0]), Pipeline(sites[1])
    packets = [bytes(build_circuit_packet(src=SRC, dst=C1, label=l1, key=k1, payload=p))
               for p in payloads]  # fmt: skip
    between = intact = 0
    cpu = 0
    for i, (pkt, payload) in enumerate(zip(packets, payloads, strict=True)):
        clock["now"] = i * 0.001
        t0 = time.thread_time_ns()
        out1 = p1.process(pkt, clock["now"])
        mid = [v.data for v in out1 if isinstance(v, Forward)]
        out2 = [v for m in mid for v in p2.process(m, clock["now"] + 0.0005)]
        cpu += time.thread_time_ns() - t0
        for m in mid:
            between += len(parse(m).payload)
        for v in out2:
            if isinstance(v, Forward) and bytes(parse(v.data).payload) == payload:
                intact += 1
    sent = sum(map(len, payloads))
    engine.close()
    return {
        "between": between,
        "sent": sent,
        "intact": intact,
        "cpu_ns": cpu,
        "drops": {s.name: dict(s.drops) for s in sites if s.drops},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redundancy", description=__doc__)
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="tiny counts (checks it works)")
    parser.add_argument("--packets", type=int, default=3000)
    args = parser.parse_args(argv)
    n = 60 if args.quick else args.packets
    payloads, repeated = workload(n, redundancy=0.5)
    with tempfile.TemporaryDirectory(prefix="pcx-bench-re-") as tmp:
        re = run(SERVICE_SOURCE, payloads, str(Path(tmp) / "re.sqlite"))
        base = run(PASSTHROUGH, payloads, str(Path(tmp) / "base.sqlite"))
    sent_bits = re["sent"] * 8
    out: dict[str, Any] = {
        "benchmark": "redundancy",
        "packets": n,
        "payload_bytes": re["sent"],
        "known_redundancy": repeated / re["sent"],
        "re_bytes_saved_ratio": 1 - re["between"] / re["sent"],
        "re_throughput_mbps": sent_bits / (re["cpu_ns"] / 1e9) / 1e6,
        "passthrough_throughput_mbps": sent_bits / (base["cpu_ns"] / 1e9) / 1e6,
        "re_us_per_packet": re["cpu_ns"] / n / 1e3,
        "passthrough_us_per_packet": base["cpu_ns"] / n / 1e3,
        "delivered_intact": re["intact"],
        "site_drops": re["drops"],
    }
    out["re_saved_of_known"] = out["re_bytes_saved_ratio"] / max(out["known_redundancy"], 1e-9)
    out["re_throughput_ratio_vs_passthrough"] = (
        out["re_throughput_mbps"] / out["passthrough_throughput_mbps"]
    )
    emit(out, args.json)
    return 0 if re["intact"] == n else 1


if __name__ == "__main__":
    sys.exit(main())
