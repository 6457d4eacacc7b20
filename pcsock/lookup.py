"""A PSP's circuit lookup service (paper §2.2: "The circuit creation is completed by the
interaction between the sender and the service provider which operates a lookup service").

A reference implementation a PSP can run (``pcsock lookupd``). For each request it

1. chooses the sites — the ones the sender named, in order, or else the ``hops`` sites with
   the lowest measured control-plane round-trip time (:meth:`CircuitBroker.measure`);
2. asks every on-path site for an incoming label (labels are hop-local, so sites pick them),
   all sites in parallel;
3. draws a fresh 16-byte hop key per hop and installs every hop (in label + in key -> next
   site's label, address and key; the last hop delivers to the destination), in parallel;
4. hands the sender the first site's address, label and key.

Circuits live ``lifetime`` seconds unless renewed; teardown removes every hop. If any step
fails, the hops already made are torn down and the sender gets a :class:`LookupServiceError`.

Sender <-> lookup service protocol: one JSON object per line over TCP (a connection may carry
several requests)::

    -> {"op": "create", "destination": "198.18.4.2", "service": "srcroute",
        "source": "198.18.1.2", "sites": ["C2", "C3"], "lifetime": 60}
    <- {"ok": true, "circuit": {"id": "c1f0...", "first_hop": "198.18.2.1", "port": 6253,
        "label": 3735928559, "key": "<hex>", "expires": 1795632751.0, "sites": ["C2","C3"],
        "service": "srcroute", "destination": "198.18.4.2", "psp": "acme"}}
    -> {"op": "renew", "id": "c1f0...", "lifetime": 60}     <- {"ok": true, "circuit": {...}}
    -> {"op": "teardown", "id": "c1f0..."}                  <- {"ok": true}
    <- {"ok": false, "error": {"code": "unknown_site", "message": "..."}}

Error codes: ``bad_request``, ``unknown_site``, ``unknown_service`` (a chosen site runs no
active version of the service: refused at setup, not left to drop every packet as
``service_unavailable``), ``unknown_circuit``, ``no_sites``, ``site_refused`` (a site's control
API said no; its code is in the message), ``unavailable``.

Sites are reached through :class:`SiteControl` objects: :class:`HttpSiteControl` calls a
site daemon's control API (:mod:`pcsock.control`); the site package's
``pcsite_lite.table_control.TableSiteControl`` drives a circuit table in process (the
simulator, tests).
"""

from __future__ import annotations

import errno
import json
import secrets
import socket as _socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from pcsock import wire
from pcsock.control import ControlClient, ControlError, OutHop
from pcsock.session import Circuit

__all__ = [
    "BrokerClient",
    "CircuitBroker",
    "HttpSiteControl",
    "LookupClient",
    "LookupServer",
    "LookupServiceError",
    "SiteControl",
    "SiteEntry",
    "circuit_from_json",
    "circuit_to_json",
    "find_lookup",
]


#: accept() errors that mean "out of descriptors/memory right now"
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class LookupServiceError(OSError):
    """The lookup service refused or failed; ``code`` is one of the codes above."""

    def __init__(self, code: str, message: str = "") -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}" if message else code)


# --- site control ----------------------------------------------------------------------------


class SiteControl(Protocol):
    """What the broker needs from one site's control plane."""

    def allocate(self, service: str, lifetime: float) -> int: ...

    def install(
        self,
        label: int,
        *,
        service: str,
        in_key: bytes,
        out: tuple[int, str, bytes] | None,
        deliver: str | None,
        lifetime: float,
        destination: str | None = None,
    ) -> None: ...

    def renew(self, label: int, lifetime: float) -> None: ...

    def teardown(self, label: int) -> None: ...

    def ping(self) -> None: ...

    # Optional: ``services() -> set[str] | None``, the services with an active version at the
    # site (for this PSP), None if it cannot tell. A control that has it lets the broker
    # refuse unknown services at setup.


