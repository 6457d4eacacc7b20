"""Site state shared by the supervisor (the master copy) and the workers (replicas).

Both sides hold a :class:`pcsite_lite.site.Site`. The control API changes the supervisor's
(:class:`SiteState`), which checks ownership and conflicts; each accepted change is also a
small JSON *op* that the supervisor sends to every worker, which applies it to its
:class:`WorkerSite`. A worker that (re)starts first receives :meth:`SiteState.snapshot_ops`,
so replicas converge. FIS entries and service code are not replicated this way: every worker
opens the FIS engine (SQLite WAL on one machine, Redis across machines) behind a node-local
cache, and loads code from the shared repository directory through a node-side LRU.

Ops are typed (:data:`StateOp`: one frozen dataclass per kind); on the wire between
supervisor and workers (and in the durable store, for circuits) each is its JSON document
(:meth:`to_json`; :func:`decode_op` reads one back, ``ValueError`` if it is malformed)::

    CircuitOp           {"op": "circuit", "label": L, "psp": P, "service": S, "in_key": hex,
                         "expires": t, "out": [{"label", "next_hop", "key", "final", "strip"}],
                         "destination": ip | null}
    TeardownOp          {"op": "teardown", "label": L}
    RenewOp             {"op": "renew", "label": L, "expires": t}
    ServiceIdOp         {"op": "service_id", "id": N, "psp": P, "service": S,
                         "redirect_prefixes": [p]}
    ReleaseIdOp         {"op": "release_id", "id": N}
    DestinationOp       {"op": "destination", "prefix": p, "psp": P, "service": S,
                         "redirect_prefixes": [p]}
    EnableOp            {"op": "enable", "psp": P, "service": S}
    ReleaseDestinationOp {"op": "release_destination", "prefix": p}  (its proof lapsed)
    SyncedOp            {"op": "synced", "seq": N}  (end of a snapshot: the worker may now
                                                     read its TUN queue; it acks N)

The supervisor adds ``"seq"`` to a broadcast document (the worker acks it); it is framing, not
part of the op.

The master is durable: :meth:`SiteState.restore` rebuilds it at start from what
:class:`~pcsite_lite.daemon.store.SiteStore` holds. A snapshot is a generator
(:meth:`SiteState.iter_snapshot_ops`) that the supervisor streams to a worker in frames of
bounded size (``channel.py``), so neither the number nor the size of entries breaks it.
"""

from __future__ import annotations

import atexit
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, TypeVar, dataclass_transform, get_type_hints

from pcsite_lite import fis as fislib
from pcsite_lite.circuits import CircuitEntry, OutHopEntry
from pcsite_lite.pipeline import Pipeline
from pcsite_lite.sandbox import Budget
from pcsite_lite.site import Site
from pcsite_lite.verdicts import Verdict
from pcsock import wire

from .config import SiteConfig
from .store import Snapshot

__all__ = [
    "CircuitOp",
    "DestinationOp",
    "EnableOp",
    "ReleaseDestinationOp",
    "ReleaseIdOp",
    "RenewOp",
    "ServiceIdOp",
    "SiteState",
    "StateOp",
    "SyncedOp",
    "TeardownOp",
    "WorkerSite",
    "circuit_op",
    "decode_op",
    "fis_snapshot_path",
    "has_fis_snapshots",
]

NOOP_VERSION = "builtin-noop"
#: how long applying an op waits for a confined service's process to load the service
READY_WAIT_S = 2.0


# --- replication ops ----------------------------------------------------------------------

_T = TypeVar("_T")


def _get(doc: dict[str, Any], name: str, kind: type[_T], *, optional: bool = False) -> _T:
    """Field ``name`` of an op document, of type ``kind`` (ValueError if not)."""
    value = doc.get(name)
    if value is None and optional:
        return value  # type: ignore[return-value]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"op {doc.get('op')!r}: {name} must be {kind.__name__}, got {value!r}")
    return value


class _Op:
    """What every op has: its ``KIND`` (the document's ``"op"``), and -- for ops whose fields
    are plain ``int``/``float``/``str`` values -- the document's fields in field order."""

    __slots__ = ()
    KIND: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        return {"op": self.KIND, **{f.name: getattr(self, f.name) for f in fields(self)}}  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Any:
        hints = get_type_hints(cls)
        return cls(*(_get(doc, f.name, hints[f.name]) for f in fields(cls)))  # type: ignore[arg-type]


_OPS: dict[str, Any] = {}  #: "op" -> op class (:func:`decode_op`)


