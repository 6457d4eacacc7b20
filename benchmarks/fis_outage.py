"""A FIS engine outage at a live site: delivery from the node cache, and recovery afterwards.

Built with the testbed (a small topology: sender S -- R1 -- D, site C1 co-located at R1, the
FIS node's Redis on the control network with its ACL users and append-only file). ``pcsite run``
runs in C1 with the PSP's source-routing service uploaded and activated through the control
API, so every packet's next hop comes from a FIS ``fetch`` through the worker's cache.

Each round (``--rounds``, default 3):

1. a fresh circuit Y is allocated whose FIS entry is *not* written yet; the measured circuit X
   (entry written once at start, so cached) carries ``--rate`` packets/s, Y a fifth of that;
2. ``--before`` seconds of normal operation;
3. the FIS Redis is SIGKILLed for ``--outage`` seconds (default 10);
4. Redis is started again (same directory: the entries come back from the AOF); the PSP writes
   Y's entry through the control API, retrying while it answers 503 ``unavailable``.

Figures (medians over rounds):

* ``fis_outage_delivered_ratio``: X's delivered share during the outage over its delivered
  share in the ``--before`` window of the same round (goal >= 0.99);
* ``fis_outage_recovery_s``: from Redis accepting connections again until the first packet of
  Y (steered by the entry written after the outage) reaches D; no provider action other than
  that write (goal <= 1 s). ``fis_outage_write_recovery_s``: until that write was accepted.

The sender and receiver run in this process, pinned to one vCPU; the site daemon and its
workers are pinned to another (when the machine has two).

    .venv/bin/python -m benchmarks.fis_outage --json /tmp/fis_outage.json
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks._report import emit
from pcdemo.rig import start_pcsite

TOPOLOGY = {
    "name": "fisoutage",
    "control": {"subnet": "198.19.7.0/24"},
    "node": [
        {"name": "S", "kind": "host", "prefix": "198.18.70.0/24"},
        {"name": "D", "kind": "host", "prefix": "198.18.71.0/24"},
        {"name": "R1", "kind": "router"},
        {"name": "C1", "kind": "site", "router": "R1", "public_ip": "198.18.254.70"},
        {"name": "FIS", "kind": "fis", "engine": "redis"},
    ],
    "link": [{"a": "S", "b": "R1"}, {"a": "R1", "b": "D"}],
}
ADMIN = "bench-admin-token-0123456789"
PSP = "acme"
PSP_TOKEN = "bench-acme-token-0123456789"
KEY = bytes(range(16))
PORT = 9999


def _until(pred: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.002)
    return time.monotonic()


class Flows:
    """Numbered packets for several circuits at fixed rates; arrivals at D by circuit."""

    def __init__(self, tb: Any, site_ip: str, dst: str) -> None:
        self.tb, self.site_ip = tb, site_ip
        self.tx = tb.node("S").call(
            lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        )

        def bind() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((dst, PORT))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            s.settimeout(0.1)
            return s

        self.rx = tb.node("D").call(bind)
        self.src = tb.node("S").address
        self.flows: dict[int, tuple[float, int]] = {}  # label -> (rate, flow id)
        self.sent: dict[int, list[float]] = {}  # flow id -> send times
        self.got: dict[int, dict[int, float]] = {}  # flow id -> seq -> arrival time
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._send), threading.Thread(target=self._recv)]

    def add(self, label: int, rate: float) -> int:
        with self._lock:
            fid = len(self.sent)
            self.sent[fid], self.got[fid] = [], {}
            self.flows[label] = (rate, fid)
        return fid

    def drop(self, label: int) -> None:
        with self._lock:
            self.flows.pop(label, None)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _send(self) -> None:
        from pcsock import wire

        tick = 0.001
        due: dict[int, float] = {}
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                flows = list(self.flows.items())
            for label, (rate, fid) in flows:
                nxt = due.setdefault(fid, now)
                while nxt <= now:
                    seq = len(self.sent[fid])
                    body = struct.pack("!II", fid, seq)
                    udp = struct.pack("!HHHH", 5555, PORT, 8 + len(body), 0) + body
                    pkt = wire.build_circuit_packet(
                        src=self.src, dst=self.site_ip, label=label, key=KEY, payload=udp
                    )
                    self.sent[fid].append(time.monotonic())
                    try:
                        self.tx.sendto(bytes(pkt), (self.site_ip, 0))
                    except OSError:
                        pass
                    nxt += 1.0 / rate
                due[fid] = nxt
            time.sleep(tick)

    def _recv(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.rx.recv(64)
            except TimeoutError:
                continue
            t = time.monotonic()
            fid, seq = struct.unpack("!II", data[:8])
            self.got.get(fid, {}).setdefault(seq, t)

    def share(self, fid: int, t0: float, t1: float) -> float:
        """Delivered share of the flow's packets sent in [t0, t1)."""
        sent = [i for i, t in enumerate(self.sent[fid]) if t0 <= t < t1]
        if not sent:
            return 0.0
        got = self.got[fid]
        return sum(1 for i in sent if i in got) / len(sent)

    def arrived_after(self, fid: int, t0: float) -> bool:
        return self.first_after(fid, t0) is not None

    def first_after(self, fid: int, t0: float) -> float | None:
        times = [t for t in self.got[fid].values() if t >= t0]
        return min(times) if times else None