class HttpSiteControl:
    """A site's control API over HTTP (the daemon's :class:`ControlClient`)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str,
        psp: str,
        timeout: float = 5.0,
        ca_file: str | None = None,
    ) -> None:
        self.client = ControlClient(
            base_url, token=token, psp=psp, timeout=timeout, ca_file=ca_file
        )

    def _call(self, fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except ControlError as exc:
            raise LookupServiceError("site_refused", f"{exc.code}: {exc.message}") from exc

    def allocate(self, service: str, lifetime: float) -> int:
        return int(self._call(self.client.allocate_circuit, service, lifetime)["label"])

    def install(
        self,
        label: int,
        *,
        service: str,
        in_key: bytes,
        out: tuple[int, str, bytes] | None,
        deliver: str | None,
        lifetime: float,
        destination: str | None = None,
    ) -> None:
        # The control API takes the circuit's final destination on the last hop only
        # (``deliver``), so receiver-first precedence applies at the last site there.
        hops = [OutHop(out[0], out[1], out[2])] if out else None
        self._call(
            self.client.install_hop, label, in_key=in_key, out=hops, deliver=deliver,
            lifetime=lifetime,
        )  # fmt: skip

    def renew(self, label: int, lifetime: float) -> None:
        self._call(self.client.renew_circuit, label, lifetime)

    def teardown(self, label: int) -> None:
        self._call(self.client.teardown_circuit, label)

    def ping(self) -> None:
        self._call(self.client.health)

    def services(self) -> set[str] | None:
        """The PSP's services that have an active version at the site, or None when the site
        lists no deployed code at all (no repository, or nothing uploaded yet): such a site
        runs every circuit by its ``undeployed`` policy (docs/daemon.md), so it cannot tell."""
        listed = [s for s in self._call(self.client.list_services) if isinstance(s, dict)]
        if not any("versions" in s for s in listed):
            return None
        return {str(s["service"]) for s in listed if s.get("active")}


# --- the broker ------------------------------------------------------------------------------


@dataclass
class SiteEntry:
    """A site the PSP has deployed its service(s) on."""

    name: str
    address: str  #: public IP (data plane)
    control: SiteControl
    port: int = wire.UDP_PORT
    rtt: float | None = None  #: measured control-plane RTT (seconds)


@dataclass
class _Record:
    circuit: Circuit
    hops: list[tuple[SiteEntry, int]]  # (site, in label) in path order
    lifetime: float
    service: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class CircuitBroker:
    """Creates, renews and tears down circuits over a set of sites (thread-safe)."""

    def __init__(
        self,
        psp: str,
        sites: Sequence[SiteEntry],
        *,
        clock: Callable[[], float] = time.time,
        default_hops: int = 1,
        max_lifetime: float = 3600.0,
    ) -> None:
        self.psp = psp
        self.sites = {s.name: s for s in sites}
        self.clock = clock
        self.default_hops = default_hops
        self.max_lifetime = max_lifetime
        self._circuits: dict[str, _Record] = {}
        self._known_services: dict[tuple[str, str], float] = {}  # (site, service) -> until
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(2, min(16, len(self.sites))))

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def measure(self, *, rounds: int = 3) -> dict[str, float]:
        """Measure every site's control-plane RTT (best of ``rounds``); unreachable = inf."""
        out = {}
        for s in self.sites.values():
            best = float("inf")
            for _ in range(rounds):
                t0 = time.perf_counter()
                try:
                    s.control.ping()
                except (OSError, LookupServiceError):
                    break
                best = min(best, time.perf_counter() - t0)
            s.rtt = best
            out[s.name] = best
        return out

    def choose(self, sites: Sequence[str] | None, hops: int | None = None) -> list[SiteEntry]:
        """The named sites in order, or the ``hops`` lowest-RTT sites."""
        if sites:
            missing = [n for n in sites if n not in self.sites]
            if missing:
                raise LookupServiceError("unknown_site", f"no site {missing[0]!r} (have "
                                   f"{', '.join(sorted(self.sites))})")  # fmt: skip
            return [self.sites[n] for n in sites]
        if not self.sites:
            raise LookupServiceError("no_sites", "this PSP has no sites")
        ranked = sorted(
            self.sites.values(),
            key=lambda s: (float("inf") if s.rtt is None else s.rtt, s.name),
        )
        return ranked[: hops or self.default_hops]

    def create(
        self,
        *,
        destination: str,
        service: str,
        source: str = "",
        sites: Sequence[str] | None = None,
        lifetime: float = 60.0,
        hops: int | None = None,
    ) -> Circuit:
        """Make a circuit and return what the sender needs."""
        try:
            wire.ip2int(destination)
        except wire.WireError as exc:
            raise LookupServiceError("bad_request", f"destination: {exc}") from exc
        if not service:
            raise LookupServiceError("bad_request", "service required")
        lifetime = min(max(float(lifetime), 1.0), self.max_lifetime)
        path = self.choose(sites, hops)
        self._check_service(path, service)
        labels: list[Any] = [None] * len(path)
        try:
            futs = [self._pool.submit(s.control.allocate, service, lifetime) for s in path]
            errors: list[BaseException] = []
            for i, f in enumerate(futs):
                try:
                    labels[i] = f.result()
                except BaseException as exc:
                    errors.append(exc)
            if errors:
                raise errors[0]
            keys = [secrets.token_bytes(16) for _ in path]
            jobs = []
            for i, site in enumerate(path):
                nxt = (
                    (labels[i + 1], path[i + 1].address, keys[i + 1]) if i + 1 < len(path) else None
                )
                jobs.append(
                    self._pool.submit(
                        site.control.install,
                        labels[i],
                        service=service,
                        in_key=keys[i],
                        out=nxt,
                        deliver=None if nxt else destination,
                        lifetime=lifetime,
                        destination=destination,
                    )
                )
            for j in jobs:
                j.result()
        except BaseException as exc:
            self._undo([(s, lb) for s, lb in zip(path, labels) if lb is not None])
            if isinstance(exc, LookupServiceError):
                raise
            if isinstance(exc, OSError):
                raise LookupServiceError("unavailable", str(exc)) from exc
            raise
        cid = secrets.token_hex(8)
        circuit = Circuit(
            first_hop=path[0].address,
            label=int(labels[0]),
            key=wire.HopKey(keys[0]),
            destination=destination,
            service=service,
            circuit_id=cid,
            sites=tuple(s.name for s in path),
            expires=self.clock() + lifetime,
            port=path[0].port,
            psp=self.psp,
        )
        with self._lock:
            self._circuits[cid] = _Record(
                circuit,
                [(s, int(lb)) for s, lb in zip(path, labels)],
                lifetime,
                service,
            )
        return circuit

    #: seconds a site's answer "service S is active" is trusted before asking again
    SERVICES_TTL = 10.0

    def _check_service(self, path: list[SiteEntry], service: str) -> None:
        """Refuse (``unknown_service``) if a site on ``path`` runs no active ``service``.

        Asked only of controls that can list services; a positive answer is cached for
        :attr:`SERVICES_TTL` s, a negative one is always asked again (a deploy may follow).
        """
        now = time.monotonic()
        for site in path:
            lister = getattr(site.control, "services", None)
            if lister is None:
                continue
            key = (site.name, service)
            if self._known_services.get(key, 0.0) > now:
                continue
            try:
                offered = lister()
            except (OSError, LookupServiceError) as exc:
                raise LookupServiceError(
                    "unavailable", f"site {site.name}: cannot list its services: {exc}"
                ) from exc
            if offered is None:
                continue
            if service not in offered:
                have = ", ".join(sorted(offered)) or "none"
                raise LookupServiceError(
                    "unknown_service",
                    f"site {site.name} runs no service {service!r} for PSP {self.psp} "
                    f"(active there: {have})",
                )
            with self._lock:
                self._known_services[key] = now + self.SERVICES_TTL

    def _undo(self, hops: list[tuple[SiteEntry, int]]) -> None:
        """Tear hops down at their sites, in parallel; a site that fails expires it anyway."""
        futs = [self._pool.submit(site.control.teardown, label) for site, label in hops]
        for f in futs:
            try:
                f.result()
            except (OSError, LookupServiceError):
                pass

    def _get(self, cid: str) -> _Record:
        with self._lock:
            rec = self._circuits.get(cid)
        if rec is None:
            raise LookupServiceError("unknown_circuit", f"no circuit {cid!r}")
        return rec

    def renew(self, cid: str, lifetime: float | None = None) -> Circuit:
        """Extend every hop's life; returns the circuit with its new expiry."""
        rec = self._get(cid)
        life = min(max(float(lifetime or rec.lifetime), 1.0), self.max_lifetime)
        for f in [self._pool.submit(s.control.renew, lb, life) for s, lb in rec.hops]:
            f.result()
        c = rec.circuit
        rec.circuit = Circuit(**{**c.__dict__, "expires": self.clock() + life})
        rec.lifetime = life
        return rec.circuit

    def teardown(self, cid: str) -> None:
        """Remove every hop of the circuit."""
        rec = self._get(cid)
        with self._lock:
            self._circuits.pop(cid, None)
        self._undo(rec.hops)

    def expire(self) -> int:
        """Forget circuits past their expiry (the sites expire their hops themselves)."""
        now = self.clock()
        with self._lock:
            dead = [k for k, r in self._circuits.items() if r.circuit.expires <= now]
            for k in dead:
                del self._circuits[k]
        return len(dead)

    def __len__(self) -> int:
        return len(self._circuits)

    # --- protocol
    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """One protocol request -> one response document."""
        try:
            op = request.get("op")
            if op == "create":
                c = self.create(
                    destination=str(request.get("destination", "")),
                    service=str(request.get("service", "")),
                    source=str(request.get("source", "")),
                    sites=request.get("sites") or None,
                    lifetime=float(request.get("lifetime", 60.0)),
                    hops=request.get("hops"),
                )
                return {"ok": True, "circuit": circuit_to_json(c)}
            if op == "renew":
                c = self.renew(str(request.get("id", "")), request.get("lifetime"))
                return {"ok": True, "circuit": circuit_to_json(c)}
            if op == "teardown":
                self.teardown(str(request.get("id", "")))
                return {"ok": True}
            if op == "sites":
                return {
                    "ok": True,
                    "sites": [
                        {"name": s.name, "address": s.address, "rtt": s.rtt}
                        for s in self.sites.values()
                    ],
                }
            raise LookupServiceError("bad_request", f"unknown op {op!r}")
        except LookupServiceError as exc:
            return {"ok": False, "error": {"code": exc.code, "message": exc.message}}
        except (TypeError, ValueError) as exc:
            return {"ok": False, "error": {"code": "bad_request", "message": str(exc)}}


