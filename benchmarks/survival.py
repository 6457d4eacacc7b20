"""How a site survives SIGKILL: of the daemon (restart under load) and of a worker.

Topology (benchmarks/_sitenet.py): sender S -- site A -- receiver D. ``--circuits`` form-1
circuits at A deliver to D; the load generator (a thread of this process, pinned to another
vCPU than the daemon) sends numbered packets on every circuit at ``--rate`` per circuit per
second; D's socket records which arrived and when. Rounds interleave the two faults:

daemon   SIGKILL of ``pcsite run`` under load, then the same command again (what a service
         manager with ``Restart=on-failure`` does, RestartSec=0 here).
         ``restart_resume_s``: from the daemon's death until every circuit delivered a packet
         sent after it; ``restart_state_lost``: circuits + service IDs + destination
         registrations missing after the restart; ``restart_kernel_leftovers``: kernel
         objects beyond one instance's while the new one runs, plus any after its clean stop.
         Baseline: ``cold_start_s``, the same command on a clean namespace (no state, no
         leftovers) until "site up", measured in the same invocation;
         ``restart_resume_vs_cold_start`` is the ratio.
worker   SIGKILL of worker 0 under load (the test waits on its pidfd: it is dead);
         ``worker_restart_lost_packets``: packets sent after its death that never arrived
         (packets it held when killed are "in flight" and reported apart as
         ``worker_restart_inflight_lost``).

Figures are medians over the rounds (``*_max`` the worst round).

    sudo .venv/bin/python -m benchmarks.survival --json /tmp/survival.json
    sudo .venv/bin/python -m benchmarks.survival --circuits 4 --rounds 1 --json /tmp/s.json
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._report import emit
from benchmarks._sitenet import SITE, D, S, SiteNet, site_net

KEY = bytes(range(16))
PORT = 9999
_REC = struct.Struct("!HI")  #: circuit index, sequence number


class Traffic:
    """Numbered packets on every circuit (sent from S), arrivals recorded at D."""

    def __init__(self, net: SiteNet, labels: list[int], rate: float) -> None:
        from pcsock import wire

        self.sent: dict[tuple[int, int], float] = {}
        self.arrived: dict[tuple[int, int], float] = {}
        self._tx = net.call_in("s", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                                         socket.IPPROTO_RAW))  # fmt: skip

        def rx() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((D, PORT))
            s.settimeout(0.1)
            return s

        self._rx = net.call_in("d", rx)
        self._labels = labels
        self._rate = rate
        self._wire = wire
        self._sending = threading.Event()
        self._receiving = threading.Event()
        self._threads = [threading.Thread(target=self._send), threading.Thread(target=self._recv)]

    def __enter__(self) -> Traffic:
        self._sending.set()
        self._receiving.set()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sending.clear()
        self._threads[0].join()
        time.sleep(1.0)  # what is still on its way
        self._receiving.clear()
        self._threads[1].join()
        self._tx.close()
        self._rx.close()

    def _send(self) -> None:
        udp = struct.Struct("!HHHH")
        seq = 0
        period = 1.0 / self._rate
        next_t = time.monotonic()
        while self._sending.is_set():
            for i, label in enumerate(self._labels):
                body = _REC.pack(i, seq)
                payload = udp.pack(5555, PORT, 8 + len(body), 0) + body
                pkt = self._wire.build_circuit_packet(src=S, dst=SITE, label=label, key=KEY,
                                                      payload=payload)  # fmt: skip
                self.sent[(i, seq)] = time.monotonic()
                try:
                    self._tx.sendto(bytes(pkt), (SITE, 0))
                except OSError:
                    pass
            seq += 1
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))

    def _recv(self) -> None:
        while self._receiving.is_set():
            try:
                data = self._rx.recv(2048)
            except (TimeoutError, OSError):
                continue
            if len(data) >= _REC.size:
                self.arrived[_REC.unpack_from(data)] = time.monotonic()

    def first_after(self, t: float) -> dict[int, float]:
        """Per circuit: the arrival of its first packet sent after ``t``."""
        out: dict[int, float] = {}
        for key, at in list(self.arrived.items()):
            if self.sent.get(key, 0.0) > t and at < out.get(key[0], float("inf")):
                out[key[0]] = at
        return out

    def wait_all_after(self, t: float, n: int, timeout: float) -> dict[int, float]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = self.first_after(t)
            if len(got) == n:
                return got
            time.sleep(0.02)
        raise RuntimeError(f"only {len(self.first_after(t))} of {n} circuits forwarded")


def _install(net: SiteNet, circuits: int) -> list[int]:
    c = net.client()
    labels = []
    for _ in range(circuits):
        label = c.allocate_circuit("relay", lifetime=3600)["label"]
        c.install_hop(label, in_key=KEY, deliver=D, strip=True, lifetime=3600)
        labels.append(label)
    c.register_service_id("tagger")
    prefix = "198.18.74.0/24"  # a destination registration (diverted, no traffic here)
    c.register_destination(prefix, "guard", net.ownership_proof(prefix, "bench", "guard"))
    c.allocate_circuit("relay", lifetime=3600)  # a reservation, installed later
    return labels


def _state(net: SiteNet) -> dict[str, int]:
    st = net.client(None).status()
    return {"circuits": int(st["circuits"]), "service_ids": len(st["service_ids"]),
            "destinations": len(st["destinations"])}  # fmt: skip


def _daemon_round(net: SiteNet, traffic: Traffic, n: int) -> dict[str, Any]:
    before = _state(net)
    traffic.wait_all_after(time.monotonic(), n, 10)
    dead = net.kill()
    net.start()
    resumed = traffic.wait_all_after(dead, n, 30)
    after = _state(net)
    lost = sum(max(0, before[k] - after.get(k, 0)) for k in before)
    return {"resume_s": max(resumed.values()) - dead, "state_lost": lost,
            "leftovers_running": net.leftovers(net.workers)}  # fmt: skip


def _worker_round(net: SiteNet, traffic: Traffic, n: int) -> dict[str, Any]:
    admin = net.client(None)
    traffic.wait_all_after(time.monotonic(), n, 10)
    victim = next(w for w in admin.status()["workers"] if w["index"] == 0)
    pidfd = os.pidfd_open(victim["pid"])
    os.kill(victim["pid"], 9)
    select.select([pidfd], [], [], 10)
    dead = time.monotonic()
    os.close(pidfd)
    end = dead + 15
    while time.monotonic() < end:
        w = next(w for w in admin.status()["workers"] if w["index"] == 0)
        if w["up"] and w["pid"] != victim["pid"] and w["buckets"] > 0:
            break
        time.sleep(0.05)
    else:
        raise RuntimeError("worker 0 did not come back")
    time.sleep(0.5)
    return {"dead": dead, "end": time.monotonic() - 0.4}  # what was sent by then has arrived


def run(circuits: int, rate: float, rounds: int, workers: int) -> dict[str, Any]:
    ncpu = os.cpu_count() or 1
    site_cpus = "0" if ncpu > 1 else None
    if ncpu > 1:  # the load generator (this process) on the other vCPUs than the daemon
        os.sched_setaffinity(0, set(range(1, ncpu)))
    res: dict[str, Any] = {"circuits": circuits, "rate_per_circuit": rate, "workers": workers,
                           "rounds": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="pcvbench") as tmp:
        with site_net(Path(tmp), workers=workers, cpus=site_cpus) as net:
            for r in range(rounds):
                rd: dict[str, Any] = {}
                # baseline: a cold start of the same command (fresh state, clean kernel)
                for p in (Path(tmp) / "state").glob("*"):
                    if p.is_file():
                        p.unlink()
                rd["cold_start_s"] = net.start()
                labels = _install(net, circuits)
                with Traffic(net, labels, rate) as traffic:
                    faults = [("daemon", _daemon_round), ("worker", _worker_round)]
                    if r % 2:
                        faults.reverse()  # interleave which fault comes first
                    for name, fn in faults:
                        rd[name] = fn(net, traffic, len(labels))
                # the worker fault's window: from its death until it had its buckets back
                # (+0.5 s); the other fault's losses fall outside it
                dead, end = rd["worker"].pop("dead"), rd["worker"].pop("end")
                sent = traffic.sent.items()
                after = [k for k, t in sent if dead < t <= end]
                rd["worker"]["sent_after"] = len(after)
                rd["worker"]["lost"] = sum(1 for k in after if k not in traffic.arrived)
                rd["worker"]["inflight_lost"] = sum(
                    1 for k, t in sent if dead - 0.5 < t <= dead and k not in traffic.arrived
                )
                assert net.stop() == 0
                rd["leftovers_stopped"] = net.leftovers(0)
                rd["kernel_leftovers"] = len(rd["daemon"]["leftovers_running"]) + len(
                    rd["leftovers_stopped"]
                )
                res["rounds"].append(rd)
    rs = res["rounds"]

    def med(xs: list[float]) -> float:
        return float(statistics.median(xs))

    res["figures"] = {
        "restart_resume_s": med([r["daemon"]["resume_s"] for r in rs]),
        "restart_resume_s_max": max(r["daemon"]["resume_s"] for r in rs),
        "cold_start_s": med([r["cold_start_s"] for r in rs]),
        "restart_resume_vs_cold_start": med(
            [r["daemon"]["resume_s"] / r["cold_start_s"] for r in rs]
        ),
        "restart_state_lost": max(r["daemon"]["state_lost"] for r in rs),
        "restart_kernel_leftovers": max(r["kernel_leftovers"] for r in rs),
        "worker_restart_lost_packets": int(med([r["worker"]["lost"] for r in rs])),
        "worker_restart_lost_packets_max": max(r["worker"]["lost"] for r in rs),
        "worker_restart_inflight_lost": int(med([r["worker"]["inflight_lost"] for r in rs])),
    }
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="survival")
    ap.add_argument("--json", help="write the figures (and every round) to this path")
    ap.add_argument("--circuits", type=int, default=32)
    ap.add_argument("--rate", type=float, default=50.0, help="packets/s per circuit")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("survival: needs root (namespaces, TUN, nftables)", file=sys.stderr)
        return 2
    if args.workers < 2:
        print("survival: --workers must be at least 2 (a survivor takes the buckets)",
              file=sys.stderr)  # fmt: skip
        return 2
    res = run(max(1, args.circuits), max(1.0, args.rate), max(1, args.rounds), args.workers)
    emit({**res["figures"], "rounds": res["rounds"], "circuits": res["circuits"],
          "rate_per_circuit": res["rate_per_circuit"], "workers": res["workers"]},
         args.json)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
