"""The control API's backend over a running site (the daemon's supervisor process).

The HTTP layer (:mod:`.app`) authenticates, checks that a PSP only names itself, validates
JSON shapes and then calls one :class:`SiteBackend` method (all synchronous and short). The
backend owns the site state and enforces per-object ownership (a circuit label or service ID
owned by another PSP answers ``not_found``/``conflict``); every method raises
:class:`~.errors.ApiError` for a refused request.

Holds the master :class:`~pcsite_lite.daemon.state.SiteState`, writes the FIS through the
engine (with the authenticated PSP as writer, so the FIS enforces namespaces too), and hands
every data-plane change to ``broadcast`` so that the worker replicas follow.

**Durability.** With a ``store`` (:class:`~pcsite_lite.daemon.store.SiteStore`, the daemon
always passes one), every accepted change is committed there after it passed the master
copy's checks and *before* it is broadcast or acknowledged. If the store refuses the write,
the master copy is put back as it was and the caller gets 503 ``unavailable``: nothing is
acknowledged that a restart would forget. :meth:`SiteBackend.restore` rebuilds the master copy
at start.

**Proof expiry.** A destination registration holds until its ownership proof expires (the
claim's ``not_after`` or the earliest RRSIG expiration, whichever is first): :meth:`tick`
lapses it then, and :meth:`recheck_proofs` validates every stored proof again against the
current trust anchor (on a timer and on reload); a lapsed registration is removed from the
workers and the kernel's divert set, logged, and counted in
``pcsite_destinations_lapsed_total``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pcsite_lite import fis as fislib
from pcsite_lite.circuits import CircuitError, OutHopEntry
from pcsite_lite.daemon.state import (
    DestinationOp,
    EnableOp,
    ReleaseDestinationOp,
    ReleaseIdOp,
    RenewOp,
    ServiceIdOp,
    TeardownOp,
)
from pcsite_lite.metering import Counters
from pcsite_lite.metrics import MetricFamily, WorkerStats, render
from pcsock.wire import HopKey

from .errors import ApiError, Json

__all__ = ["SiteBackend"]

log = logging.getLogger("pcsite_lite.control")

_CIRCUIT_CODES = {
    "unknown_label": "not_found",
    "not_owner": "not_found",  # never reveal another PSP's labels
    "bad_hop": "bad_field",
    "bad_request": "bad_field",
    "table_full": "unavailable",
}


_REPO_CODES = {
    "bad_signature": "bad_signature",
    "unknown_psp": "not_configured",
    "not_found": "not_found",
    "no_active_version": "not_found",
    "version_exists": "conflict",
    "too_large": "body_too_large",
    "bad_name": "bad_field",
    "digest_mismatch": "internal",
    "corrupt_record": "internal",
    "load_failed": "service_rejected",
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


def _reinstall(table: Any, c: Any) -> None:
    """Put circuit hop ``c`` back as it was (undoing a change the store refused)."""
    table.install(c.in_label, psp=c.psp, service=c.service, in_key=c.in_key,
                  out_hops=c.out_hops, expires=c.expires, destination=c.destination)  # fmt: skip


def _proof_expiry(claim: dict[str, Json], proof: str | None) -> float | None:
    """When a registration's proof stops being valid: the claim's ``not_after`` or the
    earliest RRSIG expiration in the proof, whichever comes first."""
    times: list[float] = []
    na = claim.get("not_after")
    if isinstance(na, int | float):
        times.append(float(na))
    if proof:
        from pcsock import ownership

        try:
            for rrset in ownership.Proof(proof).rrsets():
                for rd in rrset:
                    exp = getattr(rd, "expiration", None)
                    if isinstance(exp, int):
                        times.append(float(exp))
        except ownership.OwnershipError:
            pass  # it validated a moment ago; the claim's time still bounds it
    return min(times) if times else None


def _put_back(
    prev: Any, register: Callable[..., Any], unregister: Callable[..., Any], key: Any, psp: str
) -> Callable[[], None]:
    """The undo of a form-2/3 registration under ``key`` that the store refused: the previous
    registration ``prev`` again, or none (``psp``'s new one removed)."""

    def undo() -> None:
        if prev is None:
            unregister(key, psp)
        else:
            register(key, prev.psp, prev.service, redirect_prefixes=prev.redirect_prefixes)

    return undo


class SiteBackend:
    """The site operations behind the control API's routes, for the daemon."""

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
        site_drops: Callable[[], list[tuple[str, str, int]]] = list,
        usage_export: Callable[[float], str] | None = None,
        store: Any = None,
        log_line: Callable[[str], None] = lambda msg: None,
    ) -> None:
        from pcsite_lite.daemon.state import SiteState

        self.cfg = cfg
        self.state = SiteState(cfg)
        self.store = store
        self._log = log_line
        self.lapsed = 0  #: destination registrations whose ownership proof lapsed
        self._broadcast = broadcast
        self._status = status
        self._worker_stats = worker_stats
        self._worker_usage = worker_usage
        self._site_drops = site_drops
        self._usage_export = usage_export
        self._kernel = kernel
        self._clock = clock
        self.fis: fislib.FISEngine = fislib.open_engine(cfg.fis_url)
        try:  # reach the store now: a bad URL or refused credentials fail at start
            self.fis.namespaces()
        except fislib.FISAuthError:
            raise
        except fislib.FISUnavailableError as exc:
            from pcsite_lite.daemon.state import has_fis_snapshots

            if not has_fis_snapshots(cfg):
                raise  # never reached before: most likely a wrong URL
            # a restart during an outage: workers serve from their cache snapshots
            log.warning("starting while the FIS is unreachable (writes answer 503): %s", exc)
        self._alloc_service = self.state.reserved_service  # label -> service at allocation
        self.repo: Any = None
        if cfg.repository is not None:
            from pcsite_lite.repository import Repository

            self.repo = Repository(cfg.repository)
            for p in cfg.control.psps:
                if p.signing_key is not None:
                    self.repo.register_psp(p.name, p.signing_key, replace=True)

    def reconfigure(self, cfg: Any) -> None:
        self.cfg = cfg
        self._save_credentials()

    def close(self) -> None:
        self.fis.close()
        if self.store is not None:
            self.store.close()

    def snapshot_ops(self) -> list[dict[str, Any]]:
        return self.state.snapshot_ops()

    def iter_snapshot_ops(self) -> Any:
        return self.state.iter_snapshot_ops()

    # --- durability
    def _durable(self, write: Callable[[Any], None], undo: Callable[[], object]) -> None:
        """Commit a change the master copy accepted; on failure put the master back (undo)
        and answer 503, so nothing is acknowledged that a restart would lose."""
        if self.store is None:
            return
        from pcsite_lite.daemon.store import StoreError

        try:
            write(self.store)
        except StoreError as exc:
            try:
                undo()
            except Exception as undo_exc:  # the write failed; say so, whatever undo did
                self._log(f"state store: cannot undo a refused change: {undo_exc}")
            self._log(f"state store refused a change: {exc}")
            raise ApiError("unavailable", f"the site's state store is unavailable: {exc}") from exc

    def _save_credentials(self) -> None:
        if self.store is None:
            return
        from pcsite_lite.daemon.store import StoreError

        c = self.cfg.control
        rows = [("isp", "isp", c.admin_token, None)]
        rows += [(p.name, "psp", p.token, p.signing_key.hex() if p.signing_key else None)
                 for p in c.psps]  # fmt: skip
        try:
            self.store.set_credentials(rows)
        except StoreError as exc:
            self._log(f"state store: cannot record the credentials table: {exc}")

    def restore(self) -> dict[str, int]:
        """Rebuild the master copy from the store (at start); counts of what came back."""
        if self.store is None:
            return {}
        now = self._clock()
        snap = self.store.load(now)
        counts = self.state.restore(snap, self._log)
        counts["expired"] = snap.expired
        configured = {p.name for p in self.cfg.control.psps}
        owners = {c.psp for c in self.state.circuits}
        owners |= {r.psp for r in self.state.site.service_ids.values()}
        owners |= {r.psp for _, r in self.state.site.destinations.items()}
        for psp in sorted(owners - configured):
            self._log(f"restored state of psp {psp!r}, which has no credential in the config")
        self._save_credentials()
        return counts

    def apply_divert(self) -> None:
        """Load the destination prefixes into the kernel's divert set (at start, on change)."""
        if self._kernel is None:
            return
        prefixes = sorted(p for p, _ in self.state.site.destinations.items())
        self._kernel.set_divert(prefixes)
        for p in prefixes:
            if p in self.state.claims:
                self.state.claims[p]["diverted"] = True

    # --- site
    def health(self) -> dict[str, Json]:
        st = self._status()
        workers = st.get("workers", [])
        up = sum(1 for w in workers if w.get("up"))
        return {"site": self.cfg.name, "ok": up > 0 or not workers, "workers_up": up,
                "workers": len(workers)}  # fmt: skip

    def status(self) -> dict[str, Json]:
        st = dict(self._status())
        site = self.state.site
        st["circuits"] = len(site.circuits)
        st["service_ids"] = {str(k): f"{r.psp}/{r.service}" for k, r in site.service_ids.items()}
        st["destinations"] = {p: f"{r.psp}/{r.service}" for p, r in site.destinations.items()}
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
            "destinations": (
                "Diverted destination prefixes",
                float(len(list(self.state.site.destinations.items()))),
            ),
        }
        workers = self._worker_stats()  # first: it samples the kernel's drop counters
        text = render(workers, self._usage_totals(), site=self.cfg.name, gauges=gauges,
                      site_drops=self._site_drops())  # fmt: skip
        lapsed = MetricFamily("pcsite_destinations_lapsed_total", "counter",
                              "Destination registrations removed because their ownership "
                              "proof expired or no longer validated")  # fmt: skip
        lapsed.add({"site": self.cfg.name}, self.lapsed)
        return text + "\n".join(lapsed.lines()) + "\n"

    # --- service repository
    def _repo(self) -> Any:
        if self.repo is None:
            raise ApiError("not_configured", "this site has no service repository configured")
        return self.repo

    def _repo_call(self, fn: Callable[[], Any]) -> Any:
        from pcsite_lite.repository import RepositoryError

        try:
            return fn()
        except RepositoryError as exc:
            code = _REPO_CODES.get(exc.reason, "bad_field")
            raise ApiError(code, f"{exc.reason}: {exc.detail}") from exc

    def upload_service(
        self, psp: str, service: str, version: str, code: bytes, signature: bytes
    ) -> Json:
        repo = self._repo()
        from pcsite_lite.confine import check_source

        # Nothing of a provider runs here: the signature first, then the rules, compile and
        # module code in a throw-away confined process; this process keeps bytes and verdicts.
        self._repo_call(lambda: repo.verify(psp, service, version, code, signature))
        verdict = check_source(code, f"{psp}/{service}@{version}")
        if verdict is not None:
            raise ApiError("service_rejected", f"{verdict[0]}: {verdict[1]}")
        sv = self._repo_call(lambda: repo.upload(psp, service, version, code, signature))
        return {"service": service, "version": sv.version, "digest": sv.digest, "size": sv.size}

    def activate_service(self, psp: str, service: str, version: str) -> Json:
        repo = self._repo()
        self._repo_call(lambda: repo.activate(psp, service, version))
        return {"service": service, "active": version}

    def list_services(self, psp: str) -> list[dict[str, Json]]:
        out: dict[str, dict[str, Json]] = {}
        site = self.state.site
        for c in site.circuits.owned_by(psp):
            out.setdefault(c.service, {"service": c.service})
        for r in [*site.service_ids.values(), *(r for _, r in site.destinations.items())]:
            if r.psp == psp:
                out.setdefault(r.service, {"service": r.service})
        if self.repo is not None:
            repo = self.repo
            for name in self._repo_call(lambda: repo.services(psp)):
                versions = repo.versions(psp, name)
                out[name] = {
                    "service": name,
                    "active": repo.active(psp, name),
                    "versions": [v.version for v in versions],
                }
        return [out[k] for k in sorted(out)]

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
        self._durable(lambda st: st.put_reservation(label, psp, service, now + lifetime),
                      lambda: self.state.circuits.teardown(label, psp=psp))  # fmt: skip
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
            out_hops: list[OutHopEntry] = []
            for o in outs:
                if not isinstance(o, dict) or not {"label", "next_hop"} <= set(o):
                    raise ApiError("bad_field", "each out hop is {label, next_hop, key}")
                key = HopKey(_hexkey(o["key"], "out key")) if o.get("key") is not None else None
                out_hops.append(OutHopEntry(label=o["label"], next_hop=o["next_hop"], key=key))
            if deliver is not None:
                out_hops.append(OutHopEntry(label=label, next_hop=deliver, key=None, final=True,
                                       strip=strip))  # fmt: skip
            service = hop.get("service") or self._reserved_service(psp, label)
            prev = self.state.circuits.get(label)
            held = self._held(label) if prev is None else None
            c = self.state.circuits.install(
                label, psp=psp, service=service, in_key=in_key, out_hops=out_hops,
                expires=now + lifetime, destination=hop.get("destination") or deliver, now=now,
            )  # fmt: skip
        except CircuitError as exc:
            raise _circuit_error(exc) from exc
        from pcsite_lite.daemon.state import circuit_op

        op = circuit_op(c)
        self._durable(lambda st: st.put_circuit(op),
                      lambda: self._undo_install(label, psp, prev, held))  # fmt: skip
        self._alloc_service.pop(label, None)
        self._broadcast(op)
        return self._view(label, psp)

    def _held(self, label: int) -> tuple[str, str, float] | None:
        """The stored reservation of ``label`` (to restore it if a change is undone)."""
        if self.store is None:
            return None
        from pcsite_lite.daemon.store import StoreError

        try:
            held: tuple[str, str, float] | None = self.store.reservation(label)
        except StoreError as exc:
            raise ApiError("unavailable", f"the site's state store is unavailable: {exc}") from exc
        return held

    def _undo_install(self, label: int, psp: str, prev: Any, held: Any) -> None:
        table = self.state.circuits
        if prev is not None:
            _reinstall(table, prev)
        else:
            table.teardown(label, psp=psp)
            table.reserve(label, psp, until=held[2] if held else self._clock() + 60.0)

    def _reserved_service(self, psp: str, label: int) -> str:
        existing = self.state.circuits.get(label)
        if existing is not None and existing.psp == psp:
            return existing.service
        return self._alloc_service.get(label, "default")

    def renew_circuit(self, psp: str, label: int, lifetime: float) -> dict[str, Json]:
        old = self.state.circuits.get(label)
        old_expires = old.expires if old is not None else 0.0
        try:
            c = self.state.circuits.renew(label, psp=psp, expires=self._clock() + lifetime)
        except CircuitError as exc:
            raise _circuit_error(exc) from exc
        table = self.state.circuits
        self._durable(lambda st: st.renew_circuit(label, c.expires),
                      lambda: table.renew(label, psp=psp, expires=old_expires))  # fmt: skip
        self._broadcast(RenewOp(label, c.expires).to_json())
        return self._view(label, psp)

    def teardown_circuit(self, psp: str, label: int) -> None:
        prev = self.state.circuits.get(label)
        held = self._held(label) if prev is None else None
        try:
            self.state.circuits.teardown(label, psp=psp)
        except CircuitError as exc:
            raise _circuit_error(exc) from exc

        def undo() -> None:
            if prev is not None:
                self.state.circuits.reserve(label, psp)
                _reinstall(self.state.circuits, prev)
            else:
                until = held[2] if held else self._clock() + 60.0
                self.state.circuits.reserve(label, psp, until=until)

        self._durable(lambda st: st.delete_circuit(label), undo)
        self._alloc_service.pop(label, None)
        self._broadcast(TeardownOp(label).to_json())

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
        except fislib.FISUnavailableError as exc:  # the platform's fault: retry later
            raise ApiError("unavailable", str(exc)) from exc
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

    def isp_fis_lpm_put(self, table: str, prefix: str, value: Json) -> None:
        self._fis(lambda: self.fis.lpm_put(fislib.ISP, table, prefix, value, writer=fislib.ISP))

    # --- service status
    def enable_service(self, psp: str, service: str) -> Json:
        """Re-enable the PSP's service on every worker (after it was disabled for failing)."""
        if not any(s["service"] == service for s in self.list_services(psp)):
            raise ApiError("not_found", f"no service {service!r} at this site")
        self._broadcast(EnableOp(psp, service).to_json())
        return {"service": service, "status": "active"}

    # --- forms 2 and 3
    def _reg(self, fn: Callable[[], Any]) -> Any:
        from pcsite_lite.site import RegistrationError

        try:
            return fn()
        except RegistrationError as exc:
            code = {"not_owner": "not_found"}.get(exc.code, exc.code)
            raise ApiError(code, f"{exc.code}: {exc.detail}") from exc

    def register_service_id(
        self,
        psp: str,
        service: str,
        service_id: int | None,
        *,
        redirect_prefixes: list[str] | None = None,
    ) -> Json:
        site = self.state.site
        if service_id is None:
            service_id = next(i for i in range(1, 1 << 24) if i not in site.service_ids)
        sid = service_id
        red = list(redirect_prefixes or [])
        prev = site.service_ids.get(sid)
        self._reg(lambda: site.register_service_id(sid, psp, service, redirect_prefixes=red))
        undo = _put_back(prev, site.register_service_id, site.unregister_service_id, sid, psp)
        self._durable(lambda st: st.put_service_id(sid, psp, service, red), undo)
        self._broadcast(ServiceIdOp(sid, psp, service, tuple(red)).to_json())
        return {"service_id": sid, "service": service, "redirect_prefixes": red}

    def release_service_id(self, psp: str, service_id: int) -> None:
        site = self.state.site
        prev = site.service_ids.get(service_id)
        self._reg(lambda: site.unregister_service_id(service_id, psp))
        assert prev is not None  # (its redirect prefixes come back too if the store refuses)
        sid = service_id
        undo = _put_back(prev, site.register_service_id, site.unregister_service_id, sid, psp)
        self._durable(lambda st: st.delete_service_id(sid), undo)
        self._broadcast(ReleaseIdOp(service_id).to_json())

    def register_destination(
        self,
        psp: str,
        service: str,
        prefix: str,
        claim: dict[str, Json],
        *,
        redirect_prefixes: list[str] | None = None,
        proof: str | None = None,
    ) -> dict[str, Json]:
        site = self.state.site
        redirect = list(redirect_prefixes or [])
        prev = site.destinations.get(prefix)
        canon = self._reg(
            lambda: site.register_destination(prefix, psp, service, redirect_prefixes=redirect)
        ).key
        expires = _proof_expiry(claim, proof)
        reg = {**claim, "prefix": canon, "owner": psp, "service": service, "diverted": False,
               "redirect_prefixes": list(redirect)}  # fmt: skip
        undo = _put_back(prev, site.register_destination, site.unregister_destination, canon, psp)
        self._durable(lambda st: st.put_destination(canon, psp, service, redirect, dict(claim),
                                                    proof, expires), undo)  # fmt: skip
        self.state.claims[canon] = reg
        self.state.proofs[canon] = (proof, expires)
        self._broadcast(DestinationOp(canon, psp, service, tuple(redirect)).to_json())
        if self._kernel is not None:
            self.apply_divert()
        return dict(reg)

    # --- proof expiry
    def _lapse(self, prefix: str, why: str) -> None:
        """Remove a destination registration whose ownership no longer holds."""
        site = self.state.site
        reg = site.destinations.get(prefix)
        if reg is not None:
            site.unregister_destination(prefix, reg.psp)
        self.state.claims.pop(prefix, None)
        self.state.proofs.pop(prefix, None)
        if self.store is not None:
            from pcsite_lite.daemon.store import StoreError

            try:
                self.store.delete_destination(prefix)
            except StoreError as exc:  # it lapses again at the next start
                self._log(f"state store: cannot delete lapsed destination {prefix}: {exc}")
        self.lapsed += 1
        owner = f"{reg.psp}/{reg.service}" if reg is not None else "?"
        self._log(f"destination {prefix} ({owner}) lapsed: {why}")
        self._broadcast(ReleaseDestinationOp(prefix).to_json())
        if self._kernel is not None:
            self.apply_divert()

    def tick(self, now: float, *, circuits: bool = True) -> float | None:
        """Lapse registrations whose proof expired; with ``circuits``, also forget expired
        circuits (master copy and store). Returns the next proof expiry (the caller sleeps
        until then at most)."""
        for prefix, (_, expires) in list(self.state.proofs.items()):
            if expires is not None and expires <= now:
                self._lapse(prefix, f"ownership proof expired at {expires:.0f}")
        if circuits and self.state.circuits.expire(now) and self.store is not None:
            from pcsite_lite.daemon.store import StoreError

            try:
                self.store.expire(now)
            except StoreError as exc:
                self._log(f"state store: cannot forget expired circuits: {exc}")
        pending = [e for _, e in self.state.proofs.values() if e is not None]
        return min(pending) if pending else None

    def recheck_proofs(self) -> int:
        """Validate every stored proof again (current trust anchor, current time); lapse the
        ones that fail. Returns how many lapsed."""
        from pcsock import ownership

        anchor = self.cfg.control.trust_anchor
        n = 0
        for prefix, (proof, _) in list(self.state.proofs.items()):
            reg = self.state.site.destinations.get(prefix)
            if reg is None or proof is None:
                continue
            if anchor is None:
                self._lapse(prefix, "the site has no trust anchor any more")
                n += 1
                continue
            try:
                ownership.validate_proof(proof, prefix, anchor, self._clock(), owner=reg.psp,
                                         service=reg.service)  # fmt: skip
            except ownership.OwnershipError as exc:
                self._lapse(prefix, f"ownership proof no longer valid: {exc.reason}: {exc.detail}")
                n += 1
        return n

    def list_destinations(self, psp: str) -> list[dict[str, Json]]:
        return [dict(d) for d in self.state.claims.values() if d["owner"] == psp]

    # --- metering
    def usage_export(self, since: float) -> dict[str, Json]:
        """The site usage ledger's records from ``since`` on (see pcsite_lite.daemon.usage)."""
        from pcsite_lite.billing.ledger import LedgerError

        if self._usage_export is None:
            raise ApiError("not_configured", "this site keeps no usage ledger")
        try:
            export = self._usage_export(since)
        except LedgerError as exc:
            raise ApiError("unavailable", f"usage ledger: {exc}") from None
        return {"site": self.cfg.name, "since": since, "export": export}

    def usage(self, psp: str) -> dict[str, Json]:
        out = {service: c.as_dict() for (p, service), c in self._usage_totals().items() if p == psp}
        return {"psp": psp, "site": self.cfg.name, "services": out}