def circuit_to_json(c: Circuit) -> dict[str, Any]:
    return {
        "id": c.circuit_id,
        "first_hop": c.first_hop,
        "port": c.port,
        "label": c.label,
        "key": c.key.key.hex(),
        "expires": c.expires,
        "sites": list(c.sites),
        "service": c.service,
        "destination": c.destination,
        "psp": c.psp,
    }


def circuit_from_json(d: dict[str, Any]) -> Circuit:
    try:
        return Circuit(
            first_hop=str(d["first_hop"]),
            label=int(d["label"]),
            key=wire.HopKey(bytes.fromhex(d["key"])),
            destination=str(d["destination"]),
            service=str(d.get("service", "")),
            circuit_id=str(d["id"]),
            sites=tuple(d.get("sites", ())),
            expires=float(d.get("expires", 0.0)),
            port=int(d.get("port", wire.UDP_PORT)),
            psp=str(d.get("psp", "")),
        )
    except (KeyError, ValueError, TypeError, wire.WireError) as exc:
        raise LookupServiceError("bad_response", f"circuit document: {exc}") from exc


# --- server and client -----------------------------------------------------------------------


#: Longest request line the lookup server reads (bytes, newline included).
MAX_LINE = 64 * 1024
#: Connections the lookup server holds at once, in all and from one address.
MAX_CONNECTIONS = 256
MAX_CONNECTIONS_PER_CLIENT = 32
#: Seconds a connection may stay silent before it is closed.
IDLE_TIMEOUT = 30.0
#: Longest answer line the client reads (bytes, newline included).
MAX_RESPONSE = 1024 * 1024


