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

* ``cluster_lb_us_per_packet``: a site with 4 compute-node namespaces where nothing runs
  (they drop what arrives); from ``h1``, through ``r1``, the LB namespace and on to a node,
  ``--packets`` form-1 packets (labels varied) for the public IP, split by the real LB
  kernel state (:class:`~pcsite_lite.cluster.lb.LbKernel`: nft jhash -> Maglev map -> fwmark
  -> policy route), against the same packets to an address the LB plainly routes to a node
  (same path, same hops, no split). Sender pinned to one vCPU; wall time per packet of the
  whole synchronous path (veth delivery runs in the sender's softirq); rounds interleaved;
  the difference of the medians.
* ``cluster_node_cpu_us_per_packet_{1,2,4}``: CPU per packet of one compute node on sites of
  1, 2 and 4 nodes (goal: flat within 15 %; ``cluster_node_cpu_spread`` is max / min - 1 of
  the three). Three sites built at once, each node given exactly ``--cpu-circuits`` circuits
  (probed through the LB's split) at ``--cpu-pps`` packets/s, sent by a sender process of
  its own (:class:`NodeTraffic`: the same traffic per node at every node count); the
  senders pinned to vCPU 0, every site process to vCPU 1; ``--cpu-rounds`` rounds of an idle
  window then a load window with every site loaded at once (so the shared vCPU is as busy
  for every node count). Per node and window: the kernel-accounted CPU of the processes in
  the node's namespace (the process CPU clock) minus its idle rate over the window, over the
  packets its TUN devices handed its workers; medians over every (round, node). Beside it,
  per node count: ``cluster_node_cpu_gross_us_per_packet_K`` (without the idle
  subtraction), ``cluster_node_worker_cpu_us_per_packet_K`` (the worker processes alone),
  ``cluster_node_idle_cpu_ms_per_s_K``, ``cluster_node_packets_per_window_K`` and
  ``cluster_node_packets_spread_K`` (the per-node packet counts' max / min - 1) and
  ``cluster_node_packets_per_wakeup_K`` (packets over the node's voluntary context switches);
  ``cluster_node_cpu_gross_spread`` (max / min - 1 of the gross figures).

    .venv/bin/python -m benchmarks.cluster --json /tmp/cluster.json
    .venv/bin/python -m benchmarks.cluster --rounds 1 --circuits 2000 --cpu-seconds 0.5 \
        --packets 2000 --json /tmp/c.json  # smoke
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

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
    from benchmarks._cluster_rig import ClusterSite, Load, owners

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


def _send_loop(tx: socket.socket, pkts: list[bytes], dst: str) -> float:
    t0 = time.perf_counter()
    for p in pkts:
        tx.sendto(p, (dst, 0))
    return time.perf_counter() - t0


def lb_cost(packets: int, rounds: int) -> tuple[float, float]:
    """(us per packet through the LB split, us per packet plainly forwarded) medians."""
    from dataclasses import replace

    from benchmarks._cluster_rig import TOPOLOGY
    from pcsite_lite.cluster.config import parse_cluster
    from pcsite_lite.cluster.lb import LbKernel
    from pcsite_lite.cluster.maglev import MaglevTable
    from pcsite_lite.daemon.config import ConfigError, parse
    from pcsock import wire
    from testbed.net import Testbed
    from testbed.netns import call_in
    from testbed.topology import parse as parse_topo

    tmp = Path(tempfile.mkdtemp(prefix="pcbench-lb-"))
    with Testbed(parse_topo(TOPOLOGY.format(n=4, m=0)), prefix="pcb", services=False) as tb:
        cp = tb.cluster("s1")
        site = tb.site("s1")
        doc = {"site": {"name": "s1", "public_ip": site.public_ip, "public_dev": "lo",
                        "state_dir": str(tmp)},
               "control": {"admin_token": "bench-admin-token-0123456789"}}  # fmt: skip
        cl = parse_cluster({"internal_dev": "int0", "internal_ip": cp.lb_address,
                            "lb": cp.lb_address, "controller": cp.lb_address,
                            "secret": "bench-secret-0123456789"}, ConfigError)  # fmt: skip
        cfg = replace(parse(doc), cluster=cl)
        kernel = LbKernel(cfg, cl)
        table = MaglevTable([m.name for m in cp.members], cl.table_size)
        slot = {m.name: i for i, m in enumerate(cp.members)}
        lb_ns = tb.node("s1").ns

        def setup() -> None:
            kernel.setup([kernel.mark(slot[n]) for n in table.entries])
            for m in cp.members:
                kernel.set_node(slot[m.name], m.address)

        for m in cp.members:  # sinks that drop in silence (no ICMP back): blackhole routes
            ns = tb.node(m.name).ns
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                           check=True)  # fmt: skip
            for dst in (f"{site.public_ip}/32", "198.18.200.0/24"):
                subprocess.run(["ip", "-n", ns, "route", "add", "blackhole", dst], check=True)
        subprocess.run(["ip", "-n", lb_ns, "route", "add", "198.18.200.0/24", "via",
                        cp.members[0].address], check=True)  # fmt: skip
        call_in(lb_ns, setup)
        try:
            r1 = tb.node("r1").ns
            subprocess.run(["ip", "-n", r1, "route", "add", "198.18.200.0/24", "via",
                            site.data_address], check=True)  # fmt: skip
            h1 = tb.node("h1")
            tx = call_in(h1.ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                                      socket.IPPROTO_RAW))  # fmt: skip
            key = bytes(16)
            payload = bytes(64)
            split = [bytes(wire.build_circuit_packet(src=h1.address, dst=site.public_ip,
                                                     label=1 + i, key=key, payload=payload))
                     for i in range(packets)]  # fmt: skip
            plain = [bytes(wire.build_circuit_packet(src=h1.address, dst="198.18.200.1",
                                                     label=1 + i, key=key, payload=payload))
                     for i in range(packets)]  # fmt: skip
            cpus = sorted(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {cpus[0]})
            try:
                a, b = [], []
                _send_loop(tx, plain[: packets // 10], "198.18.200.1")  # warm ARP and caches
                _send_loop(tx, split[: packets // 10], site.public_ip)
                for _ in range(rounds):  # plain: without the LB's nft table and rules at all
                    call_in(lb_ns, kernel.teardown)
                    a.append(_send_loop(tx, plain, "198.18.200.1") / packets * 1e6)
                    call_in(lb_ns, setup)
                    b.append(_send_loop(tx, split, site.public_ip) / packets * 1e6)
            finally:
                os.sched_setaffinity(0, cpus)
            tx.close()
        finally:
            call_in(lb_ns, kernel.teardown)
    return statistics.median(b), statistics.median(a)


GEN_CPU = 0  #: the load generator's vCPU (its sends' kernel path runs there too)
NODE_CPU = 1  #: every site process's vCPU (LB, controller, compute nodes)


def _node_usage(ns: str) -> dict[int, tuple[int, int, bool]]:
    """Per PID of the processes in network namespace ``ns``: the CPU time the kernel
    accounted to it (ns; every thread, live or exited: the process CPU clock), its threads'
    voluntary context switches (sleeps: wake-ups) and whether it is a worker (its parent,
    the node's supervisor, is in the namespace too)."""
    from pcsite_lite.confine import process_cpu_ns
    from testbed.state import processes_in

    pids = processes_in([ns])
    per = {}
    for pid in pids:
        try:
            sleeps = 0
            for task in Path(f"/proc/{pid}/task").iterdir():
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        sleeps += int(line.split()[1])
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            per[pid] = (process_cpu_ns(pid), sleeps, ppid in pids)
        except (OSError, ValueError, IndexError):  # exited meanwhile
            continue
    return per


def _delta(
    before: dict[int, tuple[int, int, bool]], after: dict[int, tuple[int, int, bool]]
) -> tuple[int, int, int]:
    """CPU (ns), sleeps and the workers' CPU (ns) between two snapshots (a process that
    started meanwhile counts in full; one that exited meanwhile is lost: workers do not
    restart in a healthy run)."""
    cpu = sleeps = workers = 0
    for pid, (used, slept, worker) in after.items():
        b = before.get(pid, (0, 0, worker))
        cpu += used - b[0]
        sleeps += slept - b[1]
        workers += (used - b[0]) if worker else 0
    return cpu, sleeps, workers


class NodeTraffic:
    """Form-1 traffic to a site's compute nodes, one independent sender *process* per node
    (pinned to ``cpu``), each sending its node's circuits as one burst every ``1 / rate`` s;
    ``h2`` drains what arrives. Every node sees the same traffic (same bursts, same period,
    no coupling to the other nodes of its site: no shared thread or lock paces them) on a
    site of 1, 2 or 4 nodes. ``with NodeTraffic(...):`` starts and stops it."""

    def __init__(self, cs: Any, groups: list[list[int]], rate: float, cpu: int) -> None:
        from benchmarks._cluster_rig import KEY, PORT
        from pcsock import wire
        from testbed.netns import call_in

        self.cpu, self.rate = cpu, rate
        h1, h2 = cs.tb.node("h1"), cs.tb.node("h2")
        self.dst = cs.public_ip
        udp = struct.pack("!HHHH", 5555, PORT, 8 + 8, 0) + bytes(8)
        self.bursts = [[bytes(wire.build_circuit_packet(src=h1.address, dst=self.dst,
                                                        label=label, key=KEY, payload=udp))
                        for label in group] for group in groups]  # fmt: skip
        self.tx = call_in(h1.ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                                       socket.IPPROTO_RAW))  # fmt: skip

        def bind() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("0.0.0.0", PORT))
            s.settimeout(0.1)
            return s

        self.rx = call_in(h2.ns, bind)  # the packets end here (no ICMP port unreachable)
        self.pids: list[int] = []
        self._stop = threading.Event()
        self._drain = threading.Thread(target=self._drain_rx, daemon=True)

    def _drain_rx(self) -> None:
        os.sched_setaffinity(0, {self.cpu})
        while not self._stop.is_set():
            try:
                self.rx.recv(2048)
            except OSError:
                continue

    def _send(self, burst: list[bytes]) -> None:  # in the child process
        os.sched_setaffinity(0, {self.cpu})
        period = 1 / self.rate
        nxt = time.monotonic() + period * (os.getpid() % 97) / 97  # phases not aligned
        while True:
            time.sleep(max(0.0, nxt - time.monotonic()))
            for pkt in burst:
                try:
                    self.tx.sendto(pkt, (self.dst, 0))
                except OSError:
                    pass
            nxt += period

    def __enter__(self) -> NodeTraffic:
        self._drain.start()
        for burst in self.bursts:
            pid = os.fork()
            if pid == 0:  # the child only sends, until the parent ends it
                try:
                    self._send(burst)
                finally:
                    os._exit(0)
            self.pids.append(pid)
        return self

    def __exit__(self, *exc: object) -> None:
        for pid in self.pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        self._stop.set()
        self._drain.join(5)
        self.tx.close()
        self.rx.close()


def balanced_groups(cs: Any, per_node: int, *, tries: int = 8) -> list[list[int]]:
    """Labels of exactly ``per_node`` circuits on each running compute node of ``cs`` (the
    LB's split, probed), one list per node in :meth:`running` order, so every node gets the
    same packet rate."""
    from benchmarks._cluster_rig import Load, owners

    names = cs.running()
    chosen: dict[str, list[int]] = {n: [] for n in names}
    for _ in range(tries):
        labels = cs.circuits(per_node * len(names))
        probe = Load(cs, labels)
        try:
            own = owners(cs, probe, labels)
        finally:
            probe.close()
        for i, node in own.items():
            if node in chosen and len(chosen[node]) < per_node:
                chosen[node].append(labels[i])
        if all(len(v) == per_node for v in chosen.values()):
            return [chosen[n] for n in names]
    raise RuntimeError(f"could not place {per_node} circuits on each node: {chosen}")


def node_cpu(
    counts: tuple[int, ...], seconds: float, pps: float, per_node: int, rounds: int
) -> dict[str, float]:
    """CPU per packet of a compute node on sites of 1, 2 and 4 nodes (docs/cluster.md).

    One site per node count, all built first and alive throughout. Each node carries exactly
    ``per_node`` circuits (probed through the LB's split) at ``pps`` packets/s, sent by a
    process of its own (:class:`NodeTraffic`; one thread per site woke a site's nodes back to
    back, and a node woken right behind another used less CPU). ``rounds`` rounds, each an
    idle window (no load: each node's idle CPU rate, i.e. heartbeats, feed reports, stats)
    then a load window in which *every* site is loaded at once: the site processes share
    vCPU ``NODE_CPU`` (the senders have ``GEN_CPU``), and a node's CPU per packet drops when
    that vCPU is busier, so loading one site at a time would favour the sites with more
    nodes. Per node and load window: (its processes' kernel-accounted CPU - its idle rate x
    window) / the packets its TUN devices handed its workers. Figures per node count:
    medians over every (round, node) sample."""
    from contextlib import ExitStack

    from benchmarks._cluster_rig import ClusterSite

    sites: dict[int, Any] = {}
    groups: dict[int, list[list[int]]] = {}
    busy: dict[int, list[tuple[str, int, int, float, int, int]]] = {k: [] for k in counts}
    idle: dict[tuple[int, str], list[float]] = {}  # (site, node) -> ns per s while idle

    def usage() -> dict[tuple[int, str], dict[int, tuple[int, int, bool]]]:
        return {(k, n): _node_usage(sites[k].tb.node(n).ns) for k in counts
                for n in sites[k].running()}  # fmt: skip

    with ExitStack() as stack:
        for k in counts:
            tmp = Path(tempfile.mkdtemp(prefix=f"pcbench-nodes{k}-"))
            # (a site needs nodes > 1 to have an LB: the 1-node site runs one of two)
            sites[k] = stack.enter_context(
                ClusterSite(tmp, nodes=max(2, k), start=k, cpus={NODE_CPU})
            )
            groups[k] = balanced_groups(sites[k], per_node)
        rate = pps / per_node  # rounds/s: each round sends one packet per circuit
        for _ in range(rounds):
            c0, t0 = usage(), time.monotonic()
            time.sleep(seconds)
            c1, window = usage(), time.monotonic() - t0
            for key, before in c0.items():
                idle.setdefault(key, []).append(_delta(before, c1[key])[0] / window)
            with ExitStack() as loads:
                for k in counts:
                    loads.enter_context(NodeTraffic(sites[k], groups[k], rate, GEN_CPU))
                time.sleep(0.5)  # warm-up
                c0, t0 = usage(), time.monotonic()
                p0 = {(k, n): sites[k].tun_rx(n) for k, n in c0}
                time.sleep(seconds)
                c1, window = usage(), time.monotonic() - t0
                p1 = {(k, n): sites[k].tun_rx(n) for k, n in c0}
            for (k, n), before in c0.items():
                used, sleeps, workers = _delta(before, c1[(k, n)])
                busy[k].append((n, used, p1[(k, n)] - p0[(k, n)], window, sleeps, workers))
    out: dict[str, float] = {}
    for k in counts:
        net, gross, pkts, idles, batch, work = [], [], [], [], [], []
        for n, used, packets, window, sleeps, workers in busy[k]:
            rest = statistics.median(idle.get((k, n), [0.0]))
            idles.append(rest)
            pkts.append(packets)
            if packets > 0:
                net.append((used - rest * window) / 1e3 / packets)
                gross.append(used / 1e3 / packets)
                work.append(workers / 1e3 / packets)
                batch.append(packets / max(1, sleeps))
        out[f"cluster_node_cpu_us_per_packet_{k}"] = _med(net)
        out[f"cluster_node_cpu_gross_us_per_packet_{k}"] = _med(gross)
        out[f"cluster_node_worker_cpu_us_per_packet_{k}"] = _med(work)
        out[f"cluster_node_idle_cpu_ms_per_s_{k}"] = _med([v / 1e6 for v in idles])
        out[f"cluster_node_packets_per_window_{k}"] = _med(pkts)
        out[f"cluster_node_packets_spread_{k}"] = _spread(pkts)
        out[f"cluster_node_packets_per_wakeup_{k}"] = _med(batch)
    out["cluster_node_cpu_spread"] = _spread([out[f"cluster_node_cpu_us_per_packet_{k}"]
                                              for k in counts])  # fmt: skip
    out["cluster_node_cpu_gross_spread"] = _spread(
        [out[f"cluster_node_cpu_gross_us_per_packet_{k}"] for k in counts]
    )
    return out


def _spread(xs: list[float]) -> float:
    """max / min - 1 (0: all equal; the flatness goal is <= 0.15)."""
    return round(max(xs) / min(xs) - 1, 4) if xs and min(xs) > 0 else float("nan")


def _med(xs: list[float]) -> float:
    return round(statistics.median(xs), 3) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks.cluster", description=__doc__.split("\n")[0])
    ap.add_argument("--json", metavar="PATH", help="write the figures here")
    ap.add_argument("--circuits", type=int, default=100000, help="labels for the churn figure")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--circuits-live", type=int, default=12)
    ap.add_argument("--rate", type=float, default=100.0, help="rounds per second of the load")
    ap.add_argument("--packets", type=int, default=20000, help="packets per LB-cost round")
    ap.add_argument("--cpu-seconds", type=float, default=3.0,
                    help="CPU window per site and round")  # fmt: skip
    ap.add_argument("--cpu-pps", type=float, default=1000.0,
                    help="packets per second per compute node in the CPU rounds")  # fmt: skip
    ap.add_argument("--cpu-circuits", type=int, default=3,
                    help="circuits per compute node in the CPU rounds")  # fmt: skip
    ap.add_argument("--cpu-rounds", type=int, default=0,
                    help="interleaved CPU rounds (default: --rounds)")  # fmt: skip
    args = ap.parse_args(argv)
    out = {"cluster_moved_fraction": round(moved_fraction(args.circuits), 4)}
    if os.geteuid() == 0:
        ms, lost = failover(args.rounds, args.nodes, args.circuits_live, args.rate)
        out.update(cluster_failover_ms=round(ms, 1), cluster_failover_lost_other=lost)
        lb_us, plain_us = lb_cost(args.packets, args.rounds)
        out.update(cluster_lb_us_per_packet=round(lb_us - plain_us, 3),
                   cluster_lb_path_us_per_packet=round(lb_us, 3),
                   cluster_plain_path_us_per_packet=round(plain_us, 3))  # fmt: skip
        out.update(node_cpu((1, 2, 4), args.cpu_seconds, args.cpu_pps, args.cpu_circuits,
                            args.cpu_rounds or args.rounds))  # fmt: skip
    else:
        print("benchmarks.cluster: not root: failover figures skipped", file=sys.stderr)
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