@dataclass_transform(frozen_default=True)
def _op(kind: str) -> Callable[[type[_T]], type[_T]]:
    """Declare a replication op: a frozen, slotted dataclass whose document's ``"op"`` is
    ``kind``, registered for :func:`decode_op`."""

    def declare(cls: type[_T]) -> type[_T]:
        cls.KIND = kind  # type: ignore[attr-defined]
        op = dataclass(frozen=True, slots=True)(cls)
        _OPS[kind] = op
        return op

    return declare


class _RegistrationOp(_Op):
    """A form-2/3 registration op: its key field first, then ``psp``, ``service`` and the
    ISP-approved ``redirect_prefixes`` (a JSON list)."""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        return {**_Op.to_json(self), "redirect_prefixes": list(self.redirect_prefixes)}  # type: ignore[attr-defined]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Any:
        key = fields(cls)[0]  # type: ignore[arg-type]
        redirect = doc.get("redirect_prefixes") or []
        if not isinstance(redirect, list | tuple) or not all(isinstance(p, str) for p in redirect):
            raise ValueError(f"op {cls.KIND!r}: redirect_prefixes must be a list of prefixes")
        return cls(_get(doc, key.name, get_type_hints(cls)[key.name]), _get(doc, "psp", str),  # type: ignore[call-arg]
                   _get(doc, "service", str), tuple(redirect))  # fmt: skip


@dataclass(frozen=True, slots=True)
class HopDoc:
    """One out hop of a :class:`CircuitOp` (keys as hex)."""

    label: int
    next_hop: str
    key: str | None
    final: bool
    strip: bool

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "next_hop": self.next_hop, "key": self.key,
                "final": self.final, "strip": self.strip}  # fmt: skip

    @classmethod
    def from_json(cls, doc: Any) -> HopDoc:
        if not isinstance(doc, dict):
            raise ValueError(f"an out hop must be an object, got {doc!r}")
        return cls(
            _get(doc, "label", int),
            _get(doc, "next_hop", str),
            _get(doc, "key", str, optional=True),
            bool(doc.get("final", False)),
            bool(doc.get("strip", False)),
        )

    def entry(self) -> OutHopEntry:
        key = None if not self.key else wire.HopKey(bytes.fromhex(self.key))
        return OutHopEntry(self.label, self.next_hop, key, self.final, self.strip)


@_op("circuit")
class CircuitOp(_Op):
    """Install (or replace) circuit hop ``label``."""

    label: int
    psp: str
    service: str
    in_key: str  #: hex
    expires: float
    destination: str | None
    out: tuple[HopDoc, ...]

    @classmethod
    def of(cls, c: CircuitEntry) -> CircuitOp:
        """The op that installs the installed hop ``c``."""
        out = tuple(
            HopDoc(h.label, h.next_hop, h.key.key.hex() if h.key else None, h.final, h.strip)
            for h in c.out_hops
        )
        return cls(c.in_label, c.psp, c.service, c.in_key.key.hex(), c.expires, c.destination,
                   out)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {"op": self.KIND, "label": self.label, "psp": self.psp, "service": self.service,
                "in_key": self.in_key, "expires": self.expires,
                "destination": self.destination,
                "out": [h.to_json() for h in self.out]}  # fmt: skip

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CircuitOp:
        out = doc.get("out")
        if not isinstance(out, list):
            raise ValueError("op 'circuit': out must be a list")
        return cls(_get(doc, "label", int), _get(doc, "psp", str), _get(doc, "service", str),
                   _get(doc, "in_key", str), _get(doc, "expires", float),
                   _get(doc, "destination", str, optional=True),
                   tuple(HopDoc.from_json(h) for h in out))  # fmt: skip

    def install(self, site: Site) -> None:
        """Install the hop in ``site``'s circuit table (its label held for its owner first:
        a replica installs what the master accepted)."""
        site.circuits.reserve(self.label, self.psp)
        site.circuits.install(
            self.label, psp=self.psp, service=self.service,
            in_key=bytes.fromhex(self.in_key), out_hops=[h.entry() for h in self.out],
            expires=self.expires, destination=self.destination,
        )  # fmt: skip


@_op("teardown")
class TeardownOp(_Op):
    """Remove circuit hop ``label``."""

    label: int


@_op("renew")
class RenewOp(_Op):
    """Circuit hop ``label`` now expires at ``expires``."""

    label: int
    expires: float


@_op("service_id")
class ServiceIdOp(_RegistrationOp):
    """Service ID ``id`` (form 2) runs ``psp``'s ``service``, which may tunnel into
    ``redirect_prefixes`` (ISP-approved)."""

    id: int
    psp: str
    service: str
    redirect_prefixes: tuple[str, ...] = ()


