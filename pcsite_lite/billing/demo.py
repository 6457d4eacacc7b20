"""Billing demo: a site serves two PSPs' services, meters them into a ledger, and invoices.

``python -m pcsite_lite.billing.demo [--ledger PATH] [--packets N] [--format table|csv|json]``

A real :class:`~pcsite_lite.site.Site` and :class:`~pcsite_lite.pipeline.Pipeline` (no network:
packets are built with :mod:`pcsock.wire` and handed to the pipeline) run:

- ``acme/relay``: form-1 circuits, one to another ISP's site (inter-domain) and one delivered
  locally to a legacy receiver (shim stripped); it caches the last payload per circuit;
- ``acme/meter``: a form-2 service ID that logs one accounting line per packet (paper §2.5
  logging API) and reads its FIS configuration;
- ``zeta/fw``: a form-3 destination owner's firewall that drops packets of blocked sources.

Every ``--interval`` packets the site snapshots its meters into the ledger (CPU is metered in
thread CPU time). Then the demo prints each PSP's invoice for the hour of simulated time, and
the ``pcbill`` commands that reproduce them from the ledger.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pcsite_lite.billing.invoice import build_invoice
from pcsite_lite.billing.ledger import Ledger
from pcsite_lite.billing.prices import PriceSheet

__all__ = ["main", "run"]

SITE_IP = "198.18.0.1"
ISP_PREFIX = "198.18.0.0/16"

RELAY = """
def process(pkt):
    pkt.cache(pkt.shim.label, pkt.read(0, 32))
"""
METER = """
def process(pkt):
    cfg = pkt.fetch("config")
    pkt.log("flow " + pkt.src + " -> " + pkt.dst + " " + str(pkt.length) + " bytes")
"""
FIREWALL = """
BLOCKED = ("198.19.66.",)

def process(pkt):
    for prefix in BLOCKED:
        if pkt.src.startswith(prefix):
            return pkt.drop("blocked source")
"""

#: the default prices, with invoice lines rounded to the micro-dollar
DEMO_PRICES = """\
# pcsite_lite.billing.demo: default prices, line items rounded to 0.000001 USD
[invoice]
quantum = "0.000001"
rounding = "half_up"
"""


def run(ledger_path: Path, packets: int, interval: int, start: float) -> tuple[str, float]:
    """Run the site over ``packets`` packets from ``start``; returns (site name, end time)."""
    from pcsite_lite.circuits import OutHopEntry
    from pcsite_lite.pipeline import Pipeline
    from pcsite_lite.sandbox import Budget
    from pcsite_lite.site import Site
    from pcsock import wire

    name = "demo-site"
    clock = time.thread_time_ns
    with Ledger(ledger_path) as ledger:
        site = Site(
            name,
            SITE_IP,
            local_prefixes=[ISP_PREFIX],
            log_sinks=ledger.log_sinks(name, clock=lambda: site.now),
            budget=Budget(clock=clock),
        )
        site.interval_start = start
        pipeline = Pipeline(site, cpu_clock=clock)
        site.deploy("acme", "relay", RELAY)
        site.deploy("acme", "meter", METER)
        site.deploy("zeta", "fw", FIREWALL)
        site.register_service_id(4242, "acme", "meter")
        site.register_destination("198.19.5.0/24", "zeta", "fw")
        key = wire.HopKey(b"demo-hop-key-in!")
        labels = []
        for hop in (
            OutHopEntry(label=901, next_hop="198.19.9.1", key=wire.HopKey(b"demo-hop-key-out")),
            OutHopEntry(label=0, next_hop="198.18.7.7", final=True, strip=True),
        ):
            label = site.circuits.allocate("acme", now=start)
            site.circuits.install(
                label,
                psp="acme",
                service="relay",
                in_key=key,
                out_hops=[hop],
                expires=start + 86_400,
            )
            labels.append(label)
        now = start
        step = 3600.0 / max(packets, 1)
        for i in range(packets):
            now = start + i * step
            payload = bytes(64 + (i * 37) % 1200)
            kind = i % 4
            if kind < 2:
                data = wire.build_circuit_packet(
                    src="198.18.44.4", dst=SITE_IP, label=labels[kind], key=key, payload=payload
                )
            elif kind == 2:
                data = wire.build_service_packet(
                    src="198.18.44.4",
                    dst=f"198.{18 + (i // 4) % 2}.3.3",
                    service_id=4242,
                    payload=payload,
                )
            else:
                src = "198.19.66.6" if i % 3 == 0 else "198.18.44.4"
                data = wire.build_ipv4(src=src, dst="198.19.5.5", proto=17, payload=payload)
            pipeline.process(data, now)
            if (i + 1) % interval == 0:
                ledger.append_many(site.snapshot(now))
        ledger.append_many(site.snapshot(now + step))
    return name, now


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pcsite_lite.billing.demo", description=__doc__)
    ap.add_argument("--ledger", help="ledger file (default: a fresh temporary file)")
    ap.add_argument("--packets", type=int, default=20_000)
    ap.add_argument("--interval", type=int, default=2_000, help="packets per metering interval")
    ap.add_argument("--format", choices=["table", "csv", "json"], default="table")
    args = ap.parse_args(argv)
    if args.packets < 1 or args.interval < 1:
        ap.error("--packets and --interval must be positive")
    start = float(int(time.time()) // 3600 * 3600)
    tmp = None
    if args.ledger:
        path = Path(args.ledger)
        if path.exists():
            ap.error(f"{path} exists; the demo writes a fresh ledger")
    else:
        tmp = tempfile.TemporaryDirectory(prefix="pcb-demo-")
        path = Path(tmp.name) / "demo.ledger"
    try:
        t = time.perf_counter()
        run(path, args.packets, args.interval, start)
        print(
            f"served {args.packets} packets in {time.perf_counter() - t:.2f} s;"
            f" usage ledger: {path}\n"
        )
        # an hour of demo traffic costs fractions of a cent: invoice to the micro-dollar
        sheet = path.with_name(path.name + ".prices.toml")
        sheet.write_text(DEMO_PRICES)
        prices = PriceSheet.load(sheet)
        with Ledger(path, create=False) as ledger:
            for psp in ledger.psps():
                inv = build_invoice(ledger.records(psp), psp, start, start + 3600, prices)
                render = {"table": inv.to_table, "csv": inv.to_csv, "json": inv.to_json}
                sys.stdout.write(render[args.format]() + "\n")
            n_logs = len(ledger.logs())
        print(f"{n_logs} accounting log lines stored (pcbill logs --ledger {path} --psp acme)")
        if args.ledger:
            print(
                f"reproduce: pcbill invoice --ledger {path} --psp acme --from {int(start)}"
                f" --to {int(start) + 3600} --prices {sheet}"
            )
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
