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

Sender <-> lookup service protocol: HTTP/1.1 on the tree's one HTTP server stack
(:mod:`pcsock.httpserver`); each request is ``POST /v1/lookup`` with one JSON document, the
answer one JSON document (a connection may carry several requests)::

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
import functools
import http.client
import json
import secrets
import socket as _socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from pcsock import wire
from pcsock.control import ControlClient, ControlError, OutHop
from pcsock.httpserver import Request, Response, ServerLimits, ServerStats, serve_listeners
from pcsock.session import Circuit

__all__ = [
    "BrokerClient",
    "CircuitBroker",
    "HopSetup",
    "HttpSiteControl",
    "LookupClient",
    "LookupServer",
    "LookupServiceError",
    "SiteControl",
    "SiteEntry",
    "circuit_from_json",
    "circuit_to_json",
    "find_lookup",
    "site_refusals",
]


class LookupServiceError(OSError):
    """The lookup service refused or failed; ``code`` is one of the codes above."""

    def __init__(self, code: str, message: str = "") -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}" if message else code)


# --- site control ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HopSetup:
    """What a site installs for one hop of a circuit: the service, the hop's key, and either
    the next hop (``out``: its label, site address and key) or the destination it delivers
    to (``deliver``, on the last hop); ``destination`` is the circuit's final one."""

    service: str
    in_key: bytes
    out: tuple[int, str, bytes] | None
    deliver: str | None
    lifetime: float
    destination: str | None = None


class SiteControl(Protocol):
    """What the broker needs from one site's control plane."""

    def allocate(self, service: str, lifetime: float) -> int: ...

    def install(self, label: int, hop: HopSetup) -> None: ...

    def renew(self, label: int, lifetime: float) -> None: ...

    def teardown(self, label: int) -> None: ...

    def ping(self) -> None: ...

    # Optional: ``services() -> set[str] | None``, the services with an active version at the
    # site (for this PSP), None if it cannot tell. A control that has it lets the broker
    # refuse unknown services at setup.