@_op("release_id")
class ReleaseIdOp(_Op):
    """Service ID ``id`` is free again."""

    id: int


@_op("destination")
class DestinationOp(_RegistrationOp):
    """Packets to ``prefix`` (form 3) run ``psp``'s ``service``, which may tunnel into
    ``redirect_prefixes``."""

    prefix: str
    psp: str
    service: str
    redirect_prefixes: tuple[str, ...] = ()


@_op("enable")
class EnableOp(_Op):
    """The owner re-enabled a service disabled for failing."""

    psp: str
    service: str


@_op("release_destination")
class ReleaseDestinationOp(_Op):
    """The registration of ``prefix`` ends (its ownership proof lapsed)."""

    prefix: str


@_op("synced")
class SyncedOp(_Op):
    """The end of a snapshot (``seq`` and ``ops`` are the supervisor's framing)."""


StateOp = (
    CircuitOp
    | TeardownOp
    | RenewOp
    | ServiceIdOp
    | ReleaseIdOp
    | DestinationOp
    | EnableOp
    | ReleaseDestinationOp
    | SyncedOp
)


def decode_op(doc: Any) -> StateOp:
    """The typed op of a JSON document (extra keys such as ``seq`` are ignored);
    ValueError if it is not one."""
    if not isinstance(doc, dict):
        raise ValueError(f"an op must be an object, got {type(doc).__name__}")
    cls = _OPS.get(doc.get("op"))  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown op {doc.get('op')!r}")
    op: StateOp = cls.from_json(doc)
    return op


def circuit_op(c: CircuitEntry) -> dict[str, Any]:
    """The replication op's document that installs circuit hop ``c`` (what the durable
    store keeps)."""
    return CircuitOp.of(c).to_json()


class SiteState:
    """The supervisor's master copy (a :class:`Site` without a pipeline) plus sign-up records."""

    def __init__(self, cfg: SiteConfig) -> None:
        self.cfg = cfg
        # the first usage interval starts now (not at 0, i.e. 1970)
        self.site = Site(cfg.name, cfg.public_ip, local_prefixes=cfg.isp_prefixes, now=time.time())
        self.claims: dict[str, dict[str, Any]] = {}  #: prefix -> validated ownership claim
        #: prefix -> (proof text or None, time the proof stops being valid or None)
        self.proofs: dict[str, tuple[str | None, float | None]] = {}
        self.reserved_service: dict[int, str] = {}  #: label -> service named at allocation

    @property
    def circuits(self) -> Any:
        return self.site.circuits

    def snapshot_ops(self) -> list[dict[str, Any]]:
        """Ops that rebuild a replica from nothing."""
        return list(self.iter_snapshot_ops())

    def iter_snapshot_ops(self) -> Iterator[dict[str, Any]]:
        """The same, one op at a time (what a worker is streamed when it starts)."""
        site = self.site
        for c in site.circuits:  # a copy of the table's values: changes meanwhile are safe
            yield circuit_op(c)  # (plain field reads: it cannot fail on an installed hop)
        for sid, r in list(site.service_ids.items()):
            yield ServiceIdOp(sid, r.psp, r.service, tuple(r.redirect_prefixes)).to_json()
        for pfx, r in list(site.destinations.items()):
            yield DestinationOp(pfx, r.psp, r.service, tuple(r.redirect_prefixes)).to_json()

    def restore(self, snap: Snapshot, log: Callable[[str], None]) -> dict[str, int]:
        """Rebuild the master copy from the durable store (at start); returns counts.

        A row the current code refuses (e.g. written by a bug) is logged and skipped: the
        site starts with everything else.
        """
        site = self.site
        n = {"circuits": 0, "reservations": 0, "service_ids": 0, "destinations": 0,
             "skipped": len(snap.skipped)}  # fmt: skip
        for why in snap.skipped:
            log(f"state store: skipped {why}")
        for op in snap.circuits:
            try:
                CircuitOp.from_json(op).install(site)
                n["circuits"] += 1
            except Exception as exc:
                n["skipped"] += 1
                log(f"state store: skipped circuit {op.get('label')}: {exc}")
        for label, psp, service, until in snap.reservations:
            try:
                site.circuits.reserve(label, psp, until=until)
                self.reserved_service[label] = service
                n["reservations"] += 1
            except Exception as exc:
                n["skipped"] += 1
                log(f"state store: skipped reservation {label}: {exc}")
        for sid, psp, service in snap.service_ids:
            try:
                red = snap.service_id_redirects.get(sid, [])
                site.register_service_id(sid, psp, service, redirect_prefixes=red)
                n["service_ids"] += 1
            except Exception as exc:
                n["skipped"] += 1
                log(f"state store: skipped service ID {sid}: {exc}")
        for prefix, psp, service, redirect, claim, proof, expires in snap.destinations:
            try:
                site.register_destination(prefix, psp, service, redirect_prefixes=redirect)
                self.claims[prefix] = {**claim, "prefix": prefix, "owner": psp,
                                       "service": service, "redirect_prefixes": redirect,
                                       "diverted": False}  # fmt: skip
                self.proofs[prefix] = (proof, expires)
                n["destinations"] += 1
            except Exception as exc:
                n["skipped"] += 1
                log(f"state store: skipped destination {prefix}: {exc}")
        return n


