"""A compute-node worker process: TUN queue in, pipeline, TUN out.

Started by the supervisor as ``python -m pcsite_lite.daemon.worker`` with its TUN file
descriptor and a control socket (SOCK_SEQPACKET, JSON messages) inherited. The loop (I/O in
:mod:`.tunpump`: batched reads and writes, an adaptive busy-poll window, optional vCPU
pinning) reads packets in batches without blocking, hands each one to the processor (the site
pipeline, or the bare forwarder used as the benchmark baseline), writes forwarded packets back
into the TUN device for the kernel to route, counts drops by reason, and every
:data:`STATS_INTERVAL` seconds sends its :class:`~pcsite_lite.metrics.WorkerStats` (and
metering) to the supervisor. Control messages replicate site state changes (circuits, service
IDs, destinations) made through the control API.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any, Final

from pcsite_lite.confine import Prefetcher
from pcsite_lite.metrics import WorkerStats
from pcsite_lite.verdicts import Forward, Verdict

from .channel import ChannelError, Reassembler
from .config import SiteConfig, load
from .kernel import die_with_parent
from .tunpump import TunPump

__all__ = ["Processor", "bare_processor", "main", "run"]

STATS_INTERVAL: Final = 0.25
_NO_FDS: Final[frozenset[int]] = frozenset()
#: ``process(packet, now) -> verdicts``: the pipeline's entry point, or the bare forwarder
Processor = Callable[[bytes, float], list[Verdict]]


def bare_processor(next_hop: str) -> Processor:
    """The benchmark baseline: rewrite the destination, forward (no parse, MAC or FIS)."""
    from pcsock.wire import ip2int, patch_checksum

    n = ip2int(next_hop)
    dst = n.to_bytes(4, "big")

    def process(data: bytes, _now: float) -> list[Verdict]:
        buf = bytearray(data)
        old = int.from_bytes(buf[16:20], "big")
        buf[16:20] = dst
        patch_checksum(buf, 10, old, n)
        if buf[9] == 17:  # UDP: its checksum covers the destination too (pseudo-header)
            patch_checksum(buf, (buf[0] & 15) * 4 + 6, old, n, udp=True)
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
        #: ``(packets, now)``: run the batch's confined services ahead (None: none confined)
        self.prefetch: Prefetcher | None = None
        #: the native C switch (None: every packet through ``process``)
        self.native: Any = None
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
            self.prefetch = site.prefetch
            self.idle_ms = max(1, int(site.fis.staleness * 1000))
            if cfg.dataplane.native:
                from pcsite_lite.native import NativeSwitch, available

                ok, why = available()
                if ok:
                    self.native = NativeSwitch(
                        site.pipeline, batch=cfg.dataplane.batch, bufsize=cfg.dataplane.mtu
                    )
                else:
                    print(f"native switching off: {why}", file=sys.stderr)


def _send_blocking(ctl: socket.socket, data: bytes, timeout: float = 2.0) -> None:
    """Send on the non-blocking control socket, waiting (bounded) while it is full: an ack
    must not be lost (the supervisor gives a worker its buckets on the snapshot's ack)."""
    try:
        ctl.send(data)
    except BlockingIOError:
        select.select([], [ctl], [], timeout)
        ctl.send(data)


def run(cfg: SiteConfig, index: int, tun_fd: int, ctl: socket.socket) -> int:
    """The worker loop; returns when told to stop or when the supervisor goes away."""
    replica = Replica(cfg, index)
    stats = WorkerStats()
    os.set_blocking(tun_fd, False)
    ctl.setblocking(False)
    poller = select.poll()
    # the TUN queue is read only once the state snapshot is applied (the "synced" op): until
    # then its packets wait in the queue instead of being dropped as unknown labels
    poller.register(ctl.fileno(), select.POLLIN)
    inbox = Reassembler()
    dp = cfg.dataplane
    cpu = dp.cpu_of(index)
    if cpu is not None:
        # one vCPU per worker: no migration, and a load generator pinned elsewhere does not
        # compete with it
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError as exc:  # e.g. a cpuset cgroup without that vCPU
            print(f"worker {index}: cannot pin to vCPU {cpu} ({exc.strerror}); running unpinned",
                  file=sys.stderr)  # fmt: skip
    pump = TunPump(tun_fd, replica.process, replica.clock, stats, batch=dp.batch,
                   busy_poll_us=dp.busy_poll_us, tx=dp.tx, account=replica.account,
                   name=f"worker {index}", prefetch=replica.prefetch,
                   native=replica.native)  # fmt: skip
    next_stats = 0.0
    gc.freeze()  # the startup heap out of the cyclic collector's reach (as the supervisor)
    ctl.send(json.dumps({"ready": index, "pid": os.getpid()}).encode())
    idle_ms = replica.idle_ms
    more = False
    ctl_fd = ctl.fileno()
    watched: AbstractSet[int] = _NO_FDS  # confined services' channels in the poller
    while True:
        # a drain that stopped at its batch limit left packets queued: do not block
        # packets in confined services' processes: wait on their channels too (an answer or
        # a FIS call wakes the worker at once), and look at least every millisecond (their
        # deadlines)
        pending = pump.pending()
        if pending and not more:
            # the device was found empty: busy-poll briefly for the answers due now (a worker
            # with packets waiting takes them first, see below)
            pump.flush(spin=True)
            pending = pump.pending()
        channels = pump.channels() if pending else _NO_FDS
        if channels != watched:
            for fd in watched - channels:
                poller.unregister(fd)
            for fd in channels - watched:
                poller.register(fd, select.POLLIN)
            watched = channels
        events = poller.poll(0 if more else 1 if pending else idle_ms)
        if pending:
            pump.flush(spin=False)
        elif not events:
            # nothing to do: pay the FIS cache's change poll now rather than on the next packet
            replica.idle()
        more = False
        for fd, _ in events:
            if fd == tun_fd:
                more = pump.drain()
            elif fd == ctl_fd:
                while True:
                    try:
                        msg = ctl.recv(1 << 20)
                    except BlockingIOError:
                        break
                    except OSError:
                        return 0
                    if not msg:
                        return 0  # supervisor gone
                    try:
                        op = inbox.feed(msg)
                    except ChannelError as exc:
                        print(f"worker {index}: control message: {exc}", file=sys.stderr)
                        continue
                    if op is None:
                        continue  # more frames of this message follow
                    if op.get("op") == "stop":
                        _last_report(ctl, index, stats, replica)
                        return 0
                    if op.get("op") == "synced":
                        poller.register(tun_fd, select.POLLIN)
                    try:
                        replica.apply(op)
                    except Exception as exc:
                        print(
                            f"worker {index}: cannot apply {op.get('op')}: {exc}", file=sys.stderr
                        )
                    if replica.native is not None:
                        replica.native.invalidate()  # the C table learns the new state again
                    if "seq" in op:  # the control API's settle() waits for this, not a timeout
                        _send_blocking(ctl, json.dumps({"ack": op["seq"]}).encode())
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
    die_with_parent()  # a SIGKILLed supervisor takes its workers (and TUN devices) along
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # e.g. systemd's to the whole group: same
    cfg = load(args.config)
    ctl = socket.socket(fileno=args.ctl_fd)
    return run(cfg, args.index, args.tun_fd, ctl)


if __name__ == "__main__":
    sys.exit(main())
