"""How a site survives SIGKILL: of the daemon (restart under load) and of a worker.

Topology (benchmarks/_site_rig.py): sender S -- site A -- receiver D. ``--circuits`` form-1
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

import os
import select
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._report import arguments, emit
from benchmarks._site_rig import SiteRig, pin

KEY = bytes(range(16))
PORT = 9999
_REC = struct.Struct("!HI")  #: circuit index, sequence number


class Traffic:
    """Numbered packets on every circuit (sent from S), arrivals recorded at D."""

    def __init__(self, rig: SiteRig, labels: list[int], rate: float) -> None:
        from pcsock import wire

        self.sent: dict[tuple[int, int], float] = {}
        self.arrived: dict[tuple[int, int], float] = {}
        self._tx = rig.raw_sender()
        self._rx = rig.udp_receiver(PORT)
        self._site, self._src = rig.SITE, rig.S
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
                pkt = self._wire.build_circuit_packet(src=self._src, dst=self._site, label=label,
                                                      key=KEY, payload=payload)  # fmt: skip
                self.sent[(i, seq)] = time.monotonic()
                try:
                    self._tx.sendto(bytes(pkt), (self._site, 0))
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


def _proof(root: Any, prefix: str) -> str:
    """A proof, valid for an hour, that acme owns ``prefix`` for its service "guard"."""
    from pcsock.ownership import OwnershipClaim, ZoneKey, build_proof, reverse_zone

    now = time.time()
    claim = OwnershipClaim(prefix, "acme", "guard", now - 60, now + 3600)
    zone = ZoneKey.generate(reverse_zone(prefix))
    return str(build_proof([claim], zone, chain=[root], inception=now - 60,
                           expiration=now + 3600))  # fmt: skip


def _install(rig: SiteRig, root: Any, circuits: int) -> list[int]:
    c = rig.client()
    labels = []
    for _ in range(circuits):
        label = c.allocate_circuit("relay", lifetime=3600)["label"]
        c.install_hop(label, in_key=KEY, deliver=rig.D, strip=True, lifetime=3600)
        labels.append(label)
    c.register_service_id("tagger")
    # a destination registration (its prefix is diverted; no traffic goes there here)
    c.register_destination(rig.OWNED, "guard", _proof(root, rig.OWNED))
    c.allocate_circuit("relay", lifetime=3600)  # a reservation, installed later
    return labels


def _start(rig: SiteRig) -> float:
    """``pcsite run`` with the same config again; seconds until "site up"."""
    t0 = time.monotonic()
    rig.start()
    return time.monotonic() - t0


def _kill(rig: SiteRig) -> float:
    """SIGKILL the daemon; the monotonic time it was dead."""
    assert rig.proc is not None
    rig.proc.kill()
    rig.proc.wait()
    return time.monotonic()


def _leftovers(rig: SiteRig, running_workers: int) -> list[str]:
    from pcsite_lite.daemon.config import load
    from pcsite_lite.daemon.kernel import Kernel

    cfg = load(rig.config)
    return rig.in_ns("a", lambda: Kernel(cfg).leftovers(running_workers=running_workers))


def _state(rig: SiteRig) -> dict[str, int]:
    st = rig.client(admin=True).status()
    return {"circuits": int(st["circuits"]), "service_ids": len(st["service_ids"]),
            "destinations": len(st["destinations"])}  # fmt: skip


def _daemon_round(rig: SiteRig, traffic: Traffic, n: int) -> dict[str, Any]:
    before = _state(rig)
    traffic.wait_all_after(time.monotonic(), n, 10)
    dead = _kill(rig)
    _start(rig)
    resumed = traffic.wait_all_after(dead, n, 30)
    after = _state(rig)
    lost = sum(max(0, before[k] - after.get(k, 0)) for k in before)
    return {"resume_s": max(resumed.values()) - dead, "state_lost": lost,
            "leftovers_running": _leftovers(rig, rig.workers)}  # fmt: skip


def _worker_round(rig: SiteRig, traffic: Traffic, n: int) -> dict[str, Any]:
    admin = rig.client(admin=True)
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
    from pcsock.ownership import ZoneKey

    root = ZoneKey.generate("in-addr.arpa.")  # the site's DNSSEC trust anchor
    pin(1)  # the load generator (this process); the daemon runs on vCPU 0
    res: dict[str, Any] = {"circuits": circuits, "rate_per_circuit": rate, "workers": workers,
                           "rounds": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="pcvbench") as tmp:
        with SiteRig(Path(tmp), workers=workers, daemon_cpus="0",
                     trust_anchor=root.ds_text()) as rig:  # fmt: skip
            rig.stop()
            for r in range(rounds):
                rd: dict[str, Any] = {}
                # baseline: a cold start of the same command (fresh state, clean kernel)
                for p in rig.ledger.parent.glob("*"):
                    if p.is_file():
                        p.unlink()
                rd["cold_start_s"] = _start(rig)
                labels = _install(rig, root, circuits)
                with Traffic(rig, labels, rate) as traffic:
                    faults = [("daemon", _daemon_round), ("worker", _worker_round)]
                    if r % 2:
                        faults.reverse()  # interleave which fault comes first
                    for name, fn in faults:
                        rd[name] = fn(rig, traffic, len(labels))
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
                assert rig.stop() == 0
                rd["leftovers_stopped"] = _leftovers(rig, 0)
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
    args = arguments(argv, "survival", __doc__, {
        "--circuits": (int, 32, "form-1 circuits under load"), "--rounds": (int, 3, "rounds"),
        "--rate": (float, 50.0, "packets/s per circuit"),
        "--workers": (int, 2, "site workers (at least 2)"),
    }, root="namespaces, TUN, nftables")  # fmt: skip
    if args is None:
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