def fis_snapshot_path(cfg: SiteConfig, index: int) -> Path:
    """Where worker ``index`` keeps its FIS cache snapshot."""
    return Path(cfg.state_dir) / f"fis-cache-{index}.json"


def has_fis_snapshots(cfg: SiteConfig) -> bool:
    """Whether workers of an earlier run left FIS cache snapshots, or a compute node its
    saved copy of the site state (the site has run before)."""
    from pcsite_lite.statestream import SAVED_STATE

    state_dir = Path(cfg.state_dir)
    return any(state_dir.glob("fis-cache-*.json")) or (state_dir / SAVED_STATE).exists()


def node_id(cfg: SiteConfig, index: int | None) -> str:
    """``pkt.node_id`` of worker ``index``: ``"<worker>"`` at a one-machine site,
    ``"<cluster node>/<worker>"`` on a node of a cluster site."""
    worker = "0" if index is None else str(index)
    cluster = cfg.cluster
    return worker if cluster is None else f"{cluster.node}/{worker}"


def _resolver(cfg: SiteConfig, budget: Budget) -> Any:
    """Services from the repository, ticking against the site's ``budget``."""
    if cfg.repository is None:
        return None
    from pcsite_lite.repository import Repository, ServiceCache
    from pcsite_lite.runtime import load_from_repository, repository_resolver

    loader = partial(load_from_repository, isolation=cfg.services.policy(), budget=budget)
    cache = ServiceCache(Repository(cfg.repository), loader=loader)
    return repository_resolver(cache)