def _error_line(code: str, message: str) -> bytes:
    return json.dumps({"ok": False, "error": {"code": code, "message": message}}).encode() + b"\n"


class LookupServer:
    """Serves a :class:`CircuitBroker` on TCP (JSON lines; one thread per connection).

    Threads rather than trio here: each request is a handful of blocking control-API calls
    the broker already fans out on its pool, and the server must be usable from plain
    blocking code (tests, the demo, the benchmark) as ``with LookupServer(...) as srv:``.

    Bounded: a line is read at most ``max_line`` bytes at a time, and a longer one is refused
    (``bad_request``) and its connection closed without reading the rest; at most
    ``max_connections`` connections (``max_per_client`` from one address) are served, more
    are answered ``unavailable`` and closed; a connection silent for ``idle_timeout`` closes.
    """

    def __init__(
        self,
        broker: CircuitBroker,
        host: str,
        port: int = 0,
        *,
        max_line: int = MAX_LINE,
        max_connections: int = MAX_CONNECTIONS,
        max_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.broker = broker
        self.max_line = max_line
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.idle_timeout = idle_timeout
        self._sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        self._sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(64)
        self.address: tuple[str, int] = self._sock.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="pcsock-lookupd", daemon=True)
        self._expirer = threading.Thread(target=self._expire, name="pcsock-expire", daemon=True)
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}  # client address -> connections being served
        self.refused = 0  #: connections turned away at a cap

    def start(self) -> LookupServer:
        self._thread.start()
        self._expirer.start()
        return self

    def _expire(self) -> None:
        while not self._stop.wait(1.0):
            self.broker.expire()

    def _admit(self, client: str) -> str:
        """'' if the connection may be served (and is counted), else why not."""
        with self._lock:
            if sum(self._open.values()) >= self.max_connections:
                return f"the lookup service is at its limit of {self.max_connections} connections"
            if self._open.get(client, 0) >= self.max_per_client:
                return f"{self.max_per_client} connections from {client} are open"
            self._open[client] = self._open.get(client, 0) + 1
            return ""

    def _leave(self, client: str) -> None:
        with self._lock:
            n = self._open.get(client, 0) - 1
            if n > 0:
                self._open[client] = n
            else:
                self._open.pop(client, None)

    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set() or exc.errno not in _CAPACITY_ERRNOS:
                    return
                self._stop.wait(0.05)  # out of descriptors for now: back off, keep serving
                continue
            why = self._admit(peer[0])
            if why:
                self.refused += 1
                with conn:
                    try:
                        conn.settimeout(0.5)
                        conn.sendall(_error_line("unavailable", why))
                    except OSError:
                        pass
                continue
            threading.Thread(target=self._conn, args=(conn, peer[0]), daemon=True).start()

    def _conn(self, conn: _socket.socket, client: str) -> None:
        conn.settimeout(self.idle_timeout)
        try:
            with conn, conn.makefile("rwb") as f:
                while True:
                    line = f.readline(self.max_line + 1)  # never more than the bound
                    if not line:
                        return
                    if len(line) > self.max_line:
                        f.write(_error_line(
                            "bad_request", f"line longer than {self.max_line} bytes",
                        ))  # fmt: skip
                        f.flush()
                        return  # the rest of the line is never read
                    try:
                        req = json.loads(line)
                        if not isinstance(req, dict):
                            raise ValueError("not an object")
                        resp = self.broker.handle(req)
                    except ValueError as exc:
                        resp = {
                            "ok": False,
                            "error": {"code": "bad_request", "message": f"bad JSON: {exc}"},
                        }
                    f.write(json.dumps(resp).encode() + b"\n")
                    f.flush()
        except OSError:
            return
        finally:
            self._leave(client)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        if self._thread.is_alive():
            self._thread.join(2)

    def serve_forever(self) -> None:
        self.start()
        try:
            while self._thread.is_alive():
                self._thread.join(1)
        finally:
            self.close()

    def __enter__(self) -> LookupServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hint(exc: OSError) -> str:
    """The likely cause of a failed connection to a lookup service, for the error message."""
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH) or isinstance(exc, TimeoutError):
        return (
            " (no route from this host: the lookup service must listen on an address senders"
            " can reach, e.g. a PSP node with a data link, not one on the control network only)"
        )
    if exc.errno == errno.ECONNREFUSED:
        return " (nothing listens there: is `pcsock lookupd` running on that address and port?)"
    return ""


