"""A compute-node worker process: TUN queue in, pipeline, TUN out.

Started by the supervisor as ``python -m pcsite_lite.daemon.worker`` with its TUN file
descriptor and a control socket (SOCK_SEQPACKET, JSON messages) inherited. The loop reads
packets in batches without blocking, hands each one to the processor (the site pipeline, or
the bare forwarder used as the benchmark baseline), writes forwarded packets back into the TUN
device for the kernel to route, counts drops by reason, and every
:data:`STATS_INTERVAL` seconds sends its :class:`~pcsite_lite.metrics.WorkerStats` (and
metering) to the supervisor. Control messages replicate site state changes (circuits, service
IDs, destinations) made through the control API.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, Final

from pcsite_lite.metrics import WorkerStats
from pcsite_lite.verdicts import Deliver, Drop, Forward, Verdict

from .config import SiteConfig, load

__all__ = ["Processor", "bare_processor", "main", "run"]

STATS_INTERVAL: Final = 0.25
BATCH: Final = 256
#: ``process(packet, now) -> verdicts``: the pipeline's entry point, or the bare forwarder
Processor = Callable[[bytes, float], list[Verdict]]


def _dst(data: bytes) -> str:
    return f"{data[16]}.{data[17]}.{data[18]}.{data[19]}"


def bare_processor(next_hop: str) -> Processor:
    """The benchmark baseline: rewrite the destination, forward (no parse, MAC or FIS)."""
    from pcsock.wire import ip2int

    dst = ip2int(next_hop).to_bytes(4, "big")

    def process(data: bytes, _now: float) -> list[Verdict]:
        buf = bytearray(data)
        old = buf[16:20]
        buf[16:20] = dst
        # RFC 1624 incremental checksum update for the 32-bit destination change
        hc = buf[10] << 8 | buf[11]
        o_ = int.from_bytes(old, "big")
        n = int.from_bytes(dst, "big")
        s = (~hc & 0xFFFF) + (~o_ >> 16 & 0xFFFF) + (~o_ & 0xFFFF) + (n >> 16) + (n & 0xFFFF)
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        s = ~s & 0xFFFF
        buf[10] = s >> 8
        buf[11] = s & 0xFF
        if buf[9] == 17:  # UDP: its checksum covers the destination too (pseudo-header)
            o = (buf[0] & 15) * 4 + 6
            uc = buf[o] << 8 | buf[o + 1]
            if uc:  # 0: the sender sent none
                s = (
                    (~uc & 0xFFFF)
                    + (~o_ >> 16 & 0xFFFF)
                    + (~o_ & 0xFFFF)
                    + (n >> 16)
                    + (n & 0xFFFF)
                )
                s = (s & 0xFFFF) + (s >> 16)
                s = (s & 0xFFFF) + (s >> 16)
                s = ~s & 0xFFFF or 0xFFFF  # a computed 0 is sent as 0xFFFF (RFC 768)
                buf[o] = s >> 8
                buf[o + 1] = s & 0xFF
        return [Forward(bytes(buf), next_hop)]

    return process


class Replica:
    """What a worker needs of the site state, rebuilt from the supervisor's messages."""

    def __init__(self, cfg: SiteConfig, index: int | None = None) -> None:
        self.cfg = cfg
        self.process: Processor
        #: the packet clock, read once per batch (not per packet) and passed to ``process``
        self.clock: Callable[[], float] = time.time
        self.apply: Callable[[dict[str, Any]], None] = lambda op: None
        self.usage: Callable[[], dict[str, Any]] = dict
        self.refresh: Callable[[], None] = lambda: None
        self.account: Callable[[], object] = lambda: None
        self.idle: Callable[[], None] = lambda: None
        self.idle_ms = 100
        if cfg.mode == "bare":
            assert cfg.bare_next_hop is not None
            self.process = bare_processor(cfg.bare_next_hop)
        else:
            from .state import WorkerSite

            site = WorkerSite(cfg, index=index)
            # the pipeline itself: no per-packet wrapper call and clock read
            self.process = site.pipeline.process
            self.clock = site.clock
            self.apply = site.apply
            self.usage = site.usage_json
            self.refresh = site.refresh
            self.account = site.account
            self.idle = site.idle
            self.idle_ms = max(1, int(site.fis.staleness * 1000))


