"""Site forwarding throughput, added hop latency and worker CPU, against kernel forwarding.

Topology (:mod:`benchmarks._site_rig`): sender S -- A -- B -- receiver D, each a network
namespace; A is the device under test, B forwards in the kernel, D counts what arrives at its
kernel (``Ip: InReceives``). Every mode runs on the same topology with the same packets:

  kernel    plain IPv4 forwarding on A (no daemon); the circuit packets addressed to D
  bare      the daemon with the bare TUN forwarder (read, rewrite destination, write), 1 worker
  site      the daemon's form-1 path with the shipped source-routing service (MAC verify,
            FIS-cache-chosen out hop, label swap, re-MAC) over ``--circuits`` circuits, in IP
            mode (protocol 253) and UDP-encapsulated, at 1 and 2 workers; UDP mode also with
            results sent by ``sendmmsg`` on a raw socket (``tx = "raw"``: ``_udp_batched``)

Method (docs/benchmarks.md):

* **Pinning**: the load generator (and this process, which also receives the latency probes)
  run on ``--sender-cpu``; the site's workers are pinned by the daemon (``[dataplane] cpus``)
  to ``--worker-cpus`` (worker ``i`` to the ``i``-th; with two vCPUs the second worker shares
  the sender's vCPU, which bounds ``scaling_2w_vs_1w``).
* **Load**: a sender process sends with ``sendmmsg`` (:func:`pcsite_lite.fastio.send_batch`)
  in batches, paced to an offered rate. **Throughput** is the rate delivered at the highest
  offered rate with < 1 % loss: one unpaced run finds the saturation rate, then paced runs
  at fractions of it (down from 1.0, up to 1.2 when 1.0 passes) find the highest that loses
  < 1 % (loss counted from the sender's count and D's ``InReceives``).
* **Latency**: a ping-pong at low rate, not under load: one probe in flight, each carrying
  its send time (CLOCK_MONOTONIC is one clock for every namespace), D stamps its arrival;
  ``hop_latency_added_us_median`` is the median one-way time through the site (1 worker)
  minus the median through kernel forwarding of the same packets.
* **Worker CPU**: each worker's scheduler time (``/proc/PID/task/*/schedstat``) over the
  accepted load run, per packet the worker received; and the workers' CPU share during the
  ping-pong with the default busy-poll window, without one (``_no_busy_poll``) and with one
  longer than the probes' spacing (``_spin``: the worker never sleeps; what a wake-up costs).
* **Three paths**: every site figure for the default dataplane, where the worker switches
  natively declared circuits in C (``pcsite_lite.native``; the shipped source-routing
  service declares it; unsuffixed), suffixed ``_accel`` for the Python pipeline with the C
  accelerator (``[dataplane] native = false``), and suffixed ``_pure`` for the pure-Python
  path (the daemon started with ``PACKETCLOUD_PURE=1``). ``native_share_1w*`` is the share of
  the accepted load run's packets the worker switched in C.
* **The TUN floor**: on A (no daemon), a TUN device's per-packet cost measured alone, in CPU
  time of the measuring thread: a batch of packets queued into it (routed to it by a raw
  socket) then read out with the native switch's batched reads (``tun_read_us_per_packet``),
  and packets written into it and dropped by a blackhole route (``tun_write_us_per_packet``:
  the syscall and the kernel's receive path up to the routing decision). That is what a TUN
  dataplane pays per packet on top of the kernel's own forwarding work;
  ``tun_floor_pps`` = 10^6 / (read + write) and ``tun_floor_vs_kernel`` relates it to kernel
  forwarding measured in the same round.
* **Rounds**: ``--rounds`` interleaved rounds (every mode once per round); each figure is the
  median over the rounds; ``scaling_2w_vs_1w_rounds`` and the per-worker shares give each round.

    .venv/bin/python -m benchmarks.site_forwarding --json /tmp/site_forwarding.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._site_rig import SiteChain

#: (figure suffix, dataplane) of every site path measured: native C switch, the Python
#: pipeline with the accelerator, the pure-Python path
PATHS = (("", "native"), ("_accel", "accel"), ("_pure", "pure"))
PAYLOAD = 64  # bytes after the shim (--payload)
PROBES = 300  # latency probes per mode (--probes)
CIRCUITS = 64  # circuits the load spreads over (one circuit always lands on one worker)
SEND_BATCH = 32  # datagrams per sendmmsg
MAX_LOSS = 0.01
UDP_PORT = 6253
IPPROTO_PC = 253
LAT_GAP = 0.002  # seconds between one probe's arrival and the next probe
SPIN_US = 10_000  # a busy-poll window longer than LAT_GAP: the worker spins between probes


# --- the load generator (a separate process in S: ``--send``) -----------------------------------
def _sender(dst: str, port: int, payload_hex: str, seconds: float, rate: float, cpu: int) -> None:
    from pcsite_lite import fastio

    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    # port 0: IP mode, the payloads are shim + payload of IP protocol 253 (the kernel adds the
    # IPv4 header, as it adds the UDP and IPv4 headers in UDP mode)
    if port:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_PC)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    datas = [bytes.fromhex(h) for h in payload_hex.split(",")]
    # every circuit in turn, batch after batch
    batches = [
        [datas[(i * SEND_BATCH + j) % len(datas)] for j in range(SEND_BATCH)]
        for i in range(-(-len(datas) // SEND_BATCH))
    ]
    send = fastio.send_batch
    fd, addr = s.fileno(), (dst, port)
    interval = SEND_BATCH / rate if rate > 0 else 0.0
    n = i = 0
    start = time.monotonic()
    end = start + seconds
    due = start
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if interval:
            if now < due:
                ahead = due - now
                if ahead > 0.0002:
                    time.sleep(ahead - 0.0001)
                continue
            due += interval
        try:
            n += send(fd, batches[i % len(batches)], addr)
        except OSError:
            pass
        i += 1
    print(n, time.monotonic() - start)


# --- measurement helpers -----------------------------------------------------------------------
def _in_receives(ch: SiteChain) -> int:
    def read() -> str:
        with open("/proc/thread-self/net/snmp") as fh:  # the thread's namespace: D's
            return fh.read()

    lines = [ln.split() for ln in ch.call("d", read).splitlines() if ln.startswith("Ip:")]
    return int(lines[1][lines[0].index("InReceives")])


def _sched_ns(pid: int) -> int:
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
    except OSError:
        pass
    return total


class Workers:
    """The site's workers: pids from the status API, packets from /metrics, CPU from /proc."""

    def __init__(self, ch: SiteChain) -> None:
        self.admin = ch.client(admin=True)
        self.pids = [w["pid"] for w in self.admin.status()["workers"]]

    def snapshot(self) -> dict[str, list[int]]:
        rx: dict[int, int] = {}
        native: dict[int, int] = {}
        for line in self.admin.metrics().splitlines():
            for prefix, into in (("pcsite_rx_packets_total{", rx),
                                 ("pcsite_native_packets_total{", native)):  # fmt: skip
                if line.startswith(prefix):
                    w = int(re.search(r'worker="(\d+)"', line).group(1))  # type: ignore[union-attr]
                    into[w] = int(float(line.rsplit(" ", 1)[1]))
        return {
            "rx": [rx.get(i, 0) for i in range(len(self.pids))],
            "native": [native.get(i, 0) for i in range(len(self.pids))],
            "cpu_ns": [_sched_ns(p) for p in self.pids],
        }