class LookupClient:
    """The sender's side of the protocol (one TCP connection, reused; thread-safe)."""

    def __init__(self, host: str, port: int, *, timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._sock: _socket.socket | None = None
        self._file: Any = None
        self._lock = threading.Lock()

    def _connect(self) -> None:
        try:
            s = _socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise LookupServiceError(
                "unavailable", f"lookup service {self.host}:{self.port}: {exc}{_hint(exc)}"
            ) from exc
        s.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        self._sock = s
        self._file = s.makefile("rwb")

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request; the response document (raises LookupServiceError if not ok)."""
        data = json.dumps(request).encode() + b"\n"
        with self._lock:
            line = self._exchange(data)
            try:
                resp = json.loads(line)
                if not isinstance(resp, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                self.close()  # whatever sent that, the stream is not one to trust further
                raise LookupServiceError(
                    "bad_response", f"answer is not a JSON object: {exc}"
                ) from exc
        if not resp.get("ok"):
            err = resp.get("error") or {}
            raise LookupServiceError(
                str(err.get("code", "bad_response")), str(err.get("message", ""))
            )
        return dict(resp)

    def _exchange(self, data: bytes) -> bytes:
        """Send one request line, read one answer line (with its newline).

        A connection kept from an earlier call may have been closed by the server since (its
        idle timeout): if it turns out closed before any answer, the request goes once more
        over a fresh connection; the server closes only between requests, so it has not acted
        on it. Nothing else is retried: after a timeout, or on a fresh connection, the server
        may have acted on the request, and ``create`` is not idempotent. Any failure closes
        the connection, so a late answer can never be read as the next call's.
        """
        for _ in range(2):
            reused = self._sock is not None
            if not reused:
                self._connect()
            try:
                self._file.write(data)
                self._file.flush()
                line: bytes = self._file.readline(MAX_RESPONSE + 1)
            except TimeoutError as exc:
                self.close()
                raise LookupServiceError(
                    "unavailable", f"no answer from the lookup service within {self.timeout} s"
                ) from exc
            except OSError as exc:
                self.close()
                if reused:
                    continue
                raise LookupServiceError("unavailable", str(exc)) from exc
            if line.endswith(b"\n") and len(line) <= MAX_RESPONSE:
                return line
            self.close()
            if len(line) > MAX_RESPONSE:
                raise LookupServiceError("bad_response", f"answer longer than {MAX_RESPONSE} bytes")
            if line:
                raise LookupServiceError("bad_response", "the answer was cut short")
            if not reused:
                raise LookupServiceError("unavailable", "lookup service closed the connection")
        raise LookupServiceError("unavailable", "lookup service closed the connection")

    def create(
        self,
        *,
        destination: str,
        service: str,
        source: str = "",
        sites: Sequence[str] | None = None,
        lifetime: float = 60.0,
    ) -> Circuit:
        r = self.call(
            {
                "op": "create",
                "destination": destination,
                "service": service,
                "source": source,
                "sites": list(sites) if sites else None,
                "lifetime": lifetime,
            }
        )
        return circuit_from_json(r["circuit"])

    def renew(self, circuit: Circuit, lifetime: float | None = None) -> Circuit:
        req: dict[str, Any] = {"op": "renew", "id": circuit.circuit_id}
        if lifetime is not None:
            req["lifetime"] = lifetime
        return circuit_from_json(self.call(req)["circuit"])

    def teardown(self, circuit: Circuit) -> None:
        self.call({"op": "teardown", "id": circuit.circuit_id})

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._file = None


class BrokerClient:
    """An in-process stand-in for :class:`LookupClient` (the simulator and tests call the
    broker directly, with the same methods)."""

    def __init__(self, broker: CircuitBroker) -> None:
        self.broker = broker

    def create(self, **kw: Any) -> Circuit:
        return self.broker.create(**kw)

    def renew(self, circuit: Circuit, lifetime: float | None = None) -> Circuit:
        return self.broker.renew(circuit.circuit_id, lifetime)

    def teardown(self, circuit: Circuit) -> None:
        self.broker.teardown(circuit.circuit_id)


def find_lookup(resolver: Any, psp_domain: str, service: str | None = None) -> LookupClient:
    """The first lookup service the PSP publishes in DNS (see :mod:`pcsock.discovery`) that
    offers ``service`` (if its TXT lists services)."""
    recs = resolver.lookup_services(psp_domain)
    for r in recs:
        if service is None or not r.services or service in r.services:
            return LookupClient(r.host, r.port)
    raise LookupServiceError(
        "unavailable", f"{psp_domain} publishes no lookup service for {service}"
    )
