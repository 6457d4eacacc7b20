"""The site's packet pipeline: bytes in, verdicts out (paper §2.1-2.4). Pure and synchronous.

``Pipeline(site).process(data, now)`` parses one received IPv4 packet with
:func:`pcsock.wire.parse` and returns a list of :mod:`~pcsite_lite.verdicts`. It never raises
on packet content: anything malformed or refused becomes a :class:`~pcsite_lite.verdicts.Drop`
counted under its reason in ``site.drops`` (and in the responsible service's ``drops``).

Form 1 (circuit; packet addressed to the site)
    incoming label -> circuit (``unknown_label``), expiry (``circuit_expired``), MAC under the
    in hop key (``bad_mac``), hop limit (``hop_limit_exceeded``), run the circuit's service,
    then the site -- not the service -- writes the out hop the service chose (or the circuit's
    only out hop): out label, hop limit - 1, IP destination = next hop, IP source = the site,
    and the MAC under the out hop key. A ``final`` out hop gives a ``Deliver`` (shim kept, or
    stripped for a legacy receiver, whose packet then carries the original source).
Form 2 (service ID + DSCP flag; packet addressed to the real destination)
    check (``bad_check``), service ID -> registration (``no_service``), TTL, run the service,
    forward toward the real destination with the DSCP flag cleared (ToS 0) and TTL - 1: no
    legacy router diverts it again, because policy routing matches the flag (and routers
    divert only what does not come from their own site, see ``docs/architecture.md``).
Form 3 (plain IPv4 diverted for a registered destination prefix)
    destination -> registration by longest prefix (``no_service``), TTL, run the owner's
    service, forward toward the destination (or tunnel it, RFC 2003, if the service asks).

Precedence (paper §2.2): when a form-1/2 packet's destination (form 1: the circuit's final
destination) also matches a destination registration here, the receiver's service runs first;
if it drops the packet, the sender's service never runs.

Services run under :mod:`~pcsite_lite.sandbox` rules with a per-packet CPU budget; an
exception, overrun or refused API call drops only that packet and counts against the service
(:class:`~pcsite_lite.runtime.ServiceRuntime` disables it after too many in a row).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable
from hmac import compare_digest as _compare
from typing import Any, Final

from pcsite_lite.api import (
    ACT_DROP,
    ACT_ENCAP,
    ACT_NONE,
    ACT_REPLICATE,
    Decision,
    PacketApi,
    PacketApiError,
    ServiceContext,
    replace_payload,
)
from pcsite_lite.circuits import CircuitEntry, OutHopEntry
from pcsite_lite.fis import FISUnavailableError
from pcsite_lite.runtime import ACTIVE, DISABLED, ServiceSlot
from pcsite_lite.sandbox import BudgetExceeded, ServiceUnavailable
from pcsite_lite.site import Registration, Site
from pcsite_lite.verdicts import DROP_REASONS, Deliver, Drop, Forward, PipelineReason, Verdict
from pcsock import wire
from pcsock.wire import (
    DSCP_SERVICE,
    FORM_CIRCUIT,
    FORM_SERVICE,
    IPPROTO_PACKETCLOUD,
    UDP_PORT,
    Packet,
    WireError,
    WireReason,
    build_ipv4,
    int2ip,
    parse,
)

__all__ = ["IPPROTO_IPIP", "Pipeline"]

#: IP protocol number of IP-in-IP (RFC 2003), used by ``encapsulate``.
IPPROTO_IPIP: Final = 4

_DROPS: Final = {reason: Drop(reason) for reason in DROP_REASONS}
#: The fast path's one read of a form-1 packet in IP mode: IPv4 ver/ihl, total length,
#: flags/fragment offset, protocol, source, destination; shim ver|form, hop limit,
#: label (bytes 0..27).
_FAST: Final = struct.Struct("!BxHxxHxBxxIIBxBxI")
#: In UDP mode the shim follows an 8-byte UDP header: UDP destination port and length, then
#: the shim's ver|form, hop limit and label (read from byte 22).
_FAST_UDP: Final = struct.Struct("!HHxxBxBxI")
_VF_CIRCUIT: Final = 0x10 | FORM_CIRCUIT  # shim version 1, form 1
_from_bytes = int.from_bytes
_OVER_BUDGET: Final = "over its per-packet CPU budget"
_new = object.__new__


class Pipeline:
    """Processes packets for one :class:`~pcsite_lite.site.Site` (one per worker process).

    ``verify_ip_checksum=False`` suits a TUN adapter (the kernel verified it on ingress).
    ``cpu_clock`` (default ``time.perf_counter_ns``) measures service time for metering and
    the budget deadline; it is the only clock the pipeline reads, and tests may inject it.
    """

    def __init__(
        self,
        site: Site,
        *,
        verify_ip_checksum: bool = True,
        cpu_clock: Callable[[], int] | None = None,
        thread_clock: Callable[[], int] | None = None,
        accel: bool | None = None,
    ) -> None:
        self.site = site
        #: the C accelerator (pcsock._accel) for the form-1 fast path's ingress and egress,
        #: or None for the pure-Python path; ``accel=None`` uses it when pcsock.wire does
        ax = wire.accelerator()
        if accel and ax is None:
            raise RuntimeError(f"the C accelerator is not available: {wire.PURE_REASON}")
        self._ax: Any = ax if accel is None or accel else None
        #: the form-1 hop's egress (:func:`pcsock.wire.form1_out`, in C with the accelerator)
        self._form1_out: Callable[..., bytes] = (
            ax.form1_out if self._ax is not None else wire.PURE["form1_out"]
        )
        self.verify_ip_checksum = verify_ip_checksum
        #: the general path's Packet API and its decision (bound per stage)
        self.decision = Decision()
        self.api = PacketApi(self.decision)
        self.runtime = site.runtime
        self.budget = site.runtime.budget
        self.clock: Callable[[], int] = cpu_clock or time.perf_counter_ns
        self._locality = site._locality  # the site's memo of is_local()
        # the fast path's reusable form-1 Packet (IP mode, no options): only .buf changes
        fpkt = _new(Packet)
        fpkt.ihl = 20
        fpkt.encap = "ip"
        fpkt.form = FORM_CIRCUIT
        fpkt.shim_off = 20
        fpkt.payload_off = 36
        fpkt.buf = bytearray()
        self._fpkt = fpkt
        #: the fast path's Packet API, permanently bound to ``_fpkt`` with no redirect
        #: prefixes; the fast path clears the outputs it reads after every use
        self._fdec = Decision()
        self._fdec.pkt = fpkt
        self._fapi = PacketApi(self._fdec)
        self._circuit_get = site.circuits.get
        # CPU attribution (see account())
        self.thread_clock: Callable[[], int] = thread_clock or time.thread_time_ns
        self._window_ctxs: list[ServiceContext] = []
        self._window_wall0: int | None = None
        self._window_cpu0 = 0

    # ---- entry point
    def process(self, data: bytes | bytearray | memoryview, now: float) -> list[Verdict]:
        """Verdicts for one received packet ``data`` that arrived at time ``now``.

        Never raises for any ``data``. A ``bytearray`` of exactly the packet's length is
        processed in place (no copy); other inputs are copied first.

        A form-1 packet (IP or UDP mode) without IP options, addressed to this site, takes the
        *fast path* (here): the general path's checks in the same order with the same
        verdicts, counters and output bytes, specialised to that one layout (one struct
        unpack of the IPv4 header and shim, the circuit's precomputed MAC states, a
        dedicated Packet API object; its service call and egress are the general path's
        :meth:`_call` and :meth:`_emit_hop`). What it does not
        specialise -- a receiver-first destination, an inactive service, replicate, a final
        hop that strips the shim -- goes to the general path before anything changed.

        With the C accelerator (``pcsock._accel``; see ``accel=``), the fast path's ingress
        (eligibility checks, circuit lookup, MAC check) and egress (rewrite, re-MAC) are one
        C call each; the service, its budget and the metering stay here, unchanged.
        """
        site = self.site
        site.now = now
        if self._window_wall0 is None:
            self._open_window()
        ax = self._ax
        try:
            # ingress: the label's circuit (None: unknown), the shim's offset (20 IP mode, 28
            # UDP mode), the hop limit and (from C) the MAC verdict under the circuit's in key
            if ax is not None:  # the C accelerator's ingress: the same checks, the same MAC
                head = ax.form1_in(
                    data, site.public_addr, self.verify_ip_checksum, self._circuit_get
                )
                if head is None:
                    return self._general(data, now)
                circuit, o, hops, mac_ok = head
            else:
                if (type(data) is not bytes and type(data) is not bytearray) or len(data) < 36:
                    return self._general(data, now)
                b0, total, frag, proto, _src, dst, vf, hops, label = _FAST.unpack_from(data)
                o = 20 if proto == IPPROTO_PACKETCLOUD else 0  # the shim's offset; 0: not fast
                if proto == 17 and len(data) >= 44:
                    dport, ulen, vf, hops, label = _FAST_UDP.unpack_from(data, 22)
                    if dport == UDP_PORT and ulen == total - 20:
                        o = 28
                if not (
                    vf == _VF_CIRCUIT
                    and o
                    and b0 == 0x45
                    and total == len(data)
                    and dst == site.public_addr
                    and not frag & 0x3FFF
                    and (not self.verify_ip_checksum or not _from_bytes(data[:20], "big") % 0xFFFF)
                ):
                    return self._general(data, now)
                circuit = self._circuit_get(label)
                mac_ok = None
            # the general path's checks, in its order
            if circuit is None:
                return [self._drop(PipelineReason.UNKNOWN_LABEL)]
            if circuit.expires <= now:
                return [self._drop(PipelineReason.CIRCUIT_EXPIRED)]
            if circuit.dest_addr is not None and site.destinations:
                return self._general(data, now)  # receiver-first precedence
            if mac_ok is None:
                h = circuit.in_mac.copy()
                h.update(data[o : o + 12])
                h.update(data[16:20])
                mac_ok = _compare(h.digest(), data[o + 12 : o + 16])
            if not mac_ok:
                return [self._drop(WireReason.BAD_MAC)]
            if hops == 0:
                return [self._drop(PipelineReason.HOP_LIMIT_EXCEEDED)]
            slot = circuit.slot
            if slot is None:
                slot = circuit.slot = self.runtime.slot(circuit.psp, circuit.service)
            if slot.process is None or slot.status != ACTIVE:
                return self._general(data, now)  # its service_disabled/unavailable drop
            n = len(data)
            buf = data if type(data) is bytearray else bytearray(data)
            fpkt = self._fpkt
            fpkt.buf = buf
            if fpkt.shim_off != o:
                fpkt.shim_off = o
                fpkt.payload_off = o + 16
                fpkt.encap = "ip" if o == 20 else "udp"
            d = self._fdec
            d.ctx = slot.ctx
            d.now = now
            d.circuit = circuit
            dropped = self._call(slot, self._fapi, d, n, now)
            action = d.action
            hop = d.hop
            out_label = d.label
            if action or hop is not None or out_label is not None:
                d.action = ACT_NONE
                d.hop = None
                d.label = None
            if dropped is not None:
                return [dropped]
            if action == ACT_REPLICATE:
                replicas, payloads = d.replicas, d.payloads
                d.replicas = []
                d.payloads = None
                return self._replicate_hops(fpkt, replicas, payloads, hops, slot)
            if hop is None:
                hop = circuit.by_label[out_label] if out_label is not None else circuit.default
                if hop is None:
                    return [self._drop(PipelineReason.NO_DECISION, slot, "no out hop chosen")]
            return [self._emit_hop(fpkt, hop, hops, slot, copy=False)]
        except Exception as exc:  # a platform bug (e.g. in the circuit table), as in _general
            self._fdec.reset()
            self.runtime.event(
                now, PipelineReason.INTERNAL_ERROR, "site", f"{type(exc).__name__}: {exc}"
            )
            return [self._drop(PipelineReason.INTERNAL_ERROR)]

    def process_batch(
        self, packets: Iterable[bytes | bytearray | memoryview], now: float
    ) -> list[list[Verdict]]:
        """:meth:`process` each packet (all arrived by ``now``), then :meth:`account`."""
        out = [self.process(data, now) for data in packets]
        self.account()
        return out

    # ---- CPU attribution
    def _open_window(self) -> None:
        # (also where a site without an injected start time learns it: the first packet)
        if self.site.interval_start is None:
            self.site.interval_start = self.site.now
        self._window_wall0 = self.clock()
        self._window_cpu0 = self.thread_clock()

    def account(self) -> float:
        """Close the CPU-metering window: bill service time as this thread's real CPU.

        Per packet the pipeline times each service call with the cheap ``cpu_clock`` (wall
        time: it also counts time the thread was preempted) and adds it to the service's
        ``cpu_ns`` at once. The window opens at the first :meth:`process` after the previous
        ``account()``; here the pipeline reads ``thread_clock`` (this thread's CPU time) once
        and scales every service's wall time of the window by ``r = thread CPU / wall`` over
        the window (never above 1): ``cpu_ns`` drops by ``w - round(w * r)``. Call it after
        every batch of packets *before* the thread blocks (waiting inside a window would
        count as preemption), e.g. every 256 packets or few ms. Returns ``r`` (1.0 for an
        empty window).
        """
        wall0 = self._window_wall0
        if wall0 is None:
            return 1.0
        wall = self.clock() - wall0
        cpu = self.thread_clock() - self._window_cpu0
        self._window_wall0 = None
        ratio = 1.0 if wall <= 0 or cpu >= wall else max(cpu, 0) / wall
        ctxs = self._window_ctxs
        for ctx in ctxs:
            w = ctx.window_ns
            if w:
                ctx.window_ns = 0
                if ratio < 1.0:
                    c = ctx.counters
                    c.cpu_ns = max(0, c.cpu_ns - (w - round(w * ratio)))
        ctxs.clear()
        return ratio

    def _general(self, data: bytes | bytearray | memoryview, now: float) -> list[Verdict]:
        """Every packet the fast path does not take: parse with the codec, dispatch by form."""
        try:
            pkt = parse(data, verify_ip_checksum=self.verify_ip_checksum)
            form = pkt.form
            if form == FORM_CIRCUIT:
                return self._circuit(pkt, now)
            if form == FORM_SERVICE:
                return self._service_id(pkt, now)
            return self._destination(pkt, now)
        except WireError as exc:
            return [self._drop(exc.reason)]
        except Exception as exc:  # a bug of the platform, never of the packet: count, log
            self.runtime.event(
                now, PipelineReason.INTERNAL_ERROR, "site", f"{type(exc).__name__}: {exc}"
            )
            return [self._drop(PipelineReason.INTERNAL_ERROR)]

    def _charge(self, ctx: ServiceContext, n: int, dt: int) -> None:
        """Meter one service call that took ``dt`` ns of the cheap clock (see :meth:`account`)."""
        c = ctx.counters
        c.packets += 1
        c.bytes_in += n
        if ctx.cpu_source is not None:  # confined: what the kernel accounted to its process
            c.cpu_ns += ctx.cpu_source()
            return
        c.cpu_ns += dt
        w = ctx.window_ns
        if not w:
            self._window_ctxs.append(ctx)
        ctx.window_ns = w + dt

    def _drop(self, reason: str, slot: ServiceSlot | None = None, detail: str = "") -> Drop:
        self.site.drops[reason] += 1
        if slot is None:
            return _DROPS[reason]
        slot.ctx.counters.drops += 1
        return Drop(reason, slot.name, detail)

    # ---- running one service on the packet
    def _run(
        self,
        slot: ServiceSlot,
        pkt: Packet,
        now: float,
        circuit: CircuitEntry | None,
        allowed: tuple[tuple[int, int], ...],
    ) -> Drop | None:
        """Run ``slot``'s service; None if it did not fail (its decision is in ``self.api``)."""
        process = slot.process
        if process is None or slot.status != ACTIVE:
            reason = (
                PipelineReason.SERVICE_DISABLED
                if slot.status == DISABLED
                else PipelineReason.SERVICE_UNAVAILABLE
            )
            return self._drop(reason, slot, slot.status_detail)
        d = self.decision
        d.bind(pkt, slot.ctx, now, circuit, allowed)
        return self._call(slot, self.api, d, len(pkt.buf), now)

    def _call(
        self, slot: ServiceSlot, api: PacketApi, d: Decision, n: int, now: float
    ) -> Drop | None:
        """Call ``slot``'s (active) service on ``api`` (bound through ``d``, the packet
        ``n`` bytes) under its CPU budget and meter it: None if it did not fail or drop (its
        decision is in ``d``), else the drop (``d``'s outputs cleared if it failed)."""
        ctx = slot.ctx
        budget = self.budget
        clock = self.clock
        t0 = clock()
        budget.left = budget.max_ticks  # Budget.start(t0), inlined
        budget.deadline = t0 + budget.max_ns
        budget.overrun = False
        try:
            slot.process(api)  # type: ignore[misc]
        except BudgetExceeded:
            self._charge(ctx, n, clock() - t0)
            d.reset()
            return self._fail(slot, now, PipelineReason.SERVICE_TIMEOUT, _OVER_BUDGET)
        except PacketApiError as exc:
            self._charge(ctx, n, clock() - t0)
            d.reset()
            return self._fail(slot, now, exc.reason, exc.detail)
        except FISUnavailableError as exc:
            d.reset()
            return self._platform_fault(slot, now, exc)
        except ServiceUnavailable as exc:  # confined process (re)starting: not its failure
            d.reset()
            return self._drop(exc.reason, slot, str(exc))
        except Exception as exc:
            self._charge(ctx, n, clock() - t0)
            d.reset()
            return self._fail(
                slot, now, PipelineReason.SERVICE_ERROR, f"{type(exc).__name__}: {exc}"
            )
        dt = clock() - t0
        c = ctx.counters  # _charge, inlined (this runs for every packet)
        c.packets += 1
        c.bytes_in += n
        if ctx.cpu_source is None:
            c.cpu_ns += dt
            w = ctx.window_ns
            if not w:
                self._window_ctxs.append(ctx)
            ctx.window_ns = w + dt
        else:
            c.cpu_ns += ctx.cpu_source()
        spoof = d.spoof
        if budget.overrun or spoof is not None:
            d.reset()
            if budget.overrun:
                return self._fail(slot, now, PipelineReason.SERVICE_TIMEOUT, _OVER_BUDGET)
            return self._fail(slot, now, PipelineReason.SPOOF_ATTEMPT, spoof or "")
        if slot.consecutive_failures:
            slot.consecutive_failures = 0
        if d.action == ACT_DROP:
            return self._drop(PipelineReason.SERVICE_DROP, slot, d.detail)
        return None

    def _platform_fault(self, slot: ServiceSlot, now: float, exc: Exception) -> Drop:
        """The site failed the packet (its FIS is unreachable): a site drop, not the service's
        failure, and the packet is not metered to the service."""
        self.runtime.platform_fault(slot, now, PipelineReason.FIS_UNAVAILABLE, str(exc))
        return self._drop(PipelineReason.FIS_UNAVAILABLE)

    def _fail(self, slot: ServiceSlot, now: float, reason: str, detail: str) -> Drop:
        self.runtime.failed(slot, now, reason, detail)
        return self._drop(reason, slot, detail)

    def _receiver_first(self, addr: int, pkt: Packet, now: float) -> Drop | None:
        """Precedence: run the destination owner's service (if any) before the sender's."""
        reg = self.site.destinations.lookup(addr)
        if reg is None:
            return None
        # The receiver's stage may drop the packet or let it continue; it cannot redirect it
        # (no redirect prefixes), and a form-1 packet keeps its circuit.
        return self._run(reg.slot, pkt, now, None, ())

    # ---- egress accounting
    def _out(self, slot: ServiceSlot, data: bytes, addr: int) -> None:
        c = slot.ctx.counters
        n = len(data)
        c.bytes_out += n
        local = self._locality.get(addr)
        if local is None:
            local = self.site.is_local(addr)
        if local:
            c.bytes_local += n
        else:
            c.bytes_interdomain += n

    # ---- form 1
    def _circuit(self, pkt: Packet, now: float) -> list[Verdict]:
        site = self.site
        if pkt.dst != site.public_addr:
            if site.destinations:
                # a circuit packet diverted here by its destination prefix (form 3 + form 1)
                return self._destination(pkt, now)
            return [self._drop(PipelineReason.NOT_FOR_SITE)]
        circuit = site.circuits.get(pkt.label)
        if circuit is None:
            return [self._drop(PipelineReason.UNKNOWN_LABEL)]
        if circuit.expires <= now:
            return [self._drop(PipelineReason.CIRCUIT_EXPIRED)]
        if not pkt.verify_mac(circuit.in_key):
            return [self._drop(WireReason.BAD_MAC)]
        hops = pkt.hop_limit
        if hops == 0:
            return [self._drop(PipelineReason.HOP_LIMIT_EXCEEDED)]
        slot = circuit.slot
        if slot is None:
            slot = circuit.slot = self.runtime.slot(circuit.psp, circuit.service)
        if circuit.dest_addr is not None and site.destinations:
            dropped = self._receiver_first(circuit.dest_addr, pkt, now)
            if dropped is not None:
                return [dropped]
        dropped = self._run(slot, pkt, now, circuit, ())
        if dropped is not None:
            return [dropped]
        d = self.decision
        if d.action == ACT_REPLICATE:
            return self._replicate_hops(pkt, d.replicas, d.payloads, hops, slot)
        hop = d.hop
        if hop is None:
            label = d.label
            hop = circuit.by_label[label] if label is not None else circuit.default
            if hop is None:
                return [self._drop(PipelineReason.NO_DECISION, slot, "no out hop chosen")]
        return [self._emit_hop(pkt, hop, hops, slot, copy=False)]

    def _replicate_hops(
        self,
        pkt: Packet,
        replicas: list[OutHopEntry],
        payloads: list[bytes | None] | None,
        hops: int,
        slot: ServiceSlot,
    ) -> list[Verdict]:
        """A form-1 ``replicate``: one copy per out hop, each with its own payload if given."""
        if payloads is None:
            return [self._emit_hop(pkt, hop, hops, slot, copy=True) for hop in replicas]
        return [
            self._emit_hop(pkt, hop, hops, slot, copy=True, payload=data)
            for hop, data in zip(replicas, payloads, strict=True)
        ]

    def _emit_hop(
        self,
        pkt: Packet,
        hop: OutHopEntry,
        hops: int,
        slot: ServiceSlot,
        copy: bool,
        payload: bytes | None = None,
    ) -> Verdict:
        """The form-1 hop's egress, for the fast and the general path: the label swap,
        hop limit, source (the site) and destination rewrite with the incremental checksum
        update and the re-MAC are :func:`pcsock.wire.form1_out` (the one form-1 hop, in C
        with the accelerator); a hop to a legacy receiver strips the shim instead. Then
        metering and the verdict. ``copy``: work on a copy (one of several replicas), with
        ``payload`` instead of the packet's if it is not None."""
        if copy:
            pkt = parse(bytearray(pkt.buf), verify_ip_checksum=False)
            if payload is not None:
                replace_payload(pkt, payload)
        addr = hop.addr
        if hop.strip:  # the legacy receiver gets the original sender's packet
            pkt.set_dst(addr)
            pkt.set_src(pkt.orig_src)
            out = bytes(pkt.strip_shim())
        else:
            out = self._form1_out(pkt.buf, pkt.shim_off, hops - 1, hop.label, addr, hop.key)
        self._out(slot, out, addr)
        if hop.final or hop.strip:
            return Deliver(out, hop.next_hop, hop.strip)
        return Forward(out, hop.next_hop)

    # ---- form 2
    def _service_id(self, pkt: Packet, now: float) -> list[Verdict]:
        if not pkt.verify_check():
            return [self._drop(WireReason.BAD_CHECK)]
        reg = self.site.service_ids.get(pkt.service_id)
        if reg is None:
            return [self._drop(PipelineReason.NO_SERVICE)]
        if pkt.ttl <= 1:
            return [self._drop(PipelineReason.TTL_EXCEEDED)]
        if self.site.destinations:
            dropped = self._receiver_first(pkt.dst, pkt, now)
            if dropped is not None:
                return [dropped]
            if self.decision.md_changed:  # the receiver's stage changed the metadata
                pkt.seal()
        return self._serve(reg, pkt, now)

    # ---- form 3
    def _destination(self, pkt: Packet, now: float) -> list[Verdict]:
        reg = self.site.destinations.lookup(pkt.dst)
        if reg is None:
            return [self._drop(PipelineReason.NO_SERVICE)]
        if pkt.ttl <= 1:
            return [self._drop(PipelineReason.TTL_EXCEEDED)]
        return self._serve(reg, pkt, now)

    def _serve(self, reg: Registration, pkt: Packet, now: float) -> list[Verdict]:
        """Run a form-2/3 registration's service and carry out its decision."""
        slot = reg.slot
        dropped = self._run(slot, pkt, now, None, reg.allowed)
        if dropped is not None:
            return [dropped]
        d = self.decision
        if d.md_changed:
            if pkt.form == FORM_SERVICE:
                pkt.seal()
            elif pkt.form == FORM_CIRCUIT:
                # a circuit packet in transit (diverted by its destination prefix): its MAC
                # belongs to the next site, so nobody here may change what it covers
                return [
                    self._fail(
                        slot,
                        now,
                        PipelineReason.SPOOF_ATTEMPT,
                        "metadata of a transit circuit packet",
                    )
                ]
        buf = pkt.buf
        # leave the site unflagged (no second diversion) and one hop older
        tos = pkt.tos
        if tos >> 2 == DSCP_SERVICE:  # DSCP 43 cleared, ECN bits kept (protocol.md §4.3)
            tos &= 0x03
            pkt.set_tos(tos)
        pkt.set_ttl(pkt.ttl - 1)
        action = d.action
        if action == ACT_NONE or action not in (ACT_ENCAP, ACT_REPLICATE):
            out = bytes(buf)
            self._out(slot, out, pkt.dst)
            return [Forward(out, int2ip(pkt.dst))]
        targets = [d.encap] if action == ACT_ENCAP else list(d.replicas)
        payloads = d.payloads if action == ACT_REPLICATE else None
        verdicts: list[Verdict] = []
        for i, addr in enumerate(targets):
            buf = pkt.buf
            data = None if payloads is None else payloads[i]
            if data is not None:
                inner = parse(bytearray(buf), verify_ip_checksum=False)
                replace_payload(inner, data)
                buf = inner.buf
            if len(buf) + 20 > 0xFFFF:
                verdicts.append(
                    self._drop(PipelineReason.TOO_BIG, slot, "no room for the tunnel header")
                )
                continue
            out = bytes(
                build_ipv4(
                    src=self.site.public_addr,
                    dst=addr,
                    proto=IPPROTO_IPIP,
                    payload=buf,
                    tos=tos,
                )
            )
            self._out(slot, out, addr)
            verdicts.append(Forward(out, int2ip(addr)))
        return verdicts