def site_refusals(refusal: type[Exception], describe: Callable[[Any], str]) -> Callable[..., Any]:
    """A ``_call(fn, *a, **kw)`` for a :class:`SiteControl`: ``fn`` with a site's refusal
    (``refusal``, described by ``describe``) raised as the ``site_refused`` lookup error."""

    def call(_self: Any, fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except refusal as exc:
            raise LookupServiceError("site_refused", describe(exc)) from exc

    return call


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

    _call = site_refusals(ControlError, lambda exc: f"{exc.code}: {exc.message}")

    def allocate(self, service: str, lifetime: float) -> int:
        return int(self._call(self.client.allocate_circuit, service, lifetime)["label"])

    def install(self, label: int, hop: HopSetup) -> None:
        # The control API takes the circuit's final destination on the last hop only
        # (``deliver``), so receiver-first precedence applies at the last site there.
        hops = [OutHop(*hop.out)] if hop.out else None
        self._call(self.client.install_hop, label, in_key=hop.in_key, out=hops,
                   deliver=hop.deliver, lifetime=hop.lifetime)  # fmt: skip

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
                hop = HopSetup(service, keys[i], nxt, None if nxt else destination, lifetime,
                               destination)  # fmt: skip
                jobs.append(self._pool.submit(site.control.install, labels[i], hop))
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


#: The one path of the lookup service: ``POST`` a request document, get the answer document.
LOOKUP_PATH = "/v1/lookup"
#: Largest request body the lookup server reads (bytes).
MAX_REQUEST = 64 * 1024
#: Connections the lookup server holds at once, in all and from one address.
MAX_CONNECTIONS = 256
MAX_CONNECTIONS_PER_CLIENT = 32
#: Seconds a connection may stay silent before it is closed.
IDLE_TIMEOUT = 30.0
#: Requests served at once (each is a handful of blocking control-API calls to sites).
SERVER_THREADS = 8
#: Longest answer the client reads (bytes).
MAX_RESPONSE = 1024 * 1024


class _LookupApp:
    """The lookup service as an app of the HTTP server (:mod:`pcsock.httpserver`)."""

    def __init__(self, broker: CircuitBroker, limits: ServerLimits) -> None:
        self.broker = broker
        self.limits = limits

    @property
    def max_body(self) -> int:
        return self.limits.max_body

    def offload(self, req: Request) -> bool:
        return True  # the broker blocks on the sites' control APIs: never in the event loop

    def handle(self, req: Request) -> Response:
        if req.target.split("?", 1)[0] != LOOKUP_PATH:
            return _answer(404, _error("not_found", f"the lookup service is at {LOOKUP_PATH}"))
        if req.method != "POST":
            return _answer(405, _error("method_not_allowed", f"POST to {LOOKUP_PATH}"))
        try:
            doc = json.loads(req.body)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            return _answer(400, _error("bad_request", f"bad JSON: {exc}"))
        return _answer(200, self.broker.handle(doc))


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def _answer(status: int, doc: dict[str, Any]) -> Response:
    return Response(status, json.dumps(doc).encode())


class LookupServer:
    """Serves a :class:`CircuitBroker` over HTTP (``POST /v1/lookup``, one JSON request
    document per request, keep-alive) on the tree's HTTP server (:mod:`pcsock.httpserver`,
    trio + h11), in a thread of its own so that blocking code (tests, the demo, the
    benchmark) runs it as ``with LookupServer(...) as srv:``. The listening socket is bound
    in the constructor (in the calling thread's network namespace).

    Bounded like the control API: a request body over ``max_body`` bytes is refused (413
    ``body_too_large``) while it arrives; at most ``max_connections`` connections
    (``max_per_client`` from one address) are held, more are answered 429
    ``too_many_connections`` (at the total cap the least recently active idle connection is
    closed first); a connection silent for ``idle_timeout`` closes; slow requests time out.
    """

    def __init__(
        self,
        broker: CircuitBroker,
        host: str,
        port: int = 0,
        *,
        max_body: int = MAX_REQUEST,
        max_connections: int = MAX_CONNECTIONS,
        max_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
        idle_timeout: float = IDLE_TIMEOUT,
        threads: int = SERVER_THREADS,
    ) -> None:
        self.broker = broker
        self.limits = ServerLimits(
            max_body=max_body, max_connections=max_connections,
            max_connections_per_client=max_per_client, idle_timeout=idle_timeout,
        )  # fmt: skip
        self.threads = threads
        self._sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        self._sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(128)
        self.address: tuple[str, int] = self._sock.getsockname()
        self._stats: list[ServerStats] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._up = threading.Event()
        self._stop = threading.Event()
        # threads started from the caller's thread (its network namespace), not trio's
        # process-wide worker cache: circuits expire through the sites' control APIs
        self._thread = threading.Thread(target=self._run, name="pcsock-lookupd", daemon=True)
        self._expirer = threading.Thread(target=self._expire, name="pcsock-expire", daemon=True)

    @property
    def refused(self) -> int:
        """Connections turned away at a cap."""
        return self._stats[0].refused if self._stats else 0

    def start(self) -> LookupServer:
        self._thread.start()
        self._expirer.start()
        self._up.wait(10)
        return self

    def _run(self) -> None:
        try:
            trio.run(self._main)
        finally:
            self._up.set()
            self._sock.close()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self._sock))
        with trio.CancelScope() as self._cancel:
            async with trio.open_nursery() as n:
                await n.start(functools.partial(
                    serve_listeners, _LookupApp(self.broker, self.limits), [listener],
                    stats=self._stats, offload_threads=self.threads,
                ))  # fmt: skip
                self._up.set()

    def _expire(self) -> None:
        while not self._stop.wait(1.0):
            self.broker.expire()

    def close(self) -> None:
        self._stop.set()
        token, scope = self._token, self._cancel
        if token is not None and scope is not None:
            try:
                token.run_sync_soon(scope.cancel)
            except trio.RunFinishedError:
                pass
        if self._thread.is_alive():
            self._thread.join(5)
        self._sock.close()

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
    """The sender's side: ``POST /v1/lookup`` over one kept HTTP/1.1 connection (thread-safe)."""

    def __init__(self, host: str, port: int, *, timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise LookupServiceError(
                "unavailable", f"lookup service {self.host}:{self.port}: {exc}{_hint(exc)}"
            ) from exc
        if conn.sock is not None:
            conn.sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        return conn

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request; the response document (raises LookupServiceError if not ok)."""
        data = json.dumps(request).encode()
        with self._lock:
            status, body = self._exchange(data)
            try:
                resp = json.loads(body)
                if not isinstance(resp, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                self.close()  # whatever sent that, the stream is not one to trust further
                raise LookupServiceError(
                    "bad_response", f"answer is not a JSON object: {exc}"
                ) from exc
        if status != 200 or not resp.get("ok"):
            err = resp.get("error") or {}
            code = str(err.get("code", "bad_response"))
            if status == 429 or status >= 500:  # a cap or an outage: try again later
                code = "unavailable"
            elif status != 200 and code not in _SERVICE_CODES:
                code = "bad_request"  # the HTTP layer refused it (too large, too slow...)
            raise LookupServiceError(code, str(err.get("message", "")))
        return dict(resp)

    def _exchange(self, data: bytes) -> tuple[int, bytes]:
        """Send one request, read its whole answer: (HTTP status, body).

        A connection kept from an earlier call may have been closed by the server since (its
        idle timeout): if it turns out closed before any answer, the request goes once more
        over a fresh connection; the server closes only between requests, so it has not acted
        on it. Nothing else is retried: after a timeout, or on a fresh connection, the server
        may have acted on the request, and ``create`` is not idempotent. Any failure closes
        the connection, so a late answer can never be read as the next call's.
        """
        headers = {"content-type": "application/json", "accept": "application/json"}
        for _ in range(2):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = self._connect()
            conn = self._conn
            try:
                conn.request("POST", LOOKUP_PATH, body=data, headers=headers)
                resp = conn.getresponse()
                length = resp.getheader("content-length")
                if length is not None and length.isdigit() and int(length) > MAX_RESPONSE:
                    self.close()
                    raise LookupServiceError(
                        "bad_response", f"answer longer than {MAX_RESPONSE} bytes"
                    )
                body = resp.read(MAX_RESPONSE + 1)
                if length is not None and length.isdigit() and len(body) < int(length):
                    raise http.client.IncompleteRead(body, int(length) - len(body))
                if len(body) > MAX_RESPONSE:
                    self.close()
                    raise LookupServiceError(
                        "bad_response", f"answer longer than {MAX_RESPONSE} bytes"
                    )
                if not resp.isclosed():  # not read to its end: nothing more may follow
                    self.close()
                elif resp.will_close:
                    self.close()
                return resp.status, body
            except TimeoutError as exc:
                self.close()
                raise LookupServiceError(
                    "unavailable", f"no answer from the lookup service within {self.timeout} s"
                ) from exc
            except http.client.IncompleteRead as exc:
                self.close()
                raise LookupServiceError("bad_response", "the answer was cut short") from exc
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if reused:
                    continue  # the kept connection was closed before it answered: once more
                raise LookupServiceError(
                    "unavailable", f"lookup service closed the connection ({exc})"
                ) from exc
            except http.client.HTTPException as exc:
                self.close()
                raise LookupServiceError("bad_response", f"not an HTTP answer: {exc}") from exc
            except OSError as exc:
                self.close()
                raise LookupServiceError(
                    "unavailable", f"lookup service {self.host}:{self.port}: {exc}"
                ) from exc
        raise LookupServiceError("unavailable", "lookup service closed the connection")

    def create(self, *, destination: str, service: str, **options: Any) -> Circuit:
        """A circuit to ``destination`` through ``service``; ``options`` are those of
        :meth:`CircuitBroker.create` (``source``, ``sites``, ``lifetime``, ``hops``)."""
        if options.get("sites"):
            options["sites"] = list(options["sites"])
        req = {"op": "create", "destination": destination, "service": service, **options}
        return circuit_from_json(self.call(req)["circuit"])

    def renew(self, circuit: Circuit, lifetime: float | None = None) -> Circuit:
        req: dict[str, Any] = {"op": "renew", "id": circuit.circuit_id}
        if lifetime is not None:
            req["lifetime"] = lifetime
        return circuit_from_json(self.call(req)["circuit"])

    def teardown(self, circuit: Circuit) -> None:
        self.call({"op": "teardown", "id": circuit.circuit_id})

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None


#: The codes the lookup service itself answers with (the module docstring lists them).
_SERVICE_CODES = frozenset({
    "bad_request", "unknown_site", "unknown_service", "unknown_circuit", "no_sites", "site_refused",
    "unavailable",
})  # fmt: skip


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
