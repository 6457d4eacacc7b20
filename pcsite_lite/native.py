"""Native switching: form-1 packets of natively runnable services switched entirely in C.

The worker's pipeline (:mod:`pcsite_lite.pipeline`) is the reference. For the commonest
packet -- a form-1 packet on a circuit whose service only picks an out hop -- the whole hop
can run below Python: :class:`NativeSwitch` keeps a C circuit table
(:mod:`pcsite_lite._switch`) mirrored from the site's Python state, and the C loop verifies,
label-swaps, re-MACs, rewrites and re-checksums the packet in its read buffer, meters it for
its service, and writes it out, with no Python object per packet. Everything else goes to the
pipeline, one packet at a time, *in arrival order*: the C loop stops at the first packet it
does not switch, Python processes it, and the loop resumes after it. So the two paths
interleave exactly as one sequential pipeline would (metering, a service's failures in a row,
output order).

**Which services.** A service *declares* that the site may run it natively, with a top-level
``NATIVE = "<kernel>"`` in its source; the site never guesses from the code. Kernels
(:data:`KERNELS`) are the site's own implementations of shipped services:

* ``"srcroute"`` (``pcsite_lite/services/source_routing.py``): the FIS value at this hop's
  label, ``{"label": L, "next_hop": A}``, picks the out hop (one FIS read per packet, metered);
* ``"noop"``: the circuit's only out hop.

A declared service runs natively only when the Python path would give the same result for
every packet of the circuit: the service is active and trusted (a confined service always runs
in its own process), its decision resolves to an out hop of the circuit that does not strip
the shim, and no receiver's stage runs first. Otherwise its packets take the pipeline.

**The mirror.** The C table is a cache of *resolved decisions*, filled lazily: the first
packet of a circuit (after any change) takes the pipeline, and then :meth:`NativeSwitch.learn`
resolves its label -- the circuit's in key, expiry, chosen out hop (label, address, key),
its service's metering slot and whether the next hop is local -- into the table. Any change
that could alter a decision empties the table at once (a generation bump in C, between two
packets): a control op (circuit install/teardown/renew, registrations, enable), a FIS change
the node cache applies, a circuit expiring, a service's status or code changing (deploy,
repository roll-out, disabled for failures). Circuit state stays in Python; C only ever sees
a consistent snapshot.

**Metering** is exact for packets and bytes: per native packet the C loop adds what the
pipeline's fast path adds (``packets``, ``bytes_in``, ``bytes_out``, ``bytes_local`` or
``bytes_interdomain``, and the kernel's FIS reads) and :meth:`NativeSwitch.settle` moves the
sums into the services' :class:`~pcsite_lite.metering.Counters` before the next Python packet
and after every batch. CPU time is the C loop's measured time, split over the batch's services
by packets and then scaled, as the pipeline's, to the thread's CPU time (``Pipeline.account``).

``PACKETCLOUD_PURE=1``, a missing C build or ``[dataplane] native = false`` leave every packet
to the pipeline (:func:`available` says why).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, Final

from pcsite_lite.fis import FISError
from pcsite_lite.runtime import ACTIVE, ServiceSlot

__all__ = ["KERNELS", "NativeSwitch", "available", "declared_kernel"]

#: kernel name -> FIS reads a packet costs (what the Python service's code does per packet)
KERNELS: Final = {"srcroute": 1, "noop": 0}

try:
    from pcsite_lite import _switch  # type: ignore[attr-defined]

    _WHY_NOT = ""
except ImportError as exc:  # no compiler when the package was installed
    _switch = None
    _WHY_NOT = f"the C switch is not built ({exc})"


def available() -> tuple[bool, str]:
    """Whether native switching can run here, and if not why."""
    if os.environ.get("PACKETCLOUD_PURE", "") not in ("", "0"):  # as pcsock.wire reads it
        return False, "PACKETCLOUD_PURE is set"
    if _switch is None:
        return False, _WHY_NOT
    return True, ""


def declared_kernel(slot: ServiceSlot) -> str | None:
    """The native kernel ``slot``'s loaded code declares (``NATIVE = "..."``), if the site
    has that kernel; None for no declaration, an unknown one, or a confined service."""
    code = slot.code
    if code is None or slot.ctx.cpu_source is not None:
        return None
    kernel = code.namespace.get("NATIVE")
    return kernel if type(kernel) is str and kernel in KERNELS else None


class NativeSwitch:
    """The C switch of one worker and its mirror of ``pipeline``'s site (see the module doc).

    ``batch`` bounds the packets of one batch, ``bufsize`` one packet (a TUN device's MTU).
    """

    def __init__(self, pipeline: Any, *, batch: int = 256, bufsize: int = 65536) -> None:
        if _switch is None:  # (the worker asks available(), which also honours PURE)
            raise RuntimeError(f"native switching is not available: {_WHY_NOT}")
        self.pipeline = pipeline
        self.site = pipeline.site
        self.sw: Any = _switch.Switch(
            self.site.public_addr, batch, bufsize, pipeline.verify_ip_checksum
        )
        #: metering slot index (C) -> ServiceSlot, and back
        self._slots: list[ServiceSlot] = []
        self._index: dict[ServiceSlot, int] = {}
        #: what each service with table entries looked like when they were learned
        self._seen: dict[ServiceSlot, tuple[Any, ...]] = {}
        #: label -> (FIS namespace, key, the cached value object) its decision was made from
        self._fis_deps: dict[int, tuple[str, str, Any]] = {}
        self._sig = self._signature()
        #: counters for tests and the worker's stats
        self.learned = 0
        self.clears = 0
        self.faults = 0
        self.relearned = 0

    # ---- keeping the mirror consistent
    def _signature(self) -> tuple[Any, ...]:
        site = self.site
        fis = site.fis
        return (
            getattr(fis, "invalidations", 0),
            getattr(fis, "flushes", 0),
            len(site.circuits),
            len(site.destinations),
        )

    def invalidate(self) -> None:
        """Forget every entry (after a change of site state; entries are learned again)."""
        self.sw.clear()
        self._seen.clear()
        self._fis_deps.clear()
        self.clears += 1

    def check(self) -> None:
        """Empty the table if anything a decision depends on changed since it was learned.

        When only FIS entries changed (the node cache applied updates, but flushed nothing),
        only the decisions made from a value the cache no longer holds are resolved again:
        a service writing its FIS namespace all the time does not empty the table."""
        sig = self._signature()
        if sig != self._sig:
            old, self._sig = self._sig, sig
            cached = getattr(self.site.fis, "cached", None)
            if cached is None or old[1:] != sig[1:]:
                self.invalidate()
                return
            stale = [label for label, (ns, key, value) in self._fis_deps.items()
                     if cached(ns, key) is not value]  # fmt: skip
            for label in stale:
                del self._fis_deps[label]
                if not self.learn(label):
                    self.invalidate()  # its circuit is gone: nothing stale may stay
                    return
                self.relearned += 1
        for slot, seen in self._seen.items():
            if seen != (slot.status, slot.process, slot.code):
                self.invalidate()
                return

    def begin(self, now: float) -> None:
        """Before a batch that arrived by ``now``: what the pipeline does per packet first
        (the FIS cache's change poll when due, the packet clock, the CPU-metering window)."""
        site = self.site
        fis = site.fis
        due = getattr(fis, "refresh_if_due", None)
        if due is not None:
            due()
        self.check()
        site.now = now
        pipeline = self.pipeline
        if pipeline._window_wall0 is None:  # as Pipeline.process: open the metering window
            pipeline._open_window()

    def settle(self) -> None:
        """Move the C loop's metering into the services' counters (see the module doc)."""
        ns, rows = self.sw.take()
        if not rows:
            return
        total = sum(r[1] for r in rows)
        window = self.pipeline._window_ctxs
        slots = self._slots
        for idx, packets, b_in, b_out, b_local, b_inter, fis_reads in rows:
            slot = slots[idx]
            ctx = slot.ctx
            c = ctx.counters
            c.packets += packets
            c.bytes_in += b_in
            c.bytes_out += b_out
            c.bytes_local += b_local
            c.bytes_interdomain += b_inter
            c.fis_reads += fis_reads
            dt = ns * packets // total if total else 0
            c.cpu_ns += dt
            w = ctx.window_ns
            if not w:
                window.append(ctx)
            ctx.window_ns = w + dt
            if slot.consecutive_failures:  # a success, as in the pipeline
                slot.consecutive_failures = 0

    def _fault(self, exc: Exception) -> None:
        """A bug in the mirror must not stop the worker: empty the table (its packets take
        the pipeline and are learned again) and tell the operator, as the pipeline does."""
        self.invalidate()
        self.faults += 1
        self.site.runtime.event(
            self.site.now, "internal_error", "site", f"native: {type(exc).__name__}: {exc}"
        )

    def learn(self, label: int) -> bool:
        """Resolve circuit ``label`` into the table (natively switched, or always punted);
        False if there is no such circuit (unknown labels are never cached)."""
        site = self.site
        c = site.circuits.get(label)
        if c is None:
            return False
        slot = c.slot
        if slot is None:
            slot = c.slot = site.runtime.slot(c.psp, c.service)
        kernel, hop = self._resolve(c, slot)
        if hop is None:
            self.sw.punt(label)
            return True
        idx = self._index.get(slot)
        if idx is None:
            if len(self._slots) >= 65536:
                self.sw.punt(label)
                return True
            idx = self._index[slot] = len(self._slots)
            self._slots.append(slot)
        local = site._locality.get(hop.addr)
        if local is None:
            local = site.is_local(hop.addr)
        self.sw.set(
            label,
            c.in_key.key,
            c.expires,
            hop.label,
            hop.addr,
            None if hop.key is None else hop.key.key,
            idx,
            bool(local),
            KERNELS[kernel],
        )
        self._seen[slot] = (slot.status, slot.process, slot.code)
        self.learned += 1
        return True

    def _resolve(self, c: Any, slot: ServiceSlot) -> tuple[str, Any]:
        """The kernel and the out hop the circuit's service picks for every packet (hop None
        if its packets must take the pipeline: not declared native, inactive, confined, a
        final hop that strips the shim, a decision the pipeline would refuse, ...)."""
        if c.dest_addr is not None and self.site.destinations:
            return "", None  # the receiver's stage runs first
        if slot.status != ACTIVE or slot.process is None:
            return "", None
        kernel = declared_kernel(slot)
        if kernel == "noop":
            hop = c.default
        elif kernel == "srcroute":
            hop = self._srcroute(c, slot)
            if hop is not None:
                ctx = slot.ctx
                key = str(c.in_label)
                cached = getattr(ctx.fis, "cached", None)
                if cached is None:
                    return "", None  # no way to tell when its value changes: the pipeline
                self._fis_deps[c.in_label] = (ctx.ns, key, cached(ctx.ns, key))
        else:
            return "", None
        if hop is None or hop.strip:
            return "", None
        return kernel, hop

    @staticmethod
    def _srcroute(c: Any, slot: ServiceSlot) -> Any:
        """What ``services/source_routing.py`` chooses on circuit ``c`` (None: its packets
        would be dropped or refused, which the pipeline does)."""
        ctx = slot.ctx
        try:
            value = ctx.fis.get(ctx.ns, str(c.in_label))
        except (FISError, AttributeError):
            return None
        if not isinstance(value, dict):
            return None
        label = value.get("label")
        next_hop = value.get("next_hop")
        if type(label) is not int or type(next_hop) is not str:
            return None
        hop = c.by_label.get(label)
        if hop is None or hop.next_hop != next_hop:
            return None  # shim.update / forward_to refuse it: spoof_attempt
        return hop

    # ---- one batch
    def run_batch(
        self, now: float, handle: Callable[[int, bytes], list[bytes] | None]
    ) -> list[Any]:
        """Switch the loaded batch (arrived by ``now``) in order: natively where the table
        says so, every other packet through ``handle(index, data) -> outputs``. Returns the
        punted packets' outputs in order (for ``Switch.write`` / ``Switch.outputs``)."""
        sw = self.sw
        self.begin(now)
        run = sw.run
        n = sw.n
        py_outs: list[Any] = []
        i = 0
        while True:
            j = run(i, now)
            if j >= n:
                break
            if sw.pending:
                self.settle()
            py_outs.append(handle(j, sw.packet(j)))
            label = sw.missed(j)
            try:
                if label >= 0:
                    self.learn(label)
                self.check()
            except Exception as exc:  # a platform bug: switch nothing natively until fixed
                self._fault(exc)
            i = j + 1
        if sw.pending:
            self.settle()
        return py_outs

    def switch(self, packets: Iterable[bytes], now: float) -> list[bytes]:
        """Tests and benchmarks: switch ``packets`` as one batch, the rest through the
        pipeline; returns every output packet in order."""
        from pcsite_lite.verdicts import Deliver, Forward

        process = self.pipeline.process

        def handle(_i: int, data: bytes) -> list[bytes]:
            return [v.data for v in process(data, now) if type(v) in (Forward, Deliver)]

        self.sw.load(list(packets))
        return self.sw.outputs(self.run_batch(now, handle))
