"""The state of one PacketCloud site (paper §2.3), shared by the pipelines that serve it.

:class:`Site` holds everything a :class:`~pcsite_lite.pipeline.Pipeline` reads per packet and
the control plane (the daemon's control API, tests, the simulator) writes:

* ``public_ip`` -- the address routers send PacketCloud traffic to, and the source of every
  circuit packet the site sends;
* ``circuits`` -- the :class:`~pcsite_lite.circuits.CircuitTable` (form 1);
* service-ID registrations (form 2): 24-bit service ID -> (psp, service);
* destination registrations (form 3): prefix -> owner (psp, service), in an
  :class:`~pcsite_lite.lpm.LpmTable`. The control API validates the DNSSEC ownership proof
  before calling :meth:`Site.register_destination`;
* ``fis`` -- the node's FIS handle (a :class:`~pcsite_lite.fis.CachedFIS`; by default over an
  in-memory SQLite engine, its clock is the site's packet clock);
* ``runtime`` -- the :class:`~pcsite_lite.runtime.ServiceRuntime` (loaded services, status,
  counters);
* the ISP's local prefixes, which split forwarded bytes into local and inter-domain;
* drop counters by reason, and :meth:`Site.snapshot` of the services' counters into
  :class:`~pcsite_lite.metering.UsageRecord` rows per interval.

A registration may also name *redirect prefixes*: tunnel end points (``encapsulate``,
``replicate``) the ISP allows that service to send to. Without them a form-2/3 service can only
let the packet continue to its own destination or drop it.

Nothing here does I/O or reads a clock: times come in as arguments (``now``). ``Site(...,
now=t)`` is the site's start time: the first usage interval starts there (a daemon passes its
wall clock, the simulator its simulated one); without it, the first interval starts at the
first packet's arrival time.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from typing import Any, Final

from pcsite_lite.circuits import CircuitTable
from pcsite_lite.lpm import MASKS, LpmTable, PrefixError, format_prefix, parse_prefix
from pcsite_lite.metering import Counters, UsageRecord
from pcsite_lite.runtime import LogSinkFactory, Resolver, ServiceRuntime, ServiceSlot, SiteEvent
from pcsite_lite.sandbox import BUDGET, Budget
from pcsock.errors import CodedError
from pcsock.wire import WireError, int2ip, ip2int

__all__ = ["REGISTRATION_ERRORS", "Registration", "RegistrationError", "Site"]

MAX_SERVICE_ID: Final = 0xFFFFFF

_NOW: Final = attrgetter("now")

REGISTRATION_ERRORS: Final = frozenset({"bad_request", "conflict", "not_owner", "not_found"})


class RegistrationError(CodedError):
    """A registration request the site refuses; ``code`` is in REGISTRATION_ERRORS."""

    CODES = REGISTRATION_ERRORS


def _prefixes(prefixes: Iterable[str]) -> tuple[tuple[int, int], ...]:
    out = []
    for p in prefixes:
        try:
            net, plen = parse_prefix(p)
        except PrefixError as exc:
            raise RegistrationError("bad_request", str(exc)) from None
        out.append((net, MASKS[plen]))
    return tuple(out)


def _check_owner(reg: Registration | None, psp: str, what: str) -> None:
    """Refuse to change ``what`` unless its registration ``reg`` exists and is ``psp``'s."""
    if reg is None:
        raise RegistrationError("not_found", what)
    if reg.psp != psp:
        raise RegistrationError("not_owner", what)


@dataclass(frozen=True, slots=True)
class Registration:
    """A form-2 service ID or form-3 destination prefix bound to a PSP's service."""

    key: str  #: "sid:<n>" or the prefix
    psp: str
    service: str
    slot: ServiceSlot = field(repr=False, compare=False)
    allowed: tuple[tuple[int, int], ...] = ()  #: redirect prefixes as (net, mask)

    @property
    def redirect_prefixes(self) -> list[str]:
        return [format_prefix(net, bin(mask).count("1")) for net, mask in self.allowed]