def run(
    outage: float = 10.0, before: float = 5.0, rounds: int = 3, rate: float = 1000.0
) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from pcsite_lite.control.client import ControlClient, ControlError
    from pcsite_lite.repository import public_key_bytes, sign_service
    from pcsite_lite.services import source
    from testbed import Testbed
    from testbed.topology import from_dict

    cpus = sorted(os.sched_getaffinity(0))
    gen_cpu, site_cpu = cpus[-1], cpus[0]
    key = Ed25519PrivateKey.generate()
    tmp = Path(tempfile.mkdtemp(prefix="pcf-outage-"))
    ratios: list[float] = []
    recovery: list[float] = []
    write_recovery: list[float] = []
    with Testbed(from_dict(TOPOLOGY), prefix="pcfo") as tb:
        info = tb.site("C1")
        d_addr = tb.node("D").address
        assert d_addr and info.fis_redis
        state = tmp / "state"
        state.mkdir()
        cfg = tmp / "c1.toml"
        cfg.write_text(f"""[site]
name = "C1"
public_ip = "{info.public_ip}"
workers = 1
state_dir = "{state}"
fis = "{info.fis_redis}"
repository = "{tmp / "repo"}"

[dataplane]
tun_prefix = "pcfo"

[control]
listen = "127.0.0.1:8080"
admin_token = "{ADMIN}"

[control.psps.{PSP}]
token = "{PSP_TOKEN}"
signing_key = "{public_key_bytes(key).hex()}"
""")
        node = tb.node("C1")
        proc = start_pcsite(node, cfg, cpus=str(site_cpu))

        client = ControlClient("http://127.0.0.1:8080", token=PSP_TOKEN, psp=PSP)

        def api(fn: Callable[[], Any]) -> Any:
            return node.call(fn)

        code = source("source_routing").encode()
        signature = sign_service(key, PSP, "srcroute", "1", code)
        api(lambda: client.upload_service("srcroute", "1", code, signature))
        api(lambda: client.activate_service("srcroute", "1"))

        def circuit() -> int:
            label = api(lambda: client.allocate_circuit("srcroute"))["label"]
            api(lambda: client.install_hop(label, in_key=KEY, deliver=d_addr, strip=True,
                                           lifetime=3600))  # fmt: skip
            return int(label)

        def route(label: int) -> None:  # the FIS entry the service follows
            api(lambda: client.fis_put("srcroute", str(label),
                                       {"label": label, "next_hop": d_addr}))  # fmt: skip

        x = circuit()
        route(x)
        flows = Flows(tb, info.public_ip, d_addr)
        fx = flows.add(x, rate)
        os.sched_setaffinity(0, {gen_cpu})
        flows.start()
        try:
            _until(lambda: len(flows.got[fx]) > 20, 15, "the measured circuit to deliver")
            for _ in range(rounds):
                y = circuit()
                fy = flows.add(y, rate / 5)
                t_before = time.monotonic()
                time.sleep(before)
                t_down = time.monotonic()
                tb.kill_fis()
                time.sleep(outage)
                t_up0 = time.monotonic()
                tb.start_fis()
                t_up = time.monotonic()
                while True:
                    try:
                        route(y)
                        break
                    except ControlError as exc:
                        if exc.code != "unavailable" or time.monotonic() - t_up > 30:
                            raise
                        time.sleep(0.01)
                t_written = time.monotonic()
                _until(partial(flows.arrived_after, fy, t_up), 30,
                       "the entry written after the outage to take effect")  # fmt: skip
                first = flows.first_after(fy, t_up)
                assert first is not None
                flows.drop(y)
                time.sleep(0.3)
                share_before = flows.share(fx, t_before, t_down)
                share_during = flows.share(fx, t_down, t_up0)
                ratios.append(share_during / share_before if share_before else 0.0)
                recovery.append(first - t_up)
                write_recovery.append(t_written - t_up)
        except BaseException:
            print(proc.log_text()[-3000:], file=sys.stderr)
            admin = ControlClient("http://127.0.0.1:8080", token=ADMIN)
            print(api(admin.metrics), file=sys.stderr)
            raise
        finally:
            flows.stop()
            os.sched_setaffinity(0, set(cpus))

    return {
        "fis_outage_delivered_ratio": round(statistics.median(ratios), 4),
        "fis_outage_recovery_s": round(statistics.median(recovery), 3),
        "fis_outage_write_recovery_s": round(statistics.median(write_recovery), 3),
        "fis_outage_s": outage,
        "fis_outage_rate_pps": rate,
        "fis_outage_rounds": rounds,
        "fis_outage_delivered_ratio_rounds": [round(r, 4) for r in ratios],
        "fis_outage_recovery_s_rounds": [round(r, 3) for r in recovery],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks.fis_outage", description=__doc__.split("\n")[0])
    ap.add_argument("--json", metavar="PATH", help="write the figures here")
    ap.add_argument("--outage", type=float, default=10.0, help="seconds Redis stays down")
    ap.add_argument("--before", type=float, default=5.0, help="seconds measured before it")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=1000.0, help="packets/s on the circuit")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 0.5 s outage, 1 round")
    args = ap.parse_args(argv)
    if args.quick:
        args.outage, args.before, args.rounds, args.rate = 0.5, 0.5, 1, 200.0
    if os.geteuid() != 0:
        print("benchmarks.fis_outage needs root (namespaces)", file=sys.stderr)
        return 2
    emit(run(args.outage, args.before, args.rounds, args.rate), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
