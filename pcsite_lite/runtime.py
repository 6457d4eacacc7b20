"""Service runtime: loaded services, their status, containment and the site's event log.

The runtime keeps one :class:`ServiceSlot` per (PSP, service): the loaded code, the
:class:`~pcsite_lite.api.ServiceContext` the Packet API acts on (counters, FIS namespace,
node-local cache, log sink) and a status:

* ``active`` -- runs;
* ``unavailable`` -- no code (not deployed, or the repository could not supply a loadable
  version); packets get ``Drop("service_unavailable")``;
* ``disabled`` -- failed ``max_failures`` times in a row (exception, CPU budget overrun, API
  refusal); packets get ``Drop("service_disabled")`` until a new version is deployed or its
  owner re-enables it (control API ``POST /v1/psps/{psp}/services/{service}/enable``: every
  worker calls :meth:`ServiceRuntime.enable`). A platform fault (the FIS unreachable) is never
  counted as a failure: see :meth:`ServiceRuntime.platform_fault`.

Code comes from :meth:`ServiceRuntime.deploy` (source text, compiled by
:func:`pcsite_lite.sandbox.load_service` in this process -- the trusted lane -- or, when the
runtime's ``isolation`` policy confines the service, started in its own confined process by
:class:`pcsite_lite.confine.ConfinedService`, see :func:`load_code`) or, on first use, from
a ``resolver`` -- e.g. the service repository's node-side cache, which takes
:func:`load_from_repository` as its loader. Deploying a new version swaps the slot's code
between two packets; nothing restarts and the counters carry on. With a resolver, the adapter
calls :meth:`ServiceRuntime.refresh` now and then (e.g. between packet batches): a version the
PSP activated in the repository then replaces the running one.

Wiring the repository (what the daemon does)::

    cache = ServiceCache(repo, loader=load_from_repository)
    site = Site("c1", "198.18.1.1", resolver=repository_resolver(cache))
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from pcsite_lite.api import REPLICATE_PER_PACKET, ServiceContext
from pcsite_lite.metering import Counters
from pcsite_lite.sandbox import BUDGET, Budget, LoadedService, load_service

if TYPE_CHECKING:
    from pcsite_lite.confine import IsolationPolicy

__all__ = [
    "ACTIVE",
    "DISABLED",
    "UNAVAILABLE",
    "LogSinkFactory",
    "Resolver",
    "ServiceRuntime",
    "ServiceSlot",
    "SiteEvent",
    "load_code",
    "load_from_repository",
    "repository_resolver",
]

ACTIVE: Final = "active"
DISABLED: Final = "disabled"
UNAVAILABLE: Final = "unavailable"

log = logging.getLogger("pcsite_lite.runtime")

#: ``(psp, service) -> sink``; a sink takes one log line (e.g.
#: ``pcsite_lite.billing.ledger.Ledger.log_sink(site, psp, service)``).
LogSinkFactory = Callable[[str, str], Callable[[str], None]]
#: ``(psp, service) -> LoadedService | None``: where code comes from on first use.
Resolver = Callable[[str, str], LoadedService | None]


def load_from_repository(
    code: Any, *, budget: Budget = BUDGET, isolation: IsolationPolicy | None = None
) -> LoadedService:
    """``ServiceCache`` loader: compile a verified ``pcsite_lite.repository.ServiceCode``.

    The code ticks against ``budget``, which must be the site's (``Site(budget=...)``; the
    default :data:`~pcsite_lite.sandbox.BUDGET` unless the site was given another one: then
    pass ``loader=functools.partial(load_from_repository, budget=that_budget)``). With an
    ``isolation`` policy that confines this service, nothing of it runs here: the result's
    ``process`` is a :class:`~pcsite_lite.confine.ConfinedService` starting its process.
    """
    return load_code(
        code.code,
        f"{code.psp}/{code.service}@{code.version}",
        psp=code.psp,
        service=code.service,
        version=code.version,
        budget=budget,
        isolation=isolation,
    )


def load_code(
    source: str | bytes,
    name: str,
    *,
    psp: str,
    service: str,
    version: str | None,
    budget: Budget = BUDGET,
    isolation: IsolationPolicy | None = None,
) -> LoadedService:
    """Load ``source`` in the worker (the trusted lane) or confined, as ``isolation`` says."""
    if isolation is None or not isolation.confined(psp, service):
        return load_service(source, name, version=version, budget=budget)
    from pcsite_lite.confine import ConfinedService

    data = source.encode() if isinstance(source, str) else bytes(source)
    proxy = ConfinedService(
        data, name, policy=isolation, max_ticks=budget.max_ticks, max_ns=budget.max_ns
    )
    return LoadedService(name=name, process=proxy, namespace={}, version=version)


def _proxy(code: LoadedService | None) -> Any:
    """The :class:`~pcsite_lite.confine.ConfinedService` behind ``code``, if confined."""
    if code is None:
        return None
    return code.process if hasattr(code.process, "take_cpu") else None


def repository_resolver(cache: Any) -> Resolver:
    """A resolver over a ``pcsite_lite.repository.ServiceCache`` built with
    :func:`load_from_repository`: unknown or unloadable services resolve to an error status."""

    def resolve(psp: str, service: str) -> LoadedService | None:
        loaded = cache.get(psp, service)
        return loaded if isinstance(loaded, LoadedService) else None

    return resolve


@dataclass(frozen=True, slots=True)
class SiteEvent:
    """Something an operator should see: a service error, timeout, disable, load failure."""

    time: float
    kind: str  #: service_error, service_timeout, spoof_attempt, api_misuse, disabled, ...
    service: str  #: "psp/service"
    detail: str


class ServiceSlot:
    """One (PSP, service) at this site: code, context, status and failure accounting."""

    __slots__ = (
        "code",
        "consecutive_failures",
        "ctx",
        "failures",
        "name",
        "process",
        "status",
        "status_detail",
        "version",
    )

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.name = ctx.name
        self.code: LoadedService | None = None
        self.process: Callable[[Any], object] | None = None
        self.version: str | None = None
        self.status = UNAVAILABLE
        self.status_detail = "not deployed"
        self.failures = 0  #: total failed packets
        self.consecutive_failures = 0

    def as_dict(self) -> dict[str, Any]:
        doc = {
            "service": self.name,
            "status": self.status,
            "detail": self.status_detail,
            "version": self.version,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "counters": self.ctx.counters.as_dict(),
        }
        proxy = _proxy(self.code)
        doc["isolation"] = "trusted" if proxy is None else proxy.status()
        return doc


class ServiceRuntime:
    """Loaded services of one site (one per pipeline process)."""

    def __init__(
        self,
        *,
        fis: Any = None,
        log_sinks: LogSinkFactory | None = None,
        resolver: Resolver | None = None,
        budget: Budget = BUDGET,
        max_failures: int = 10,
        events: Callable[[SiteEvent], None] | None = None,
        keep_events: int = 1000,
        isolation: IsolationPolicy | None = None,
        replicate_caps: tuple[int, int | None] | None = None,
        identity: tuple[str, str] = ("", "0"),
    ) -> None:
        self.replicate_caps = replicate_caps
        #: (site name, node ID) the Packet API's ``site_id``/``node_id`` answer
        self.identity = identity
        #: where provider code runs (None: every service in this process, the trusted lane)
        self.isolation = isolation
        self.fis = fis
        self.log_sinks = log_sinks
        self.resolver = resolver
        self.budget = budget
        self.max_failures = max_failures
        self.events_sink = events
        #: the most recent events (bounded), newest last
        self.events: deque[SiteEvent] = deque(maxlen=keep_events)
        self._slots: dict[tuple[str, str], ServiceSlot] = {}
        self._fault_logged: dict[tuple[str, str], float] = {}  #: (service, reason) -> time

    # ---- slots
    def slot(self, psp: str, service: str) -> ServiceSlot:
        """The slot of (psp, service), created on first use (resolving code if possible)."""
        key = (psp, service)
        slot = self._slots.get(key)
        if slot is None:
            sink = self.log_sinks(psp, service) if self.log_sinks is not None else None
            slot = ServiceSlot(self._context(psp, service, sink))
            self._slots[key] = slot
            if self.resolver is not None:
                self._resolve(slot, psp, service)
        return slot

    def _context(self, psp: str, service: str, sink: Any) -> ServiceContext:
        return ServiceContext(
            psp,
            service,
            fis=self.fis,
            log_sink=sink,
            replicate_caps=self.replicate_caps or (REPLICATE_PER_PACKET, None),
            identity=self.identity,
            budget=self.budget,
        )

    def _resolve(self, slot: ServiceSlot, psp: str, service: str) -> None:
        assert self.resolver is not None
        try:
            code = self.resolver(psp, service)
        except Exception as exc:  # the repository's errors, whatever they are
            detail = f"cannot load: {type(exc).__name__}: {exc}"
            if slot.code is None:
                slot.status_detail = detail
            self.event(0.0, "load_failed", slot.name, detail)
            return
        if code is not None and code is not slot.code:
            proxy = _proxy(code)
            if proxy is not None and slot.code is not None and slot.status == ACTIVE:
                # keep the running version until the new one's process has loaded it
                try:
                    if not proxy.poll_ready():
                        return
                except Exception as exc:
                    self.event(0.0, "load_failed", slot.name, str(exc))
                    return
            self.install(psp, service, code, version=code.version)

    def refresh(self) -> None:
        """Ask the resolver again for every service: roll out newly activated versions."""
        if self.resolver is None:
            return
        for (psp, service), slot in list(self._slots.items()):
            if slot.status == DISABLED and slot.code is not None:
                # a disabled service comes back only with a *new* version
                try:
                    code = self.resolver(psp, service)
                except Exception:
                    continue
                if code is not None and code is not slot.code:
                    self.install(psp, service, code, version=code.version)
                continue
            self._resolve(slot, psp, service)

    def deploy(
        self, psp: str, service: str, source: str | bytes, *, version: str | None = None
    ) -> ServiceSlot:
        """Compile ``source`` and make it the running version (raises ServiceLoadError)."""
        code = load_code(
            source,
            f"{psp}/{service}",
            psp=psp,
            service=service,
            version=version,
            budget=self.budget,
            isolation=self.isolation,
        )
        return self.install(psp, service, code, version=version)

    def install(
        self, psp: str, service: str, code: LoadedService, *, version: str | None = None
    ) -> ServiceSlot:
        """Make already-loaded ``code`` the running version; re-enables a disabled service."""
        slot = self._slots.get((psp, service))
        if slot is None:
            sink = self.log_sinks(psp, service) if self.log_sinks is not None else None
            slot = ServiceSlot(self._context(psp, service, sink))
            self._slots[(psp, service)] = slot
        old = _proxy(slot.code)
        if old is not None and slot.code is not code:
            old.stop()  # its process ends; it restarts only if that code comes back
        slot.code = code
        slot.process = code.process
        proxy = _proxy(code)
        # a confined service is billed the CPU the kernel accounted to its process
        slot.ctx.cpu_source = None if proxy is None else proxy.take_cpu
        slot.version = version
        slot.status = ACTIVE
        slot.status_detail = ""
        slot.consecutive_failures = 0
        return slot

    def remove(self, psp: str, service: str) -> None:
        """Forget the code (packets then drop as service_unavailable); counters stay."""
        slot = self._slots.get((psp, service))
        if slot is not None:
            proxy = _proxy(slot.code)
            if proxy is not None:
                proxy.stop()
            slot.code = None
            slot.process = None
            slot.status = UNAVAILABLE
            slot.status_detail = "removed"

    def enable(self, psp: str, service: str) -> None:
        """Re-enable a disabled service (operator action)."""
        slot = self._slots.get((psp, service))
        if slot is not None and slot.code is not None:
            slot.status = ACTIVE
            slot.status_detail = ""
            slot.consecutive_failures = 0

    # ---- failures and events
    def failed(self, slot: ServiceSlot, now: float, kind: str, detail: str) -> None:
        """Account one failed packet of ``slot``; disables it after too many in a row."""
        slot.failures += 1
        slot.consecutive_failures += 1
        self.event(now, kind, slot.name, detail)
        if slot.consecutive_failures >= self.max_failures and slot.status == ACTIVE:
            slot.status = DISABLED
            slot.status_detail = (
                f"disabled after {slot.consecutive_failures} failures in a row; last: "
                f"{kind}: {detail}"
            )
            self.event(now, "disabled", slot.name, slot.status_detail)
            proxy = _proxy(slot.code)
            if proxy is not None:
                proxy.stop()  # its memory goes back; it starts again if re-enabled

    def platform_fault(self, slot: ServiceSlot, now: float, reason: str, detail: str) -> None:
        """A packet of ``slot`` failed for the *site's* fault (e.g. ``fis_unavailable``): not
        counted against the service (no failure, no disable) and not billed; one event per
        service and reason per second at most, however many packets it hits."""
        key = (slot.name, reason)
        if now - self._fault_logged.get(key, -1e18) >= 1.0:
            self._fault_logged[key] = now
            self.event(now, reason, slot.name, detail)

    def event(self, now: float, kind: str, service: str, detail: str) -> None:
        ev = SiteEvent(now, kind, service, detail)
        self.events.append(ev)
        log.warning("%s %s: %s", kind, service, detail)
        if self.events_sink is not None:
            self.events_sink(ev)

    # ---- queries
    def slots(self) -> list[ServiceSlot]:
        return list(self._slots.values())

    def status(self) -> dict[str, dict[str, Any]]:
        """``{"psp/service": {"status": ..., "detail": ..., "counters": {...}, ...}}``."""
        return {s.name: s.as_dict() for s in self._slots.values()}

    def counters(self, psp: str, service: str) -> Counters:
        return self.slot(psp, service).ctx.counters

    def close(self) -> None:
        """Stop every confined process (the worker is going away)."""
        for slot in self._slots.values():
            proxy = _proxy(slot.code)
            if proxy is not None:
                proxy.close()