class Site:
    """One PacketCloud site's state (see the module docstring)."""

    def __init__(
        self,
        name: str,
        public_ip: str,
        *,
        fis: Any = None,
        local_prefixes: Iterable[str] = (),
        log_sinks: LogSinkFactory | None = None,
        resolver: Resolver | None = None,
        budget: Budget = BUDGET,
        max_failures: int = 10,
        events: Callable[[SiteEvent], None] | None = None,
        randbits: Callable[[int], int] = secrets.randbits,
        now: float | None = None,
        isolation: Any = None,
        replicate_caps: tuple[int, int | None] | None = None,
        node_id: str = "0",
    ) -> None:
        self.name = name
        #: which node (and worker) of the site this state runs on (``pkt.node_id``)
        self.node_id = node_id
        try:
            self.public_addr = ip2int(public_ip)
        except WireError as exc:
            raise ValueError(f"site public IP: {exc}") from None
        self.public_ip = int2ip(self.public_addr)
        #: the time of the packet being processed (the pipeline sets it; FIS cache clock)
        self.now = 0.0 if now is None else float(now)
        if fis is None:
            from pcsite_lite.fis import CachedFIS, SqliteFIS

            # the packet clock as a C-level callable (no Python frame per FIS read)
            fis = CachedFIS(SqliteFIS(":memory:"), clock=partial(_NOW, self))
        self.fis = fis
        self.circuits = CircuitTable(randbits=randbits)
        self.service_ids: dict[int, Registration] = {}
        self.destinations: LpmTable[Registration] = LpmTable()
        self.runtime = ServiceRuntime(
            fis=fis,
            log_sinks=log_sinks,
            resolver=resolver,
            budget=budget,
            max_failures=max_failures,
            events=events,
            isolation=isolation,
            replicate_caps=replicate_caps,
            identity=(name, node_id),
        )
        self.local_prefixes: LpmTable[bool] = LpmTable()
        for p in local_prefixes:
            self.local_prefixes.insert(p, True)
        self._locality: dict[int, bool] = {}
        #: drops by reason (every Drop verdict of every pipeline on this state)
        self.drops: Counter[str] = Counter()
        #: start of the current usage interval: the site's start time ``now`` (a daemon
        #: passes its wall clock), else the arrival time of the first packet a pipeline
        #: processes (never the epoch); then the previous snapshot's time
        self.interval_start: float | None = None if now is None else float(now)

    def clock(self) -> float:
        """The site's packet clock (the ``now`` of the packet being processed)."""
        return self.now

    # ---- services
    def deploy(
        self, psp: str, service: str, source: str | bytes, *, version: str | None = None
    ) -> ServiceSlot:
        """Load service source and make it the running version (ServiceLoadError if refused)."""
        return self.runtime.deploy(psp, service, source, version=version)

    # ---- form 2: service IDs
    def register_service_id(
        self, service_id: int, psp: str, service: str, *, redirect_prefixes: Iterable[str] = ()
    ) -> Registration:
        """Bind a 24-bit service ID to ``psp``'s ``service`` at this site."""
        if not isinstance(service_id, int) or not 0 < service_id <= MAX_SERVICE_ID:
            raise RegistrationError("bad_request", "service ID must be in 1..2**24-1")
        old = self.service_ids.get(service_id)
        if old is not None and old.psp != psp:
            raise RegistrationError("conflict", f"service ID {service_id} is taken")
        reg = Registration(
            f"sid:{service_id}",
            psp,
            service,
            self.runtime.slot(psp, service),
            _prefixes(redirect_prefixes),
        )
        self.service_ids[service_id] = reg
        return reg

    def unregister_service_id(self, service_id: int, psp: str) -> None:
        _check_owner(self.service_ids.get(service_id), psp, f"service ID {service_id}")
        del self.service_ids[service_id]

    # ---- form 3: destination prefixes
    def register_destination(
        self, prefix: str, psp: str, service: str, *, redirect_prefixes: Iterable[str] = ()
    ) -> Registration:
        """Run ``psp``'s ``service`` on traffic to ``prefix`` (ownership already proven)."""
        try:
            net, plen = parse_prefix(prefix)
        except PrefixError as exc:
            raise RegistrationError("bad_request", str(exc)) from None
        canon = format_prefix(net, plen)
        old = self.destinations.get(canon)
        if old is not None and old.psp != psp:
            raise RegistrationError("conflict", f"{canon} is registered by another PSP")
        reg = Registration(
            canon, psp, service, self.runtime.slot(psp, service), _prefixes(redirect_prefixes)
        )
        self.destinations.insert(canon, reg)
        return reg

    def unregister_destination(self, prefix: str, psp: str) -> None:
        try:
            canon = format_prefix(*parse_prefix(prefix))
        except PrefixError as exc:
            raise RegistrationError("bad_request", str(exc)) from None
        _check_owner(self.destinations.get(canon), psp, canon)
        self.destinations.delete(canon)

    # ---- metering
    def is_local(self, addr: int) -> bool:
        """Whether next hop ``addr`` is inside the ISP's prefixes (memoised)."""
        v = self._locality.get(addr)
        if v is None:
            v = self.local_prefixes.lookup(addr) is not None
            if len(self._locality) > 65536:
                self._locality.clear()
            self._locality[addr] = v
        return v

    def snapshot(self, now: float) -> list[UsageRecord]:
        """Usage of every service since the last snapshot, one record each; counters restart.

        Services with no usage in the interval produce no record. Log sinks that have a
        ``flush`` method are flushed, so billing sees the interval's log lines too.
        """
        records = []
        start = now if self.interval_start is None else self.interval_start
        for slot in self.runtime.slots():
            ctx = slot.ctx
            c = ctx.counters
            if any(c.as_dict().values()):
                records.append(UsageRecord(self.name, ctx.psp, ctx.service, start, now, c))
                ctx.counters = Counters()
                # the open CPU window's wall time stays billed in this record as measured;
                # Pipeline.account() scales only what the new counters accrue
                ctx.window_ns = 0
            flush = getattr(ctx.log_sink, "flush", None)
            if callable(flush):
                flush()
        self.interval_start = now
        return records

    def psp_usage(self) -> dict[str, Counters]:
        """Running counters summed per PSP (since the last snapshot)."""
        out: dict[str, Counters] = {}
        for slot in self.runtime.slots():
            out.setdefault(slot.ctx.psp, Counters()).add(slot.ctx.counters)
        return out

    def status(self) -> dict[str, Any]:
        """Machine-readable state for operators (JSON-compatible)."""
        return {
            "site": self.name,
            "public_ip": self.public_ip,
            "circuits": len(self.circuits),
            "service_ids": {str(k): f"{r.psp}/{r.service}" for k, r in self.service_ids.items()},
            "destinations": {p: f"{r.psp}/{r.service}" for p, r in self.destinations.items()},
            "services": self.runtime.status(),
            "drops": dict(self.drops),
        }
