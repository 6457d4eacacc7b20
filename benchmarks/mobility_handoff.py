"""Mobility handoff benchmark: in-network redirection (PacketCloud) vs home-agent triangle routing.

Two measurements in one run (``examples/mobility``):

1. **Simulated network** (``examples.mobility.scenario``; the real site pipeline, sandboxed
   service and FIS in ``pcsite_lite.sim``, simulated time): a correspondent streams one packet
   per millisecond to the mobile network; the mobile router moves from access network A to B
   and sends its Ed25519-signed binding update in a packet, to the PSP's control host
   (PacketCloud) or to the home agent (baseline). Figures:

   - ``mobility_handoff_ms``: from the binding update taking effect (PSP wrote the sites' FIS /
     home agent updated) to the first packet at the new address (the goal is <= 10 ms);
   - ``packets_lost`` and ``packets_in_flight``: lost packets, all of which reached the old
     address after the router left, and the packets still in flight when the update took
     effect (the upper bound "only those in flight");
   - ``path_length_ratio_vs_triangle``: one-way delay correspondent -> device after the move,
     PacketCloud divided by home agent (smaller is better);
   - the same figures for the home agent under ``home_agent_*``.

2. **Wall clock, real FIS** (``mobility_update_to_redirect_ms_median`` / ``_max``): the PSP's
   control plane verifies a signed binding update and writes it to a SQLite (WAL) FIS through
   its own connection; a site pipeline with a node-local ``CachedFIS`` over another connection
   processes packets to the mobile network as fast as it can; the figure is the time from the
   update's arrival at the PSP to the first packet the site tunnels to the new address
   (signature check + FIS write + cache staleness bound, 5 ms by default + pipeline), over
   ``--handoffs`` handoffs. The HTTP hop of the control API is not included.

3. **Namespace testbed, real packets** (``--testbed``, root only;
   ``examples.mobility.demo.run_testbed``): the same handoff as (1) on ``mobility.toml`` with
   site processes, a UDP binding update and a home-agent process; figures under ``testbed_*``
   (wall clock: the FIS write to the first packet at the new address, its parts, losses, and
   the path-length ratio against the home agent).

Run: ``python -m benchmarks.mobility_handoff [--json PATH] [--quick] [--handoffs N]
[--testbed]``.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._report import emit
from examples.mobility.binding import BindingRegistry
from examples.mobility.control import SERVICE_SOURCE, MobileRouter
from examples.mobility.scenario import run_handoff
from pcsite_lite.fis import CachedFIS, SqliteFIS, namespace
from pcsite_lite.pipeline import Pipeline
from pcsite_lite.sandbox import tick_budget
from pcsite_lite.site import Site
from pcsite_lite.verdicts import Forward
from pcsock.wire import build_ipv4

PREFIX = "198.19.1.0/24"
PSP = "mobpsp"
SERVICE = "mobility"


def simulated(seed: int = 1) -> dict[str, Any]:
    pc = run_handoff("packetcloud", seed=seed)
    ha = run_handoff("home_agent", seed=seed)
    return {
        "mobility_handoff_ms": pc.handoff_ms,
        "packets_lost": pc.lost,
        "packets_lost_at_old_address": pc.lost_at_old_address,
        "packets_in_flight": pc.in_flight_at_update,
        "path_length_ratio_vs_triangle": pc.delay_after_ms / ha.delay_after_ms,
        "delay_after_ms": pc.delay_after_ms,
        "home_agent_handoff_ms": ha.handoff_ms,
        "home_agent_packets_lost": ha.lost,
        "home_agent_delay_after_ms": ha.delay_after_ms,
        "raw_packetcloud": pc.as_dict(),
        "raw_home_agent": ha.as_dict(),
    }


def wall_clock(handoffs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pce-mob-") as tmp:
        path = str(Path(tmp) / "fis.sqlite")
        site_engine = SqliteFIS(path)
        psp_engine = SqliteFIS(path)  # the PSP control plane's own connection
        cache = CachedFIS(site_engine, clock=time.monotonic)
        site = Site("C1", "198.18.254.1", fis=cache, budget=tick_budget())
        site.deploy(PSP, SERVICE, SERVICE_SOURCE)
        site.register_destination(PREFIX, PSP, SERVICE, redirect_prefixes=["198.18.0.0/15"])
        pipe = Pipeline(site)
        router = MobileRouter(PREFIX)
        registry = BindingRegistry()
        registry.register(PREFIX, router.public_key)
        ns = namespace(PSP, SERVICE)

        def apply(raw: bytes) -> None:
            b = registry.apply(raw)
            psp_engine.lpm_put(ns, "bindings", b.prefix, {"care_of": b.care_of}, writer=PSP)

        udp = struct.pack("!HHHH", 1, 5004, 8 + 64, 0) + bytes(64)
        packet = bytes(build_ipv4(src="198.18.100.10", dst="198.19.1.5", proto=17, payload=udp))
        apply(router.move_to("198.18.10.2"))
        samples: list[float] = []
        processed = 0
        for i in range(handoffs):
            new = f"198.18.{20 + i % 200}.2"
            # steady state at the old address first
            deadline = time.monotonic() + 0.02
            while time.monotonic() < deadline:
                pipe.process(packet, time.monotonic())
                processed += 1
            raw = router.move_to(new)
            t0 = time.monotonic()
            apply(raw)
            while True:
                now = time.monotonic()
                verdicts = pipe.process(packet, now)
                processed += 1
                v = verdicts[0]
                if isinstance(v, Forward) and v.next_hop == new:
                    samples.append((now - t0) * 1e3)
                    break
                if now - t0 > 5.0:
                    raise RuntimeError("the binding never reached the site")
        site_engine.close()
        psp_engine.close()
    return {
        "mobility_update_to_redirect_ms_median": statistics.median(samples),
        "mobility_update_to_redirect_ms_max": max(samples),
        "mobility_update_to_redirect_samples": len(samples),
        "fis_staleness_bound_ms": cache.staleness * 1e3,
        "packets_processed": processed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.mobility_handoff", description=__doc__
    )
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="tiny counts (checks it works)")
    parser.add_argument("--handoffs", type=int, default=50, help="wall-clock handoffs")
    parser.add_argument(
        "--testbed", action="store_true", help="also run the handoff in a namespace testbed (root)"
    )
    args = parser.parse_args(argv)
    handoffs = 3 if args.quick else args.handoffs
    out: dict[str, Any] = {"benchmark": "mobility_handoff"}
    out.update(simulated())
    out.update(wall_clock(handoffs))
    if args.testbed:
        import os

        if os.geteuid() != 0:
            print("--testbed needs root (network namespaces)", file=sys.stderr)
            return 2
        from examples.mobility import demo
        from pcdemo.example_testbed import run_testbed

        tb = run_testbed(demo)
        out.update({f"testbed_{k}": v for k, v in tb.items() if not isinstance(v, dict)})
    emit(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
