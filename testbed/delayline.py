"""A user-space delay line: one emulated link with delay, jitter and loss between two TAPs.

Used for links whose topology asks for delay/jitter/loss when the kernel has no ``netem``
qdisc (``CONFIG_NET_SCH_NETEM`` is not set on every kernel, e.g. minimal VM kernels). The
process owns a TAP device in each of the two namespaces, named like the veth it replaces;
every Ethernet frame read from one side is written to the other after the one-way delay
(plus normally distributed jitter, clipped at zero, never reordering) unless dropped with the
given loss probability. Rate limits stay in the kernel (``tbf`` on the TAPs' egress).

Run by the testbed as ``nsenter --net=<ns A> python -m testbed.delayline ...`` so that the
process lives in namespace A (``testbed clean`` finds it there even without the state file).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random
import select
import struct
import sys
import time
from collections import deque

from testbed import netns

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def open_tap(name: str) -> int:
    """Create (or attach to) TAP ``name`` in the calling thread's namespace."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a_if")
    ap.add_argument("b_ns")
    ap.add_argument("b_if")
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--loss", type=float, default=0.0, help="percent")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    try:  # wake up on time even when the machine is busy (it sleeps in select otherwise)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError):
        pass
    fa = open_tap(args.a_if)
    fb = netns.call_in(args.b_ns, lambda: open_tap(args.b_if))
    delay = args.delay_ms / 1000
    jitter = args.jitter_ms / 1000
    loss = args.loss / 100
    # per direction: queue of (due time, frame) and the last due time (no reordering)
    queues: dict[int, deque[tuple[float, bytes]]] = {fa: deque(), fb: deque()}
    last: dict[int, float] = {fa: 0.0, fb: 0.0}
    other = {fa: fb, fb: fa}
    print("ready", flush=True)
    clock = time.monotonic
    while True:
        now = clock()
        due = min((q[0][0] for q in queues.values() if q), default=None)
        timeout = None if due is None else max(0.0, due - now)
        readable, _, _ = select.select([fa, fb], [], [], timeout)
        for fd in readable:
            for _ in range(64):
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if loss and rng.random() < loss:
                    continue
                t = clock() + delay + (rng.gauss(0.0, jitter) if jitter else 0.0)
                t = max(t, last[other[fd]], clock())
                last[other[fd]] = t
                queues[other[fd]].append((t, frame))
        now = clock()
        for fd, q in queues.items():
            while q and q[0][0] <= now:
                try:
                    os.write(fd, q.popleft()[1])
                except OSError:
                    pass  # device down or full: the frame is lost, like on a wire


if __name__ == "__main__":
    sys.exit(main())
