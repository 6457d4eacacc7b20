"""The worker's TUN I/O path: batched reads and writes, and an adaptive busy-poll window.

A worker blocked in ``poll()`` on an idle vCPU costs a wake-up (50-100 µs in a VM) for the
packet that ends the wait. :meth:`TunPump.drain` therefore reads the device in batches
(:func:`pcsite_lite.fastio.read_batch`: one call per batch) and, once the queue is empty,
keeps reading it for a short *busy-poll window* before it lets the worker block again:

* the window starts at ``busy_poll_us`` (``[dataplane]``) and is kept while packets keep
  arriving within it;
* every window that ends empty halves it, and the fourth in a row closes it, so a sparse
  stream (packets further apart than the window) costs at most ~1.9 windows of CPU after a
  dense period, and an idle site never spins;
* a wake-up that comes less than ``busy_poll_us`` after the last batch restores the full window
  (the traffic got dense again).

Forwarded packets of a batch are written back with one :func:`~pcsite_lite.fastio.write_batch`
call (``tx = "tun"``) or sent with ``sendmmsg`` on a raw socket (``tx = "raw"``,
:func:`~pcsite_lite.fastio.send_ip_batch`). Counters stay in
locals during a batch and go to :class:`~pcsite_lite.metrics.WorkerStats` once per batch.

With a :class:`~pcsite_lite.native.NativeSwitch` (``native=``), a batch is read into the C
switch's buffers instead; packets of natively run circuits are switched and metered there,
the others go through ``process`` one at a time in arrival order (see
:meth:`NativeSwitch.run_batch <pcsite_lite.native.NativeSwitch.run_batch>`), and the batch's
output leaves in order with one C call.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from pcsite_lite import fastio
from pcsite_lite.confine import Prefetcher
from pcsite_lite.metrics import WorkerStats
from pcsite_lite.verdicts import Deliver, Drop, Forward, Verdict

if TYPE_CHECKING:
    from pcsite_lite.native import NativeSwitch

__all__ = ["MAX_BATCHES", "TunPump"]

#: batches one :meth:`TunPump.drain` call handles at most before control messages and stats
#: get their turn
MAX_BATCHES: Final = 64


class TunPump:
    """Moves packets from a worker's TUN device through ``process`` and back out."""

    def __init__(
        self,
        tun_fd: int,
        process: Callable[[bytes, float], list[Verdict]],
        clock: Callable[[], float],
        stats: WorkerStats,
        *,
        batch: int = 256,
        busy_poll_us: int = 0,
        tx: str = "tun",
        account: Callable[[], object] = lambda: None,
        name: str = "worker",
        prefetch: Prefetcher | None = None,
        native: NativeSwitch | None = None,
    ) -> None:
        self.fd = tun_fd
        #: the C switch (None: every packet goes through ``process``)
        self.native = native
        #: runs the batch's confined provider services ahead (pcsite_lite.confine.Prefetcher)
        self.prefetch = prefetch
        self.process = process
        self.clock = clock
        self.stats = stats
        self.batch = max(1, min(batch, fastio.MAX_BATCH))
        self.max_window_ns = busy_poll_us * 1000
        self.window_ns = self.max_window_ns  #: the current busy-poll window
        self.account = account
        self.name = name
        self._last_batch_ns = 0
        #: busy-poll windows that caught a packet / ended empty (reported in the stats)
        self.spin_hits = 0
        self.spin_misses = 0
        self._raw: socket.socket | None = None
        if tx == "raw":
            # the kernel routes what a raw IP_HDRINCL socket sends (output path, no re-entry)
            self._raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def drain(self) -> bool:
        """Handle what the device holds (spinning up to the window); True if more may wait."""
        if self.max_window_ns and (time.monotonic_ns() - self._last_batch_ns < self.max_window_ns):
            self.window_ns = self.max_window_ns
        read_batch = fastio.read_batch
        fd, n = self.fd, self.batch
        spin = 0  # the wake-up that called us found packets waiting: no spin for the first read
        sw = self.native.sw if self.native is not None else None
        for _ in range(MAX_BATCHES):
            if sw is not None:
                got, nbytes = sw.read(fd, n, spin)
                packets = got  # only its truth value matters below
            else:
                packets = read_batch(fd, n, spin)
            if not packets:
                if spin:
                    self.spin_misses += 1
                    self.window_ns //= 2
                    if self.window_ns < self.max_window_ns // 8:
                        self.window_ns = 0  # four empty windows in a row: stop spinning
                return False
            if spin:
                self.spin_hits += 1
                self.window_ns = self.max_window_ns
            if sw is not None:
                self._switch(got, nbytes)
            else:
                self._handle(packets)  # type: ignore[arg-type]
            # bill services this batch's thread CPU before the next wait (time spent waiting
            # inside a metering window would count as preemption)
            self.account()
            self._last_batch_ns = time.monotonic_ns()
            spin = self.window_ns
        return True

    def _switch(self, n: int, nbytes: int) -> None:
        """The batch of ``n`` packets (``nbytes``) in the native switch's buffers."""
        native = self.native
        assert native is not None
        sw = native.sw
        now = self.clock()
        prefetch = self.prefetch
        held: set[int] = set()
        if prefetch is not None:
            # the packets the switch will not take (confined services are never native): those
            # for confined services go to their processes, the pipeline runs them once answered
            peeked = sw.peek()
            data = [d for _, d in peeked]
            run_now = prefetch.dispatch(data, now)
            if len(run_now) != len(data):
                kept = {id(d) for d in run_now}
                held = {i for i, d in peeked if id(d) not in kept}
        process = self.process
        drops = self.stats.drops
        name = self.name
        punted = 0

        def handle(i: int, data: bytes) -> list[bytes] | None:
            nonlocal punted
            punted += 1
            if i in held:
                return None  # in a confined process: see completed() below
            try:
                verdicts = process(data, now)
            except Exception as exc:  # a pipeline bug must not kill the worker
                drops["internal_error"] = drops.get("internal_error", 0) + 1
                print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                return None
            outs = None
            for v in verdicts:
                tv = type(v)
                if tv is Forward or tv is Deliver:
                    if outs is None:
                        outs = [v.data]  # type: ignore[union-attr]
                    else:
                        outs.append(v.data)  # type: ignore[union-attr]
                elif tv is Drop:
                    reason = v.reason  # type: ignore[union-attr]
                    drops[reason] = drops.get(reason, 0) + 1
            return outs

        py_outs = native.run_batch(now, handle)
        stats = self.stats
        stats.rx_packets += n
        stats.rx_bytes += nbytes
        stats.native_packets += n - punted
        if self._raw is None:
            written, errors, nbytes = sw.write(self.fd, py_outs)
            stats.tx_packets += written
            stats.tx_bytes += nbytes
            stats.tx_errors += errors
        else:
            self._send_raw(sw.outputs(py_outs))
        if prefetch is not None:  # what the confined processes answered meanwhile
            outs: list[bytes] = []
            for done, t in prefetch.completed(spin=False):
                self._run(done, t, outs)
            self._write(outs)

    def _handle(self, packets: list[bytes]) -> None:
        # one clock read per batch (a batch lasts a few ms at most); the counters are locals
        # during the batch and written back once
        now = self.clock()
        stats = self.stats
        stats.rx_packets += len(packets)
        stats.rx_bytes += sum(map(len, packets))
        prefetch = self.prefetch
        outs: list[bytes] = []
        if prefetch is not None:
            # packets for confined services go to their processes; the rest run now, then
            # whatever the processes answered meanwhile (the rest stays in flight: pending())
            self._run(prefetch.dispatch(packets, now), now, outs)
            for held, t in prefetch.completed(spin=False):  # more may wait on the device
                self._run(held, t, outs)
        else:
            self._run(packets, now, outs)
        self._write(outs)

    def pending(self) -> bool:
        """True while packets wait in confined services' processes (see :meth:`flush`)."""
        return self.prefetch is not None and self.prefetch.pending()

    def channels(self) -> set[int]:
        """The confined services' channels with packets in flight (see :meth:`flush`)."""
        return self.prefetch.channels() if self.prefetch is not None else set()

    def flush(self, spin: bool = True) -> None:
        """Run and send the packets whose confined services have answered since (and count
        those whose process missed its deadline); the worker calls this while
        :meth:`pending`, between reads. ``spin``: busy-poll briefly for answers that are due
        (not when packets wait on the device)."""
        if self.prefetch is None:
            return
        outs: list[bytes] = []
        for held, t in self.prefetch.completed(spin=spin):
            self._run(held, t, outs)
        self._write(outs)
        self.account()

    def _run(self, packets: list[bytes], now: float, outs: list[bytes]) -> None:
        process = self.process
        drops = self.stats.drops
        append = outs.append
        for data in packets:
            try:
                verdicts = process(data, now)
            except Exception as exc:  # a pipeline bug must not kill the worker
                drops["internal_error"] = drops.get("internal_error", 0) + 1
                print(f"{self.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            for v in verdicts:
                tv = type(v)
                if tv is Forward or tv is Deliver:
                    append(v.data)  # type: ignore[union-attr]
                elif tv is Drop:
                    reason = v.reason  # type: ignore[union-attr]
                    drops[reason] = drops.get(reason, 0) + 1

    def _write(self, outs: list[bytes]) -> None:
        if not outs:
            return
        if self._raw is not None:
            self._send_raw(outs)
            return
        written, errors, nbytes = fastio.write_batch(self.fd, outs)
        stats = self.stats
        stats.tx_packets += written
        stats.tx_bytes += nbytes
        stats.tx_errors += errors

    def _send_raw(self, outs: list[bytes]) -> None:
        """``tx = "raw"``: ``sendmmsg`` the batch's output on the raw socket, counted."""
        assert self._raw is not None
        raw, step = self._raw.fileno(), fastio.MAX_BATCH  # replicas may exceed one call
        stats = self.stats
        for i in range(0, len(outs), step):
            w, e, b = fastio.send_ip_batch(raw, outs[i : i + step])
            stats.tx_packets += w
            stats.tx_errors += e
            stats.tx_bytes += b
