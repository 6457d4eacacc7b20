"""Circuit setup time through a PSP lookup service, and pcsock send rate, on the Fig. 2 testbed.

Builds the demo's real world (:class:`pcdemo.testbed_world.TestbedWorld`: namespaces, routers,
knot DNS, three ``pcsite run`` daemons, ``pcsock lookupd`` on the PSP's data address, talking
to the sites over the control network). Then, from S's namespace:

* **circuit setup**: ``LookupClient.create`` of a three-site circuit S -> C1 -> C2 -> C3 -> D,
  timed from the request to the answer (the lookupd allocates a label at each site in
  parallel, then installs the three hops in parallel, over the sites' HTTP control APIs);
  each circuit is torn down afterwards (teardown timed separately). Figures:
  ``circuit_setup_ms_median`` (goal <= 20 ms), ``circuit_setup_ms_p90``,
  ``circuit_teardown_ms_median``; baseline in the same run: one control API call (``health``)
  from the PSP's namespace, ``control_call_ms_median``, and the ratio
  ``circuit_setup_ratio_vs_control_call`` (a circuit needs two parallel rounds of calls); and
  the same lookup protocol from S to a lookup server whose broker drives in-process circuit
  tables instead of the daemons (the SDK's own share):
  ``circuit_setup_ms_median_inprocess_tables``.
* **send rate**, with this process pinned to one vCPU: a tight loop of ``CircuitSocket.send``
  (UDP mode, 64-byte payloads, one circuit; through the C accelerator when it is built,
  ``pcsock_accelerated``) against a plain ``socket.sendto`` of the same payload to the
  destination in the same run, in five alternating rounds each (medians):
  ``pcsock_send_pps``, ``udp_send_pps`` and ``pcsock_send_ratio_vs_udp``; the same for a
  socket on the pure-Python path (``pcsock_send_pps_pure``, ``pcsock_send_ratio_vs_udp_pure``);
  ``CircuitSocket.send_many`` of 64 payloads per call (``sendmmsg``; accelerator only):
  ``pcsock_send_many_pps``, ``pcsock_send_many_ratio_vs_udp`` (against the same per-packet
  ``sendto`` baseline); and the baseline sending pcsock's own datagram (shim included) to the
  first site, so that both loops load the same receiver: ``udp_send_same_datagram_pps``,
  ``pcsock_send_ratio_vs_udp_same_datagram``.

    .venv/bin/python -m benchmarks.circuit_setup --json /tmp/circuit_setup.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

PAYLOAD = b"x" * 64


def _rate(send: Any, seconds: float) -> float:
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(256):
            send()
        n += 256
        t = time.perf_counter()
        if t >= end:
            return n / (t - t0)


def run(circuits: int, seconds: float) -> dict[str, Any]:
    from pcdemo.scenarios import SRCROUTE
    from pcdemo.testbed_world import TestbedWorld
    from pcsock.socket import CircuitSocket

    world = TestbedWorld(prefix="pcs", progress=lambda m: print(m, file=sys.stderr))
    try:
        world.deploy(["C1", "C2", "C3"], "srcroute", SRCROUTE)
        s_node = world.tb.node("S")
        lookup = world.lookup
        d_ip, s_ip = world.hosts["D"], world.hosts["S"]
        path = ["C1", "C2", "C3"]

        def one() -> tuple[float, float]:
            t0 = time.perf_counter()
            c = lookup.create(destination=d_ip, service="srcroute", source=s_ip, sites=path)
            t1 = time.perf_counter()
            lookup.teardown(c)
            return t1 - t0, time.perf_counter() - t1

        # baseline in the same run: one control API call (health) from the PSP's namespace
        ctl = world._control("C1")
        calls = []
        for _ in range(max(5, circuits // 4)):
            t0 = time.perf_counter()
            ctl.health()
            calls.append(time.perf_counter() - t0)
        setup: list[float] = []
        teardown: list[float] = []
        s_node.call(one)  # warm-up: TCP connection to the lookupd, HTTP connections
        for _ in range(circuits):
            a, b = s_node.call(one)
            setup.append(a)
            teardown.append(b)

        # the same lookup protocol over TCP from S, but the PSP's broker drives in-process
        # circuit tables instead of the daemons' HTTP control APIs: the SDK's own share
        from pcsite_lite.site import Site
        from pcsite_lite.table_control import TableSiteControl as Tables
        from pcsock.lookup import CircuitBroker, LookupClient, LookupServer, SiteEntry

        entries = [SiteEntry(n, ip, Tables(Site(n, ip).circuits, psp="acme"))
                   for n, ip in world.sites.items()]  # fmt: skip
        broker = CircuitBroker("acme", entries)
        psp_ip = world.psp.address  # its data address: S reaches it over the data network
        assert psp_ip is not None
        srv = world.psp.call(lambda: LookupServer(broker, psp_ip, 7054).start())
        local = LookupClient(psp_ip, 7054)
        tables: list[float] = []
        try:

            def one_tables() -> float:
                t0 = time.perf_counter()
                c = local.create(destination=d_ip, service="srcroute", source=s_ip, sites=path)
                t1 = time.perf_counter()
                local.teardown(c)
                return t1 - t0

            s_node.call(one_tables)
            tables = [s_node.call(one_tables) for _ in range(circuits)]
        finally:
            local.close()
            srv.close()
            broker.close()

        circuit = s_node.call(
            lambda: lookup.create(destination=d_ip, service="srcroute", source=s_ip, sites=path,
                                  lifetime=600)
        )  # fmt: skip
        from pcsock import wire
        from pcsock.session import Session

        accel = wire.accelerator() is not None
        sock = s_node.call(lambda: CircuitSocket(circuit, s_ip, dport=9, bind=False))
        pure = s_node.call(lambda: CircuitSocket(circuit, s_ip, dport=9, bind=False, accel=False))
        plain = s_node.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        # the datagram pcsock sends, for the same-datagram baseline
        datagram, first = Session(s_ip).encode_circuit(circuit, PAYLOAD, dport=9)
        batch = [PAYLOAD] * 64
        cpus = sorted(os.sched_getaffinity(0))
        try:
            # the sender on one vCPU (the sites' daemons get the others), alternating short
            # rounds so every variant sees the same machine load; medians of 5
            os.sched_setaffinity(0, {cpus[-1]})
            rates: dict[str, list[float]] = {
                "pcs": [], "pure": [], "many": [], "udp": [], "udp_same": []
            }  # fmt: skip
            for _ in range(5):
                rates["pcs"].append(_rate(lambda: sock.send(PAYLOAD), seconds / 5))
                rates["pure"].append(_rate(lambda: pure.send(PAYLOAD), seconds / 5))
                if accel:
                    rates["many"].append(
                        _rate(lambda: sock.send_many(batch), seconds / 5) * len(batch)
                    )
                rates["udp"].append(_rate(lambda: plain.sendto(PAYLOAD, (d_ip, 9)), seconds / 5))
                rates["udp_same"].append(_rate(lambda: plain.sendto(datagram, first), seconds / 5))
            med = {k: statistics.median(v) for k, v in rates.items() if v}
        finally:
            os.sched_setaffinity(0, cpus)
            sock.close()
            pure.close()
            plain.close()
        s_node.call(lambda: lookup.teardown(circuit))
    finally:
        world.close()
    q = statistics.quantiles(setup, n=10) if len(setup) >= 2 else [setup[0]] * 9
    figures: dict[str, Any] = {
        "circuit_setup_ms_median": round(statistics.median(setup) * 1e3, 3),
        "circuit_setup_ms_p90": round(q[8] * 1e3, 3),
        "circuit_setup_ms_min": round(min(setup) * 1e3, 3),
        "circuit_teardown_ms_median": round(statistics.median(teardown) * 1e3, 3),
        "control_call_ms_median": round(statistics.median(calls) * 1e3, 3),
        "circuit_setup_ms_median_inprocess_tables": round(statistics.median(tables) * 1e3, 3),
        "circuit_setup_ratio_vs_control_call": round(
            statistics.median(setup) / statistics.median(calls), 2
        ),
        "circuit_setup_goal_ms": 20.0,
        "circuits": len(setup),
        "sites_per_circuit": 3,
        "pcsock_accelerated": accel,
        "pcsock_send_pps": round(med["pcs"]),
        "udp_send_pps": round(med["udp"]),
        "pcsock_send_ratio_vs_udp": round(med["pcs"] / med["udp"], 4),
        "pcsock_send_pps_pure": round(med["pure"]),
        "pcsock_send_ratio_vs_udp_pure": round(med["pure"] / med["udp"], 4),
        "udp_send_same_datagram_pps": round(med["udp_same"]),
        "pcsock_send_ratio_vs_udp_same_datagram": round(med["pcs"] / med["udp_same"], 4),
        "payload_bytes": len(PAYLOAD),
        "sender_cpu": cpus[-1],
    }
    if accel:
        figures["pcsock_send_many_pps"] = round(med["many"])
        figures["pcsock_send_many_ratio_vs_udp"] = round(med["many"] / med["udp"], 4)
    return {"figures": figures, "setup_ms": [round(x * 1e3, 3) for x in setup]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="circuit_setup", description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the figures to this path")
    ap.add_argument("--circuits", type=int, default=200, help="circuits to set up and time")
    ap.add_argument("--seconds", type=float, default=2.0, help="per send-rate measurement")
    ap.add_argument("--quick", action="store_true", help="tiny counts (checks it works)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("circuit_setup: needs root (namespaces, site daemons)", file=sys.stderr)
        return 2
    if args.quick:
        args.circuits, args.seconds = 5, 0.2
    # a SIGTERM unwinds like Ctrl-C, so the testbed is always torn down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    res = run(args.circuits, args.seconds)
    print(json.dumps(res["figures"], indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res["figures"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