def run(cfg: SiteConfig, index: int, tun_fd: int, ctl: socket.socket) -> int:
    """The worker loop; returns when told to stop or when the supervisor goes away."""
    replica = Replica(cfg, index)
    stats = WorkerStats()
    drops = stats.drops
    os.set_blocking(tun_fd, False)
    ctl.setblocking(False)
    poller = select.poll()
    poller.register(tun_fd, select.POLLIN)
    poller.register(ctl.fileno(), select.POLLIN)
    read = os.read
    write: Callable[[int, bytes], int]
    if cfg.dataplane.tx == "raw":
        # the kernel routes what a raw IP_HDRINCL socket sends (output path, no re-entry)
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        sendto = raw.sendto

        def write_raw(_fd: int, data: bytes) -> int:
            return sendto(data, (_dst(data), 0))

        write = write_raw

    else:
        write = os.write
    process = replica.process
    clock = replica.clock
    account = replica.account
    next_stats = 0.0
    ctl.send(json.dumps({"ready": index, "pid": os.getpid()}).encode())
    idle_ms = replica.idle_ms
    while True:
        events = poller.poll(idle_ms)
        if not events:
            # nothing to do: pay the FIS cache's change poll now rather than on the next packet
            replica.idle()
        for fd, _ in events:
            if fd == tun_fd:
                # one clock read per batch (a batch lasts a few ms at most); the counters are
                # locals during the batch and written back once
                now = clock()
                rx_packets = rx_bytes = tx_packets = tx_bytes = tx_errors = 0
                for _ in range(BATCH):
                    try:
                        data = read(tun_fd, 65536)
                    except BlockingIOError:
                        break
                    rx_packets += 1
                    rx_bytes += len(data)
                    try:
                        verdicts = process(data, now)
                    except Exception as exc:  # a pipeline bug must not kill the worker
                        reason = "internal_error"
                        drops[reason] = drops.get(reason, 0) + 1
                        print(f"worker {index}: {type(exc).__name__}: {exc}", file=sys.stderr)
                        continue
                    for v in verdicts:
                        tv = type(v)
                        if tv is Forward or tv is Deliver:
                            out = v.data  # type: ignore[union-attr]
                            try:
                                write(tun_fd, out)
                                tx_packets += 1
                                tx_bytes += len(out)
                            except OSError:
                                tx_errors += 1
                        elif tv is Drop:
                            reason = v.reason  # type: ignore[union-attr]
                            drops[reason] = drops.get(reason, 0) + 1
                stats.rx_packets += rx_packets
                stats.rx_bytes += rx_bytes
                stats.tx_packets += tx_packets
                stats.tx_bytes += tx_bytes
                stats.tx_errors += tx_errors
                # bill services this batch's thread CPU, before poll() blocks (time spent
                # waiting inside a metering window would count as preemption)
                account()
            else:
                while True:
                    try:
                        msg = ctl.recv(1 << 20)
                    except BlockingIOError:
                        break
                    except OSError:
                        return 0
                    if not msg:
                        return 0  # supervisor gone
                    op = json.loads(msg)
                    if op.get("op") == "stop":
                        _last_report(ctl, index, stats, replica)
                        return 0
                    try:
                        replica.apply(op)
                    except Exception as exc:
                        print(
                            f"worker {index}: cannot apply {op.get('op')}: {exc}", file=sys.stderr
                        )
                    if "seq" in op:  # the control API's settle() waits for this, not a timeout
                        ctl.send(json.dumps({"ack": op["seq"]}).encode())
        now = time.monotonic()
        if now >= next_stats:
            next_stats = now + STATS_INTERVAL
            try:
                replica.refresh()
            except Exception as exc:
                print(f"worker {index}: refresh: {exc}", file=sys.stderr)
            try:
                ctl.send(
                    json.dumps(
                        {"stats": index, "worker": stats.to_json(), "usage": replica.usage()}
                    ).encode()
                )
            except BlockingIOError:
                pass
            except OSError:
                return 0


def _last_report(ctl: socket.socket, index: int, stats: WorkerStats, replica: Replica) -> None:
    """On stop: the final counters, so the supervisor's usage ledger loses nothing."""
    try:
        replica.account()
        ctl.settimeout(1.0)
        ctl.send(
            json.dumps(
                {"stats": index, "worker": stats.to_json(), "usage": replica.usage()}
            ).encode()
        )
    except (OSError, ValueError) as exc:
        print(f"worker {index}: cannot send the last report: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pcsite-worker")
    ap.add_argument("--config", required=True)
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--tun-fd", type=int, required=True)
    ap.add_argument("--ctl-fd", type=int, required=True)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # e.g. systemd's to the whole group: same
    cfg = load(args.config)
    ctl = socket.socket(fileno=args.ctl_fd)
    return run(cfg, args.index, args.tun_fd, ctl)


if __name__ == "__main__":
    sys.exit(main())