def _delta(a: dict[str, list[int]], b: dict[str, list[int]]) -> dict[str, list[int]]:
    return {k: [y - x for x, y in zip(a[k], b[k])] for k in a}


def _offer(
    ch: SiteChain, dst: str, port: int, pkts: list[bytes], seconds: float, rate: float,
    cpu: int, workers: Workers | None,
) -> dict[str, Any]:  # fmt: skip
    """One load run at ``rate`` pps (0: as fast as the sender goes)."""
    env = {k: v for k, v in os.environ.items() if k != "PACKETCLOUD_PURE"}
    before = workers.snapshot() if workers else None
    r0 = _in_receives(ch)
    proc = subprocess.run(
        ["ip", "netns", "exec", ch.ns["s"], sys.executable, "-m", "benchmarks.site_forwarding",
         "--send", dst, str(port), ",".join(p.hex() for p in pkts), str(seconds), str(rate),
         str(cpu)],
        capture_output=True, text=True, env=env, timeout=seconds + 60,
    )  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"sender failed: {proc.stderr[-1000:]}")
    sent_s, elapsed_s = proc.stdout.split()
    sent, elapsed = int(sent_s), float(elapsed_s)
    time.sleep(0.1)  # what is in flight arrives
    rx = _in_receives(ch) - r0
    res: dict[str, Any] = {
        "rate": rate,
        "sent": sent,
        "received": rx,
        "offered_pps": sent / elapsed,
        "rx_pps": rx / elapsed,
        "loss": 1 - rx / sent if sent else 1.0,
    }
    if workers and before:
        time.sleep(0.35)  # workers report every 0.25 s
        d = _delta(before, workers.snapshot())
        total = sum(d["rx"]) or 1
        res["worker_rx"] = d["rx"]
        res["worker_share"] = [x / total for x in d["rx"]]
        res["worker_cpu_us_per_packet"] = sum(d["cpu_ns"]) / total / 1000
        res["native_share"] = sum(d["native"]) / total
    return res


