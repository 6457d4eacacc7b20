"""A site spanning machines (docs/cluster.md): node failover and the Maglev table's churn.

* ``cluster_moved_fraction``: share of ``--circuits`` random circuit labels whose compute
  node changed when one of N = 4 nodes died (median over the four choices of the dead node;
  the labels go to table positions by a keyed hash, as the kernel's ``jhash`` does; goal
  <= 1/N + 5 %). Pure computation.
* ``cluster_failover_ms``: on a testbed site with ``--nodes`` compute nodes (root), form-1
  load on ``--circuits-live`` circuits; the compute node with most circuits is killed
  (SIGKILL + link cut); the time until every one of its circuits delivered a packet sent
  after the kill (median over ``--rounds``; goal <= 1000 ms). ``cluster_failover_lost_other``:
  packets lost on the other nodes' circuits in the same window (worst round; goal 0).

Not measured yet: ``cluster_lb_us_per_packet`` and per-node CPU per packet at 1/2/4 nodes.

    .venv/bin/python -m benchmarks.cluster --json /tmp/cluster.json
    .venv/bin/python -m benchmarks.cluster --rounds 1 --circuits 2000 --json /tmp/c.json  # smoke
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pcsite_lite.cluster.maglev import MaglevTable


def moved_fraction(circuits: int, n: int = 4) -> float:
    nodes = [f"node{i}" for i in range(n)]
    table = MaglevTable(nodes)
    pos = [int.from_bytes(hashlib.blake2s(os.urandom(4), digest_size=4).digest(), "big")
           % table.size for _ in range(circuits)]  # fmt: skip
    fractions = []
    for gone in nodes:
        after = table.with_nodes([x for x in nodes if x != gone])
        fractions.append(sum(table.entries[p] != after.entries[p] for p in pos) / circuits)
    return statistics.median(fractions)


def failover(rounds: int, nodes: int, circuits: int, rate: float) -> tuple[float, int]:
    from pcsite_lite.cluster.rig import ClusterSite, Load, owners

    times, lost = [], []
    with ClusterSite(Path(tempfile.mkdtemp(prefix="pcbench-cluster-")), nodes=nodes) as cs:
        labels = cs.circuits(circuits)
        for _ in range(rounds):
            load = Load(cs, labels, rate=rate)
            own = owners(cs, load, labels)  # before the load starts
            with load:
                deadline = time.monotonic() + 10
                while len(load.got) < 2 * circuits and time.monotonic() < deadline:
                    time.sleep(0.02)
                victim = max(set(own.values()), key=list(own.values()).count)
                time.sleep(0.3)
                t_kill = time.monotonic()
                cs.tb.fail(victim)
                cs.wait_table(set(cs.node_names()) - {victim}, timeout=5)
                time.sleep(1.5)
                t_end = time.monotonic() - 0.3
            dead = {i for i, n in own.items() if n == victim}
            times.append(load.resumed(dead, t_kill) * 1000)
            lost.append(load.lost(set(own) - dead, t_kill - 0.5, t_end))
            cs.tb.recover(victim)
            cs.start_node(victim)
            cs.wait_table(set(cs.node_names()))
    return statistics.median(times), max(lost)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks.cluster", description=__doc__.split("\n")[0])
    ap.add_argument("--json", metavar="PATH", help="write the figures here")
    ap.add_argument("--circuits", type=int, default=100000, help="labels for the churn figure")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--circuits-live", type=int, default=12)
    ap.add_argument("--rate", type=float, default=100.0, help="rounds per second of the load")
    args = ap.parse_args(argv)
    out = {"cluster_moved_fraction": round(moved_fraction(args.circuits), 4)}
    if os.geteuid() == 0:
        ms, lost = failover(args.rounds, args.nodes, args.circuits_live, args.rate)
        out.update(cluster_failover_ms=round(ms, 1), cluster_failover_lost_other=lost)
    else:
        print("benchmarks.cluster: not root: failover figures skipped", file=sys.stderr)
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