class WorkerSite:
    """A worker's replica: a :class:`Site` and the core :class:`Pipeline` over it.

    Services load from the repository (if configured) on first use; a service with no code at
    this site runs the shipped no-op when ``site.undeployed = "noop"`` (the default: packets
    follow the out hop the PSP installed) or is dropped as ``service_unavailable``.
    """

    #: seconds between snapshots of the FIS cache (written only when it changed)
    FIS_SNAPSHOT_INTERVAL = 1.0

    def __init__(
        self, cfg: SiteConfig, *, clock: Callable[[], float] = time.time, index: int | None = None
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.fis = fislib.CachedFIS(fislib.open_engine(cfg.fis_url))
        # worker ``index`` keeps its FIS cache in a snapshot file, so that a restart while the
        # FIS engine is away starts with the entries it served (re-validated once it is back)
        self._fis_snapshot = None if index is None else fis_snapshot_path(cfg, index)
        self._next_snapshot = 0.0
        self._fis_was_available = True
        if self._fis_snapshot is not None:
            self.fis.load_snapshot(self._fis_snapshot)
        budget = Budget(max_ns=int(cfg.services.packet_budget_ms * 1e6))
        self.site = Site(
            cfg.name,
            cfg.public_ip,
            fis=self.fis,
            local_prefixes=cfg.isp_prefixes,
            resolver=_resolver(cfg, budget),
            now=clock(),  # the first usage interval starts at start-up (not in 1970)
            replicate_caps=(
                cfg.services.replicate_per_packet,
                cfg.services.replicate_per_second,
            ),
            budget=budget,
            node_id=node_id(cfg, index),
        )
        self.pipeline = Pipeline(self.site, verify_ip_checksum=False)
        # confined service processes end with the worker (they also die with it: PDEATHSIG)
        atexit.register(self.site.runtime.close)
        #: runs a packet batch's confined services ahead, one message per service
        self.prefetch: Any = None
        if cfg.repository is not None and cfg.services.isolation == "process":
            from pcsite_lite.confine import Prefetcher

            self.prefetch = Prefetcher(self.site)
        self._noop: str | None = None
        if cfg.undeployed == "noop":
            from pcsite_lite.services import source

            self._noop = source("noop")

    def _ensure_code(self, psp: str, service: str) -> None:
        slot = self.site.runtime.slot(psp, service)  # resolves from the repository if it can
        if slot.code is None and self._noop is not None:
            self.site.deploy(psp, service, self._noop, version=NOOP_VERSION)
        wait_ready = getattr(slot.process, "wait_ready", None)
        if wait_ready is not None:
            # a confined service's process is starting: the op's ack, and so the control API
            # call that made it, waits for it (bounded), so the PSP can send at once
            try:
                wait_ready(READY_WAIT_S)
            except Exception as exc:  # its load failure: counted when packets come
                self.site.runtime.event(self.clock(), "load_failed", slot.name, str(exc))

    # --- replication
    def apply(self, op: StateOp | dict[str, Any]) -> None:
        """Apply one replication op (or its JSON document; see the module docstring)."""
        if isinstance(op, dict):
            op = decode_op(op)
        site = self.site
        match op:
            case CircuitOp():
                op.install(site)
                self._ensure_code(op.psp, op.service)
            case TeardownOp(label=label):
                c = site.circuits.get(label)
                if c is not None:
                    site.circuits.teardown(c.in_label, psp=c.psp)
            case RenewOp(label=label, expires=expires):
                c = site.circuits.get(label)
                if c is not None:
                    site.circuits.renew(c.in_label, psp=c.psp, expires=expires)
            case ServiceIdOp(id=sid, psp=psp, service=service):
                site.register_service_id(
                    sid, psp, service, redirect_prefixes=list(op.redirect_prefixes)
                )
                self._ensure_code(psp, service)
            case ReleaseIdOp(id=sid):
                reg = site.service_ids.get(sid)
                if reg is not None:
                    site.unregister_service_id(sid, reg.psp)
            case DestinationOp(prefix=prefix, psp=psp, service=service):
                site.register_destination(
                    prefix, psp, service, redirect_prefixes=op.redirect_prefixes
                )
                self._ensure_code(psp, service)
            case EnableOp(psp=psp, service=service):  # re-enabled after failing
                site.runtime.enable(psp, service)
            case ReleaseDestinationOp(prefix=prefix):
                reg = site.destinations.get(prefix)
                if reg is not None:
                    site.unregister_destination(prefix, reg.psp)
            case SyncedOp():
                pass  # the worker loop opens its TUN queue on this op (see worker.py)

    def refresh(self) -> None:
        """Between batches: roll out versions activated in the repository, expire circuits."""
        self.site.runtime.refresh()
        self.site.circuits.expire(self.clock())
        if self.fis.available != self._fis_was_available:  # tell the operator, once
            self._fis_was_available = self.fis.available
            if self.fis.available:
                print("FIS reachable again: cache re-validated", file=sys.stderr)
            else:
                print(f"serving from the FIS cache: {self.fis.unavailable_reason}", file=sys.stderr)
        self.save_fis_snapshot()

    def save_fis_snapshot(self, *, force: bool = False) -> None:
        """Write the FIS cache's snapshot if it changed: at most once per interval, and never
        more than 5 % of the worker's time (a big cache that changes all the time is written
        less often)."""
        now = time.monotonic()
        if self._fis_snapshot is None or not self.fis.dirty:
            return
        if force or now >= self._next_snapshot:
            try:
                self.fis.save_snapshot(self._fis_snapshot)
            except OSError as exc:  # a full or read-only state dir must not stop forwarding
                print(f"cannot save the FIS cache snapshot: {exc}", file=sys.stderr)
            took = time.monotonic() - now
            self._next_snapshot = now + max(self.FIS_SNAPSHOT_INTERVAL, 20 * took)

    def account(self) -> float:
        """After a batch of packets, before the worker blocks: close the CPU-metering window,
        so services are billed this thread's CPU time rather than wall time (see
        :meth:`Pipeline.account`). Returns the window's CPU/wall ratio."""
        return self.pipeline.account()

    def idle(self) -> None:
        """While no packet waits: poll the FIS change feed (keeps the cache fresh, so packets
        after a quiet spell do not pay for it)."""
        self.fis.refresh()

    def usage_json(self) -> dict[str, Any]:
        """Running counters of every service on this worker (``"psp/service" -> fields``)."""
        return {slot.name: slot.ctx.counters.as_dict() for slot in self.site.runtime.slots()}

    # --- data path
    def process(self, data: bytes) -> list[Verdict]:
        return self.pipeline.process(data, self.clock())