def _search(run_at: Callable[[float], dict[str, Any]], quick: bool) -> dict[str, Any]:
    """Throughput at the highest offered rate with < 1 % loss."""
    sat = run_at(0)
    steps = [sat]
    top = sat["rx_pps"]
    ok = [sat] if sat["loss"] < MAX_LOSS else []
    factors = (0.5,) if quick else (1.0, 0.9, 0.75, 0.5, 0.25)
    for f in factors:
        r = run_at(top * f)
        steps.append(r)
        if r["loss"] < MAX_LOSS:
            ok.append(r)
            if f == 1.0 and not quick:  # the sender may go higher than what got through
                for up in (1.1, 1.2):
                    if top * up >= sat["offered_pps"]:
                        break
                    r2 = run_at(top * up)
                    steps.append(r2)
                    if r2["loss"] >= MAX_LOSS:
                        break
                    ok.append(r2)
            break
    best = max(ok, key=lambda r: r["rx_pps"]) if ok else None
    return {
        "pps": best["rx_pps"] if best else 0.0,  # 0: no rate tried lost < 1 %
        "accepted": best,
        "steps": steps,
    }


def _latency(
    ch: SiteChain, dst: str, make: Callable[[bytes], bytes], probes: int,
    workers: Workers | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Ping-pong of ``probes`` IP-mode packets, one in flight; median one-way time in µs."""

    def rx_sock() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_PC)
        s.settimeout(0.5)
        return s

    rx = ch.call("d", rx_sock)
    tx = ch.call("s", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_PC))
    samples: list[float] = []
    before = workers.snapshot() if workers else None
    t_start = time.monotonic()
    try:
        for _ in range(probes):
            t = time.monotonic()
            tx.sendto(make(struct.pack("!d", t) + bytes(PAYLOAD - 8)), (dst, 0))
            try:
                while True:  # skip packets left over from a load run
                    data = rx.recv(4096)
                    if struct.unpack("!d", data[-PAYLOAD:][:8])[0] == t:
                        samples.append(time.monotonic() - t)
                        break
            except TimeoutError:
                pass
            time.sleep(LAT_GAP)
    finally:
        rx.close()
        tx.close()
    res: dict[str, Any] = {
        "median_us": statistics.median(samples) * 1e6 if samples else float("nan"),
        "received": len(samples),
        "probes": probes,
    }
    if workers and before:
        wall = time.monotonic() - t_start
        d = _delta(before, workers.snapshot())
        res["worker_cpu_frac"] = sum(d["cpu_ns"]) / 1e9 / wall
    return res


# --- the TUN floor -----------------------------------------------------------------------------
TUN_FLOOR_PACKETS = 2048


def _tun_floor(ch: SiteChain, payload: int, count: int) -> dict[str, float]:
    """Per-packet TUN read and write cost on A (see the module doc), with the C loops the
    worker uses (also under PACKETCLOUD_PURE: this measures the kernel); NaN if not built."""
    from pcsite_lite import native

    try:
        from pcsite_lite import _fastio  # type: ignore[attr-defined]
    except ImportError:
        _fastio = None
    if native._switch is None or _fastio is None:
        return {"read_us": float("nan"), "write_us": float("nan")}
    name = f"pcbt{ch.id}"
    net_in, net_out = "198.18.70", "198.18.71"

    def measure() -> dict[str, float]:
        import pytun

        from pcsock import wire

        tun = pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            tun.addr, tun.netmask, tun.mtu = f"{net_in}.1", "255.255.255.0", 1500
            tun.up()
            _ip_ns(ch, "link", "set", "dev", name, "txqueuelen", str(count + 64))
            _ip_ns(ch, "route", "add", "blackhole", f"{net_out}.0/24")
            pkt = bytes(wire.build_ipv4(src=f"{net_in}.1", dst=f"{net_in}.2", proto=17,
                                        payload=bytes(8 + payload)))  # fmt: skip
            pkts = [pkt] * count
            sent = 0
            while sent < count:  # queued into the TUN device by the kernel's output path
                w, _, _ = _fastio.send_ip_batch(raw.fileno(), pkts[sent : sent + 256])
                sent += w or 1
            fd = tun.fileno()
            os.set_blocking(fd, False)
            sw = native._switch.Switch(0, 256, 2048)
            got = 0
            # CPU time of this thread (the syscalls and the kernel work done in them), not
            # wall time: what a packet costs, without the preemptions of a shared machine
            t0 = time.thread_time()
            while True:
                n, _ = sw.read(fd, 256)
                if not n:
                    break
                got += n
            t_read = time.thread_time() - t0
            back = bytes(wire.build_ipv4(src=f"{net_out}.9", dst=f"{net_out}.2", proto=17,
                                         payload=bytes(8 + payload)))  # fmt: skip
            t0 = time.thread_time()
            for i in range(0, count, 256):
                _fastio.write_batch(fd, [back] * min(256, count - i))
            t_write = time.thread_time() - t0
            return {
                "read_us": t_read / got * 1e6 if got else float("nan"),
                "write_us": t_write / count * 1e6,
                "read_packets": got,
            }
        finally:
            raw.close()
            tun.close()
            subprocess.run(["ip", "-n", ch.ns["a"], "route", "del", "blackhole",
                            f"{net_out}.0/24"], capture_output=True)  # fmt: skip

    return ch.call("a", measure)


def _ip_ns(ch: SiteChain, *args: str) -> None:
    proc = subprocess.run(["ip", "-n", ch.ns["a"], *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


# --- one round ---------------------------------------------------------------------------------
class Bench:
    def __init__(self, ch: SiteChain, args: argparse.Namespace) -> None:
        self.ch = ch
        self.a = args
        self.key_in, self.key_out = bytes(range(16)), bytes(range(2, 18))

    def search(self, dst: str, port: int, pkts: list[bytes], workers: Workers | None) -> Any:
        a = self.a
        return _search(
            lambda rate: _offer(self.ch, dst, port, pkts, a.seconds, rate, a.sender_cpu, workers),
            a.quick,
        )

    def start(self, workers: int, path: str, **dataplane: Any) -> Workers:
        """The site on ``path`` (``native``, ``accel`` or ``pure``, see :data:`PATHS`)."""
        cpus = self.a.worker_cpus[:workers]
        if path != "native":
            dataplane["native"] = False
        cfg = self.ch.site_config(workers, cpus=cpus, **dataplane)
        # (explicitly: a benchmark run under PACKETCLOUD_PURE=1 still measures every path)
        self.ch.start_site(cfg, {"PACKETCLOUD_PURE": "1" if path == "pure" else "0"})
        return Workers(self.ch)

    def circuits(self) -> list[int]:
        from pcsite_lite.control.client import OutHop

        c = self.ch.client()
        self.ch.deploy_source_routing()
        labels = []
        for _ in range(self.a.circuits):
            la = c.allocate_circuit("srcroute", lifetime=3600)["label"]
            c.install_hop(la, in_key=self.key_in, out=[OutHop(2, self.ch.D, self.key_out)])
            c.fis_put("srcroute", str(la), {"label": 2, "next_hop": self.ch.D})
            labels.append(la)
        return labels

    def packet(self, label: int, payload: bytes, udp: bool) -> bytes:
        """What the sender hands its socket: the shim and payload (the kernel adds IP/UDP)."""
        from pcsock import wire

        pkt = wire.build_circuit_packet(src=self.ch.S, dst=self.ch.SITE, label=label,
                                        key=self.key_in, payload=payload, udp=udp)  # fmt: skip
        return bytes(pkt[28:] if udp else pkt[20:])

    def prober(self, label: int) -> Callable[[bytes], bytes]:
        """Latency probes: IP-mode circuit packets on ``label`` carrying ``payload``."""
        return lambda payload: self.packet(label, payload, False)

    def round(self) -> dict[str, Any]:
        ch, a = self.ch, self.a
        res: dict[str, Any] = {}
        plain = bytes(a.payload)
        # the kernel baseline: the same circuit packets (content does not matter to it)
        demo = [self.packet(1000 + i, plain, False) for i in range(a.circuits)]
        demo_udp = [self.packet(1000 + i, plain, True) for i in range(a.circuits)]
        res["kernel_ip"] = self.search(ch.D, 0, demo, None)
        res["kernel_udp"] = self.search(ch.D, UDP_PORT, demo_udp, None)
        res["kernel_latency"] = _latency(ch, ch.D, self.prober(1000), a.probes)
        res["tun_floor"] = _tun_floor(ch, a.payload + 16, 256 if a.quick else TUN_FLOOR_PACKETS)

        # the bare TUN forwarder (1 worker): the floor of the TUN design
        cfg = ch.site_config(1, mode="bare", cpus=a.worker_cpus[:1])
        ch.start_site(cfg)
        try:
            res["bare_udp_1w"] = self.search(ch.SITE, UDP_PORT, demo_udp, Workers(ch))
        finally:
            ch.stop_site()

        for sfx, path in PATHS:
            for workers in (1, 2):
                w = self.start(workers, path)
                try:
                    labels = self.circuits()
                    ip = [self.packet(la, plain, False) for la in labels]
                    res[f"site_ip_{workers}w{sfx}"] = self.search(ch.SITE, 0, ip, w)
                    if workers == 1:
                        udp = [self.packet(la, plain, True) for la in labels]
                        res[f"site_udp_1w{sfx}"] = self.search(ch.SITE, UDP_PORT, udp, w)
                        res[f"site_latency{sfx}"] = _latency(
                            ch, ch.SITE, self.prober(labels[0]), a.probes, w
                        )
                finally:
                    ch.stop_site()
            # UDP mode with both directions batched: TUN reads in batches, results sent with
            # sendmmsg on a raw socket (tx = "raw") instead of one TUN write each
            w = self.start(1, path, tx="raw")
            try:
                labels = self.circuits()
                udp = [self.packet(la, plain, True) for la in labels]
                res[f"site_udp_1w_batched{sfx}"] = self.search(ch.SITE, UDP_PORT, udp, w)
            finally:
                ch.stop_site()
        # the busy-poll window's effect: latency and worker CPU at low rate without it, and
        # with a window longer than the probes' spacing (the worker never blocks: no wake-up)
        for key, window in (("no_busy_poll", 0), ("spin", SPIN_US)):
            w = self.start(1, "native", busy_poll_us=window)
            try:
                labels = self.circuits()
                res[f"site_latency_{key}"] = _latency(
                    ch, ch.SITE, self.prober(labels[0]), a.probes, w
                )
            finally:
                ch.stop_site()
        res["figures"] = _figures(res)
        return res


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _figures(r: dict[str, Any]) -> dict[str, float]:
    f: dict[str, float] = {
        "kernel_pps_ip": r["kernel_ip"]["pps"],
        "kernel_pps_udp": r["kernel_udp"]["pps"],
        "site_vs_bare_tun_1w": _ratio(r["site_udp_1w"]["pps"], r["bare_udp_1w"]["pps"]),
        "hop_latency_added_us_median_no_busy_poll": r["site_latency_no_busy_poll"]["median_us"]
        - r["kernel_latency"]["median_us"],
        "worker_cpu_frac_ping_no_busy_poll": r["site_latency_no_busy_poll"]["worker_cpu_frac"],
        "hop_latency_added_us_median_spin": r["site_latency_spin"]["median_us"]
        - r["kernel_latency"]["median_us"],
        "worker_cpu_frac_ping_spin": r["site_latency_spin"]["worker_cpu_frac"],
        "tun_read_us_per_packet": r["tun_floor"]["read_us"],
        "tun_write_us_per_packet": r["tun_floor"]["write_us"],
    }
    floor = 1e6 / (r["tun_floor"]["read_us"] + r["tun_floor"]["write_us"])
    f["tun_floor_pps"] = floor
    f["tun_floor_vs_kernel"] = _ratio(floor, r["kernel_ip"]["pps"])
    for sfx, _ in PATHS:
        ip1, ip2 = r[f"site_ip_1w{sfx}"], r[f"site_ip_2w{sfx}"]
        f[f"site_pps_ip_1w{sfx}"] = ip1["pps"]
        f[f"site_vs_kernel_1w{sfx}"] = _ratio(ip1["pps"], r["kernel_ip"]["pps"])
        f[f"site_vs_kernel_udp_1w{sfx}"] = _ratio(
            r[f"site_udp_1w{sfx}"]["pps"], r["kernel_udp"]["pps"]
        )
        f[f"site_vs_kernel_udp_batched{sfx}"] = _ratio(
            r[f"site_udp_1w_batched{sfx}"]["pps"], r["kernel_udp"]["pps"]
        )
        f[f"scaling_2w_vs_1w{sfx}"] = _ratio(ip2["pps"], ip1["pps"])
        shares = (ip2["accepted"] or ip2["steps"][0]).get("worker_share", [0.0, 0.0])
        for i, s in enumerate(shares):
            f[f"worker_share_2w_w{i}{sfx}"] = s
        lat = r[f"site_latency{sfx}"]
        f[f"hop_latency_added_us_median{sfx}"] = lat["median_us"] - r["kernel_latency"]["median_us"]
        f[f"worker_cpu_frac_ping{sfx}"] = lat["worker_cpu_frac"]
        acc = ip1["accepted"] or ip1["steps"][0]
        f[f"worker_cpu_us_per_packet_1w{sfx}"] = acc.get("worker_cpu_us_per_packet", float("nan"))
        f[f"native_share_1w{sfx}"] = acc.get("native_share", float("nan"))
    return f


def _median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]  # a NaN (no sample) does not count
    return statistics.median(xs) if xs else float("nan")


def _default_cpus() -> tuple[int, list[int]]:
    cpus = sorted(os.sched_getaffinity(0))
    sender = cpus[0]
    others = [c for c in cpus if c != sender] or [sender]
    # worker 0 on a vCPU of its own; a second worker takes the next one (the sender's on 2)
    return sender, [others[0], *(c for c in cpus if c != others[0])]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """``--rounds`` interleaved rounds on one topology; each figure the median over rounds."""
    from pcsite_lite import fastio

    os.sched_setaffinity(0, {args.sender_cpu})  # this process receives the latency probes
    accel = importlib.util.find_spec("pcsock._accel") is not None
    res: dict[str, Any] = {
        "seconds": args.seconds, "payload": args.payload, "circuits": args.circuits,
        "sender_cpu": args.sender_cpu, "worker_cpus": args.worker_cpus, "quick": args.quick,
        "fastio_c": fastio.ACCELERATED, "pcsock_accel": accel, "rounds": [],
    }  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="pcbench"))
    with SiteChain(tmp) as ch:
        bench = Bench(ch, args)
        for _ in range(args.rounds):
            res["rounds"].append(bench.round())
    rounds = [r["figures"] for r in res["rounds"]]
    figures = {n: _median([r[n] for r in rounds]) for n in rounds[0]}
    for sfx, _ in PATHS:
        per_round = [r[f"scaling_2w_vs_1w{sfx}"] for r in rounds]
        figures[f"scaling_2w_vs_1w_min{sfx}"] = min(per_round)
        res[f"scaling_2w_vs_1w_rounds{sfx}"] = per_round
        res[f"worker_share_2w_rounds{sfx}"] = [
            [r.get(f"worker_share_2w_w{i}{sfx}", 0.0) for i in range(2)] for r in rounds
        ]
    res["figures"] = figures
    return res


def main(argv: list[str] | None = None) -> int:
    sender_cpu, worker_cpus = _default_cpus()
    ap = argparse.ArgumentParser(prog="site_forwarding")
    ap.add_argument("--json", help="write results to this path")
    ap.add_argument("--seconds", type=float, help="length of each load run (3; --quick 0.4)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (3; --quick 1)")
    ap.add_argument("--probes", type=int, help=f"latency probes per mode ({PROBES}; --quick 10)")
    ap.add_argument("--payload", type=int, default=PAYLOAD, help="bytes after the shim (>= 8)")
    ap.add_argument("--circuits", type=int, default=CIRCUITS)
    ap.add_argument("--sender-cpu", type=int, default=sender_cpu)
    ap.add_argument("--worker-cpus", default=",".join(map(str, worker_cpus)),
                    help="vCPU of worker 0, 1, ... (comma-separated)")  # fmt: skip
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: short runs, no rate search")  # fmt: skip
    ap.add_argument("--send", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.send:
        d, port, hexes, secs, rate, cpu = args.send
        _sender(d, int(port), hexes, float(secs), float(rate), int(cpu))
        return 0
    if os.geteuid() != 0:
        print("site_forwarding: needs root (namespaces, TUN, nftables)", file=sys.stderr)
        return 2
    quick = args.quick
    args.seconds = args.seconds if args.seconds is not None else (0.4 if quick else 3.0)
    args.rounds = max(1, args.rounds if args.rounds is not None else (1 if quick else 3))
    args.probes = args.probes if args.probes is not None else (10 if quick else PROBES)
    args.worker_cpus = [int(c) for c in args.worker_cpus.split(",") if c.strip()]
    args.worker_cpus = (args.worker_cpus * 2)[:2] if args.worker_cpus else worker_cpus[:2]
    args.payload = max(8, args.payload)
    args.probes = max(1, args.probes)
    args.circuits = max(1, args.circuits)
    res = run(args)
    print(json.dumps(res["figures"], indent=2))
    if args.json:
        # the figures at the top level (as every benchmark writes them), the details beside
        Path(args.json).write_text(json.dumps({**res["figures"], **res}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
