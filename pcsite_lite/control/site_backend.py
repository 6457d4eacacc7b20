"""The control API's backend over a running site (the daemon's supervisor process).

Holds the master :class:`~pcsite_lite.daemon.state.SiteState`, writes the FIS through the
engine (with the authenticated PSP as writer, so the FIS enforces namespaces too), and hands
every data-plane change to ``broadcast`` so that the worker replicas follow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pcsite_lite import fis as fislib
from pcsite_lite.circuits import CircuitError, OutHop
from pcsite_lite.metering import Counters
from pcsite_lite.metrics import WorkerStats, render
from pcsock.wire import HopKey

from .backend import Json
from .errors import ApiError

__all__ = ["SiteBackend"]

_CIRCUIT_CODES = {
    "unknown_label": "not_found",
    "not_owner": "not_found",  # never reveal another PSP's labels
    "bad_hop": "bad_field",
    "bad_request": "bad_field",
    "table_full": "unavailable",
}


def _circuit_error(exc: CircuitError) -> ApiError:
    return ApiError(_CIRCUIT_CODES.get(exc.code, "bad_request"), f"{exc.code}: {exc.detail}")


def _hexkey(v: Json, what: str) -> bytes:
    try:
        key = bytes.fromhex(v) if isinstance(v, str) else b""
    except ValueError:
        key = b""
    if not 16 <= len(key) <= 32:
        raise ApiError("bad_field", f"{what} must be 16-32 bytes as hex")
    return key


class SiteBackend:
    """Implements :class:`~pcsite_lite.control.backend.ControlBackend` for the daemon."""

    def __init__(
        self,
        cfg: Any,
        *,
        broadcast: Callable[[dict[str, Any]], None] = lambda op: None,
        status: Callable[[], dict[str, Any]] = dict,
        worker_stats: Callable[[], dict[int, WorkerStats]] = dict,
        worker_usage: Callable[[], list[dict[str, Any]]] = list,
        kernel: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from pcsite_lite.daemon.state import SiteState

        self.cfg = cfg
        self.state = SiteState(cfg)
        self._broadcast = broadcast
        self._status = status
        self._worker_stats = worker_stats
        self._worker_usage = worker_usage
        self._kernel = kernel
        self._clock = clock
        self.fis: fislib.FISEngine = fislib.open_engine(cfg.fis_url)
        self._alloc_service: dict[int, str] = {}  # label -> service named at allocation

    def reconfigure(self, cfg: Any) -> None:
        self.cfg = cfg

    def close(self) -> None:
        self.fis.close()

    def snapshot_ops(self) -> list[dict[str, Any]]:
        return self.state.snapshot_ops()

    # --- site
    def health(self) -> dict[str, Json]:
        st = self._status()
        workers = st.get("workers", [])
        up = sum(1 for w in workers if w.get("up"))
        return {"site": self.cfg.name, "ok": up > 0 or not workers, "workers_up": up,
                "workers": len(workers)}  # fmt: skip

    def status(self) -> dict[str, Json]:
        st = dict(self._status())
        st["circuits"] = len(self.state.circuits)
        st["service_ids"] = len(self.state.service_ids)
        st["destinations"] = sorted(self.state.destinations)
        return st

    def _usage_totals(self) -> dict[tuple[str, str], Counters]:
        totals: dict[tuple[str, str], Counters] = {}
        for per_worker in self._worker_usage():
            for name, doc in per_worker.items():
                psp, _, service = name.partition("/")
                c = totals.setdefault((psp, service), Counters())
                c.add(Counters(**{k: int(v) for k, v in doc.items()}))
        return totals

    def metrics_text(self) -> str:
        gauges = {
            "circuits": ("Installed circuit hops", float(len(self.state.circuits))),
            "destinations": ("Diverted destination prefixes", float(len(self.state.destinations))),
        }
        return render(self._worker_stats(), self._usage_totals(), site=self.cfg.name,
                      gauges=gauges)  # fmt: skip

    # --- service repository
    def upload_service(self, psp: str, service: str, code: bytes, signature: bytes) -> Json:
        raise ApiError("not_configured", "this site has no service repository configured")

    def activate_service(self, psp: str, service: str, version: str) -> Json:
        raise ApiError("not_configured", "this site has no service repository configured")

    def list_services(self, psp: str) -> list[dict[str, Json]]:
        names = {c.service for c in self.state.circuits.owned_by(psp)}
        names |= {s for p, s in self.state.service_ids.values() if p == psp}
        return [{"service": n} for n in sorted(names)]

    # --- circuits
    def _view(self, label: int, psp: str) -> dict[str, Json]:
        c = self.state.circuits.get(label)
        if c is None or c.psp != psp:
            raise ApiError("not_found", f"no circuit hop {label}")
        return {
            "label": c.in_label,
            "service": c.service,
            "expires": c.expires,
            "destination": c.destination,
            "out": [{"label": h.label, "next_hop": h.next_hop, "final": h.final,
                     "strip": h.strip} for h in c.out_hops],
        }  # fmt: skip

    def allocate_circuit(self, psp: str, service: str, lifetime: float) -> dict[str, Json]:
        now = self._clock()
        try:
            label = self.state.circuits.allocate(psp, now=now, hold=lifetime)
        except CircuitError as exc:
            raise _circuit_error(exc) from exc
        self._alloc_service[label] = service
        return {"label": label, "service": service, "expires": now + lifetime,
                "site": self.cfg.public_ip}  # fmt: skip

    def install_hop(self, psp: str, label: int, hop: dict[str, Json]) -> dict[str, Json]:
        now = self._clock()
        in_key = _hexkey(hop["in_key"], "in_key")
        outs = hop["out"]
        deliver = hop.get("deliver")
        strip = bool(hop.get("strip", False))
        lifetime = float(hop.get("lifetime", 300.0))
        if not 0 < lifetime <= 7 * 24 * 3600:
            raise ApiError("bad_field", "lifetime must be in (0, 604800] seconds")
        try:
            out_hops: list[OutHop] = []
            for o in outs:
                if not isinstance(o, dict) or not {"label", "next_hop"} <= set(o):
                    raise ApiError("bad_field", "each out hop is {label, next_hop, key}")
                key = HopKey(_hexkey(o["key"], "out key")) if o.get("key") is not None else None
                out_hops.append(OutHop(label=o["label"], next_hop=o["next_hop"], key=key))
            if deliver is not None:
                out_hops.append(OutHop(label=label, next_hop=deliver, key=None, final=True,
                                       strip=strip))  # fmt: skip
            service = hop.get("service") or self._reserved_service(psp, label)
            c = self.state.circuits.install(
                label, psp=psp, service=service, in_key=in_key, out_hops=out_hops,
                expires=now + lifetime, destination=deliver, now=now,
            )  # fmt: skip
        except CircuitError as exc:
            raise _circuit_error(exc) from exc
        self._alloc_service.pop(label, None)
        from pcsite_lite.daemon.state import circuit_op

        self._broadcast(circuit_op(c))
        return self._view(label, psp)

    def _reserved_service(self, psp: str, label: int) -> str:
        existing = self.state.circuits.get(label)
        if existing is not None and existing.psp == psp:
            return existing.service
        return self._alloc_service.get(label, "default")

    def renew_circuit(self, psp: str, label: int, lifetime: float) -> dict[str, Json]:
        try:
            c = self.state.circuits.renew(label, psp=psp, expires=self._clock() + lifetime)
        except CircuitError as exc:
            raise _circuit_error(exc) from exc
        self._broadcast({"op": "renew", "label": label, "expires": c.expires})
        return self._view(label, psp)

    def teardown_circuit(self, psp: str, label: int) -> None:
        try:
            self.state.circuits.teardown(label, psp=psp)
        except CircuitError as exc:
            raise _circuit_error(exc) from exc
        self._broadcast({"op": "teardown", "label": label})

    def get_circuit(self, psp: str, label: int) -> dict[str, Json]:
        return self._view(label, psp)

    def list_circuits(self, psp: str) -> list[dict[str, Json]]:
        return [self._view(c.in_label, psp) for c in self.state.circuits.owned_by(psp)]

    # --- FIS
    def _ns(self, psp: str, service: str) -> str:
        try:
            return fislib.namespace(psp, service)
        except fislib.FISError as exc:
            raise ApiError("bad_request", str(exc)) from exc

    def _fis(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except fislib.FISPermissionError as exc:
            raise ApiError("forbidden", str(exc)) from exc
        except fislib.FISError as exc:
            raise ApiError("bad_field", str(exc)) from exc

    def fis_put(self, psp: str, service: str, key: str, value: Json) -> None:
        ns = self._ns(psp, service)
        self._fis(lambda: self.fis.put(ns, key, value, writer=psp))

    def fis_get(self, psp: str, service: str, key: str) -> Json:
        ns = self._ns(psp, service)
        v = self._fis(lambda: self.fis.get(ns, key))
        if v is None:
            raise ApiError("not_found", f"no FIS key {key!r}")
        return v

    def fis_delete(self, psp: str, service: str, key: str) -> None:
        ns = self._ns(psp, service)
        if not self._fis(lambda: self.fis.delete(ns, key, writer=psp)):
            raise ApiError("not_found", f"no FIS key {key!r}")

    def fis_lpm_put(self, psp: str, service: str, table: str, prefix: str, value: Json) -> None:
        ns = self._ns(psp, service)
        self._fis(lambda: self.fis.lpm_put(ns, table, prefix, value, writer=psp))

    def fis_lpm_delete(self, psp: str, service: str, table: str, prefix: str) -> None:
        ns = self._ns(psp, service)
        if not self._fis(lambda: self.fis.lpm_delete(ns, table, prefix, writer=psp)):
            raise ApiError("not_found", f"no prefix {prefix} in {table}")

    def isp_fis_put(self, namespace: str, key: str, value: Json) -> None:
        self._fis(lambda: self.fis.put(fislib.ISP, key, value, writer=fislib.ISP))

    # --- forms 2 and 3
    def register_service_id(self, psp: str, service: str, service_id: int | None) -> Json:
        ids = self.state.service_ids
        if service_id is None:
            service_id = next(i for i in range(1, 1 << 24) if i not in ids)
        owner = ids.get(service_id)
        if owner is not None and owner != (psp, service):
            raise ApiError("conflict", f"service ID {service_id} is taken")
        ids[service_id] = (psp, service)
        self._broadcast({"op": "service_id", "id": service_id, "psp": psp, "service": service})
        return {"service_id": service_id, "service": service}

    def release_service_id(self, psp: str, service_id: int) -> None:
        owner = self.state.service_ids.get(service_id)
        if owner is None or owner[0] != psp:
            raise ApiError("not_found", f"no service ID {service_id}")
        del self.state.service_ids[service_id]
        self._broadcast({"op": "release_id", "id": service_id})

    def register_destination(
        self, psp: str, service: str, prefix: str, claim: dict[str, Json]
    ) -> dict[str, Json]:
        existing = self.state.destinations.get(prefix)
        if existing is not None and existing["owner"] != psp:
            raise ApiError("conflict", f"{prefix} is registered by another PSP")
        reg = {**claim, "prefix": prefix, "owner": psp, "service": service, "diverted": False}
        self.state.destinations[prefix] = reg
        self._broadcast({"op": "destination", "prefix": prefix, "psp": psp, "service": service})
        if self._kernel is not None:
            self._kernel.set_divert(sorted(self.state.destinations))
            reg["diverted"] = True
        return dict(reg)

    def list_destinations(self, psp: str) -> list[dict[str, Json]]:
        return [dict(d) for d in self.state.destinations.values() if d["owner"] == psp]

    # --- metering
    def usage(self, psp: str) -> dict[str, Json]:
        out = {service: c.as_dict() for (p, service), c in self._usage_totals().items() if p == psp}
        return {"psp": psp, "site": self.cfg.name, "services": out}
