"""Metered usage lost when the site daemon stops under load (SIGTERM and SIGKILL).

One site (:mod:`benchmarks._site_rig`, 1 worker, ``metering.interval`` as given) relays a
circuit to a receiver D (the last hop strips the shim, D counts UDP datagrams). A paced sender
in S sends ``--rate`` packets/s; ``--kill-after`` seconds in, the daemon gets SIGTERM or
SIGKILL. Every packet D received was metered by the site's worker (a delivered packet went
through the service), so the usage lost on the stop is

    lost = packets delivered to D - packets in the site's usage ledger

read from the ledger file after the daemon is gone. Figures (medians over ``--rounds``
interleaved SIGTERM/SIGKILL rounds):

* ``metering_lost_on_stop_sigterm``: packets missing after SIGTERM (goal 0);
* ``metering_lost_on_stop_sigkill_s``: seconds of traffic missing after SIGKILL,
  ``lost / rate`` (goal <= 1 s; the bound is ``metering.interval`` + the workers' 0.25 s
  report interval);
* the raw counts per round (``rounds``).

The daemon runs on vCPU 1, the sender on vCPU 0.

    .venv/bin/python -m benchmarks.metering_stop --json /tmp/metering_stop.json
"""

from __future__ import annotations

import signal
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._report import options_main
from benchmarks._site_rig import SiteRig, pin

KEY = bytes(range(16))
PORT = 9999


def _ledger_packets(path: Path) -> int:
    from pcsite_lite.billing.ledger import Ledger

    if not path.exists():
        return 0
    with Ledger(path, create=False) as led:
        return sum(r.counters.packets for r in led.records("acme"))


def one_round(tmp: Path, sig: int, *, rate: float, seconds: float, kill_after: float,
              interval: float) -> dict[str, Any]:  # fmt: skip
    from pcsock import wire

    with SiteRig(tmp, metering_interval=interval) as rig:
        acme = rig.client()
        label = acme.allocate_circuit("relay")["label"]
        acme.install_hop(label, in_key=KEY, deliver=SiteRig.D, strip=True)
        rx = rig.udp_receiver(PORT)
        got = [0]
        done = threading.Event()

        def receive() -> None:
            while not done.is_set():
                try:
                    rx.recv(2048)
                    got[0] += 1
                except TimeoutError:
                    continue

        t = threading.Thread(target=receive, daemon=True)
        t.start()
        body = bytes(64)
        udp = struct.pack("!HHHH", 5555, PORT, 8 + len(body), 0) + body
        pkt = bytes(wire.build_circuit_packet(src=SiteRig.S, dst=SiteRig.SITE, label=label,
                                              key=KEY, payload=udp))  # fmt: skip
        tx = rig.raw_sender()
        sent = 0
        t0 = time.monotonic()
        killed_at = None
        while True:
            now = time.monotonic() - t0
            if now >= seconds:
                break
            if killed_at is None and now >= kill_after:
                killed_at = now
                stopper = threading.Thread(target=rig.stop, args=(sig,), daemon=True)
                stopper.start()
            due = int(now * rate)
            while sent < due:
                tx.sendto(pkt, (SiteRig.SITE, 0))
                sent += 1
            time.sleep(0.001)
        tx.close()
        stopper.join(30)
        time.sleep(0.5)  # the last delivered packets reach D's socket
        done.set()
        t.join()
        rx.close()
        metered = _ledger_packets(rig.ledger)
        delivered = got[0]
    lost = delivered - metered
    return {"signal": signal.Signals(sig).name, "sent": sent, "delivered": delivered,
            "in_ledger": metered, "lost": lost, "lost_s": lost / rate}  # fmt: skip


def run(*, rate: float = 2000, seconds: float = 3.0, kill_after: float = 2.0,
        interval: float = 0.5, rounds: int = 3) -> dict[str, Any]:  # fmt: skip
    pin(0)
    tmp = Path(tempfile.mkdtemp(prefix="pcmeter"))
    res: dict[str, Any] = {"rate_pps": rate, "seconds": seconds, "kill_after_s": kill_after,
                           "metering_interval_s": interval, "rounds": []}  # fmt: skip
    for _ in range(rounds):  # interleaved: TERM, KILL, TERM, KILL, ...
        for sig in (signal.SIGTERM, signal.SIGKILL):
            res["rounds"].append(one_round(tmp, sig, rate=rate, seconds=seconds,
                                           kill_after=kill_after, interval=interval))  # fmt: skip
    term = [r for r in res["rounds"] if r["signal"] == "SIGTERM"]
    kill = [r for r in res["rounds"] if r["signal"] == "SIGKILL"]
    res["metering_lost_on_stop_sigterm"] = statistics.median(r["lost"] for r in term)
    res["metering_lost_on_stop_sigterm_max"] = max(r["lost"] for r in term)
    res["metering_lost_on_stop_sigkill"] = statistics.median(r["lost"] for r in kill)
    res["metering_lost_on_stop_sigkill_s"] = statistics.median(r["lost_s"] for r in kill)
    res["metering_lost_on_stop_sigkill_s_max"] = max(r["lost_s"] for r in kill)
    return res


def main(argv: list[str] | None = None) -> int:
    return options_main(argv, "metering_stop", __doc__, {
        "--rate": (float, 2000.0, "packets/s"), "--rounds": (int, 3, "interleaved rounds"),
        "--seconds": (float, 3.0, "load duration per round"),
        "--kill-after": (float, 2.0, "signal this far into it"),
        "--interval": (float, 0.5, "the site's metering.interval"),
    }, run, root="namespaces, TUN, nftables")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
