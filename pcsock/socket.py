"""PacketCloud sockets: thin blocking and trio adapters around :class:`pcsock.session.Session`.

The shape follows the stdlib :mod:`socket` module: objects with ``send``/``recv``/``close``,
``settimeout``, context managers, :class:`TimeoutError` on timeouts. What is new:

* :func:`open_circuit` — form 1: ask a PSP's lookup service for a circuit to a destination
  through a named service (optionally naming the sites) and get a connected
  :class:`CircuitSocket`; closing it tears the circuit down.
* :func:`service_socket` — form 2: datagrams to the real destination with the service ID shim
  and the ToS flag 0xAC that the legacy router's policy routing diverts.
* :func:`listen` — a receiving endpoint: :meth:`PacketCloudSocket.recv` returns a
  :class:`~pcsock.session.Datagram` with the original source and circuit info;
  :meth:`PacketCloudSocket.reply` answers the original sender.
* form 3 needs nothing from the sender: an ordinary :func:`socket.socket` (re-exported as
  ``pcsock.ordinary_socket``) reaches a destination whose owner signed up for a service.

Modes: ``mode="udp"`` (default; UDP port 6253, no privileges) or ``mode="ip"`` (raw IP
protocol 253; needs root or CAP_NET_RAW, else :class:`PrivilegeError`).
"""

from __future__ import annotations

import contextlib
import errno
import socket as _socket
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import trio

from pcsock import wire
from pcsock.session import Circuit, Datagram, Session

__all__ = [
    "AddressInUseError",
    "AsyncCircuitSocket",
    "AsyncPacketCloudSocket",
    "CircuitSocket",
    "PacketCloudSocket",
    "PcsockError",
    "PrivilegeError",
    "ServiceSocket",
    "listen",
    "local_address_for",
    "open_circuit",
    "open_circuit_async",
    "ordinary_socket",
    "service_socket",
]

#: Form 3 senders use the plain stdlib socket: the destination's signed-up service is applied
#: by the ISP without anything in the packet.
ordinary_socket = _socket.socket

_T = TypeVar("_T")
_RECV_BUF = 65535
_SO_NO_CHECK = getattr(_socket, "SO_NO_CHECK", 11)  # Linux: send UDP with checksum 0


class PcsockError(OSError):
    """Base class of pcsock errors (an :class:`OSError`, like the socket module's)."""


class PrivilegeError(PcsockError, PermissionError):
    """Raw-IP mode was asked for without root / CAP_NET_RAW."""


class AddressInUseError(PcsockError):
    """Another socket already receives PacketCloud datagrams on this address (UDP mode)."""


def local_address_for(destination: str) -> str:
    """The local IPv4 address the kernel would use toward ``destination`` (no packet sent)."""
    with _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM) as s:
        s.connect((destination, wire.UDP_PORT))
        addr: str = s.getsockname()[0]
        return addr


def _open_transport(
    mode: str, local_ip: str, port: int, proto: int, bind: bool, tos: int = 0
) -> tuple[_socket.socket, _socket.socket]:
    """(receive socket, send socket) for ``mode``; both are the same object in UDP mode."""
    if mode == "udp":
        s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
        try:
            # no SO_REUSEADDR: a second socket on the same address and port would silently
            # take the first one's datagrams (issue #13 item 7); bind refuses it instead
            # UDP checksum 0 (RFC 768 "none"), as pcsock.wire builds it: the shim carries its own
            # check and every site rewrites the outer header (docs/protocol.md §2)
            s.setsockopt(_socket.SOL_SOCKET, _SO_NO_CHECK, 1)
            if tos:
                s.setsockopt(_socket.IPPROTO_IP, _socket.IP_TOS, tos)
            s.bind((local_ip, port if bind else 0))
        except OSError as exc:
            s.close()
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUseError(
                    exc.errno,
                    f"{local_ip}:{port} (UDP) is already used by another socket, e.g. a "
                    f"pcsock.listen() on the same address: two sockets cannot both receive "
                    f"PacketCloud datagrams there. Send from the listening socket (reply, "
                    f"send_on), or give this one another local_ip",
                ) from exc
            raise
        return s, s
    if mode != "ip":
        raise ValueError(f"mode must be 'udp' or 'ip', not {mode!r}")
    try:
        rx = _socket.socket(_socket.AF_INET, _socket.SOCK_RAW, proto)
    except PermissionError as exc:
        raise PrivilegeError(
            exc.errno,
            f"raw-IP mode (IP protocol {proto}) needs root or CAP_NET_RAW; "
            f"use mode='udp' (UDP port {wire.UDP_PORT}) to run without privileges",
        ) from exc
    try:
        tx = _socket.socket(_socket.AF_INET, _socket.SOCK_RAW, _socket.IPPROTO_RAW)
    except OSError:
        rx.close()
        raise
    return rx, tx


class _Endpoint:
    """What the blocking and the trio sockets share: the session (codec and counters), the
    ports, the transport and how datagrams are framed before either sends them."""

    def __init__(
        self,
        local_ip: str,
        *,
        mode: str = "udp",
        app_port: int = 0,
        encap_port: int = wire.UDP_PORT,
        proto: int = wire.IPPROTO_PACKETCLOUD,
        tos: int = 0,
        bind: bool = True,
        accel: bool | None = None,
    ) -> None:
        self.session = Session(local_ip, mode=mode, proto=proto)
        self.app_port = app_port  #: application port: the source port of what this sends
        self.encap_port = encap_port
        # the C accelerator's senders (accel=None: use it when pcsock.wire does)
        ax = wire.accelerator()
        if accel and ax is None:
            raise PcsockError(f"the C accelerator is not available: {wire.PURE_REASON}")
        self._ax: Any = ax if accel is None or accel else None
        #: (first hop, port, label, key, metadata, sport, dport) -> _accel.Sender
        self._senders: dict[tuple[Any, ...], Any] = {}
        rx, tx = _open_transport(mode, local_ip, encap_port, proto, bind, tos)
        #: stdlib sockets (the trio flavour wraps them in trio sockets)
        self._rx: Any = rx
        self._tx: Any = tx
        self._closed = False

    @property
    def mode(self) -> str:
        return self.session.mode

    @property
    def local_ip(self) -> str:
        return self.session.local_ip

    @property
    def closed(self) -> bool:
        return self._closed

    def _dest(self, addr: tuple[str, int]) -> tuple[str, int]:
        """Where a frame goes: ``addr`` in UDP mode, its host (port 0) in raw-IP mode."""
        if self._closed:
            raise PcsockError("socket is closed")
        return addr if self.session.mode == "udp" else (addr[0], 0)

    def _circuit_frame(self, circuit: Circuit, payload: bytes, metadata: int,
                       dport: int) -> tuple[bytes, tuple[str, int]]:  # fmt: skip
        return self.session.encode_circuit(
            circuit, payload, metadata=metadata, sport=self.app_port, dport=dport
        )

    def _service_frame(self, payload: bytes, destination: str, service_id: int, metadata: int,
                       dport: int) -> tuple[bytes, tuple[str, int]]:  # fmt: skip
        return self.session.encode_service(
            destination, service_id, payload, metadata=metadata, port=self.encap_port,
            sport=self.app_port, dport=dport,
        )  # fmt: skip

    def _reply_frame(self, to: Datagram | str, payload: bytes,
                     metadata: int) -> tuple[bytes, tuple[str, int]]:  # fmt: skip
        return self.session.encode_reply(
            to, payload, metadata=metadata, port=self.encap_port, sport=self.app_port
        )

    @property
    def accelerated(self) -> bool:
        """True if circuit datagrams go out through the C accelerator's senders."""
        return self._ax is not None

    def _sender(self, circuit: Circuit, metadata: int, dport: int) -> Any:
        """The accelerator's sender (on the transport's descriptor: the trio flavour's too)
        for datagrams on ``circuit`` with this metadata and these
        application ports: the circuit's sealed prefix (its MAC computed once), sent ahead of
        each payload by one ``sendmsg`` (``sendmmsg`` for batches) without a copy."""
        if self._closed:
            raise PcsockError("socket is closed")
        key = (
            circuit.first_hop, circuit.port, circuit.label, circuit.key, metadata,
            self.app_port, dport,
        )  # fmt: skip
        sender = self._senders.get(key)
        if sender is None:
            prefix = self.session.circuit_prefix(
                circuit, metadata=metadata, sport=self.app_port, dport=dport
            )
            ip = self.session.mode == "ip"
            if len(self._senders) >= 256:  # bounded: circuits come and go
                self._senders.clear()
            sender = self._ax.Sender(
                self._tx.fileno(),
                wire.ip2int(circuit.first_hop),
                0 if ip else circuit.port,
                prefix,
                ip,
                self.session.ident,
            )
            self._senders[key] = sender
        return sender

    def _decode(self, data: bytes, src: tuple[str, int]) -> Datagram | None:
        return self.session.decode(data, src if self.session.mode == "udp" else None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._rx.close()
        if self._tx is not self._rx:
            self._tx.close()


class PacketCloudSocket(_Endpoint):
    """A PacketCloud endpoint bound to ``local_ip`` (blocking). See the module docstring.

    Keywords: ``mode`` ("udp" or "ip"), ``app_port``, ``encap_port``, ``proto``, ``tos``,
    ``bind`` (as :class:`_Endpoint` takes them) and ``accel``."""

    def __init__(self, local_ip: str, **kw: Any) -> None:
        super().__init__(local_ip, **kw)
        self._timeout: float | None = None

    # -- stdlib-like surface
    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def fileno(self) -> int:
        return self._rx.fileno()

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        self._tx.sendto(data, self._dest(addr))

    def send_on(
        self, circuit: Circuit, payload: bytes, *, metadata: int = 0, dport: int = 0
    ) -> int:
        """Send ``payload`` on ``circuit`` (form 1) to application port ``dport``; returns
        the payload length."""
        if self._ax is not None:
            n: int = self._sender(circuit, metadata, dport).send(payload)
            self.session.sent += 1
            return n
        self._send(*self._circuit_frame(circuit, payload, metadata, dport))
        return len(payload)

    def send_many_on(
        self,
        circuit: Circuit,
        payloads: Sequence[bytes],
        *,
        metadata: int = 0,
        dport: int = 0,
    ) -> int:
        """Send each of ``payloads`` as its own datagram on ``circuit``; returns how many.

        With the C accelerator this is one ``sendmmsg(2)`` call per 64 datagrams (the bulk
        sender's interface); without it, one send per datagram. If the kernel refuses one,
        the datagrams before it were sent and the error is raised."""
        if self._ax is not None:
            n: int = self._sender(circuit, metadata, dport).send_many(payloads)
            self.session.sent += n
            return n
        for payload in payloads:
            self.send_on(circuit, payload, metadata=metadata, dport=dport)
        return len(payloads)

    def sendto_service(
        self,
        payload: bytes,
        destination: str,
        service_id: int,
        *,
        metadata: int = 0,
        dport: int = 0,
    ) -> int:
        """Send ``payload`` to ``destination`` asking for service ``service_id`` (form 2). In
        UDP mode the socket must have been made with ``tos=wire.TOS_SERVICE``
        (:func:`service_socket` does)."""
        self._send(*self._service_frame(payload, destination, service_id, metadata, dport))
        return len(payload)

    def reply(self, to: Datagram | str, payload: bytes, *, metadata: int = 0) -> int:
        """Answer the original source of ``to`` directly (label 0, no sites; application
        ports swapped)."""
        self._send(*self._reply_frame(to, payload, metadata))
        return len(payload)

    def recv(self, timeout: float | None = ...) -> Datagram:  # type: ignore[assignment]
        """The next PacketCloud datagram. Non-PacketCloud or malformed packets are dropped and
        counted (``session.dropped``). Raises :class:`TimeoutError` after ``timeout``
        seconds (default: the socket's timeout; None blocks)."""
        if self._closed:
            raise PcsockError("socket is closed")
        t = self._timeout if timeout is ... else timeout
        deadline = None if t is None else time.monotonic() + t
        while True:
            if deadline is not None:
                self._rx.settimeout(max(0.0, deadline - time.monotonic()))
            else:
                self._rx.settimeout(None)
            try:
                data, src = self._rx.recvfrom(_RECV_BUF)
            except (TimeoutError, BlockingIOError) as exc:
                raise TimeoutError("timed out") from exc
            d = self._decode(data, src)
            if d is not None:
                return d
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError("timed out")

    def close(self) -> None:
        self._senders.clear()
        super().close()

    def __enter__(self) -> PacketCloudSocket:
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.local_ip}:{self.encap_port}"
        return f"<{type(self).__name__} {self.mode} {state}>"


class CircuitSocket(PacketCloudSocket):
    """A socket connected to one circuit (form 1). ``close()`` tears the circuit down."""

    def __init__(
        self,
        circuit: Circuit,
        local_ip: str,
        *,
        lookup: Any = None,
        dport: int = 0,
        lifetime: float = 60.0,
        **kw: Any,
    ) -> None:
        super().__init__(local_ip, **kw)
        self.dport = dport  #: the destination's application port
        self.lifetime = lifetime
        self._lookup = lookup
        self.renewals = 0
        self.circuit = circuit

    @property
    def circuit(self) -> Circuit:
        """The circuit this socket sends on (replaced when it is renewed)."""
        return self._circuit

    @circuit.setter
    def circuit(self, circuit: Circuit) -> None:
        self._circuit = circuit
        self._fast: Any = None  # the accelerator's sender for metadata 0 (made on first use)
        # renew when less than a third of the circuit's life is left
        self._renew_at = (
            circuit.expires - self.lifetime / 3
            if self._lookup is not None and circuit.expires
            else None
        )

    def send(self, payload: bytes, *, metadata: int = 0) -> int:
        """Send on the circuit; renews it first when less than a third of its life is left."""
        if self._renew_at is not None and time.time() > self._renew_at:
            self.renew()
        fast = self._fast
        if fast is not None and metadata == 0 and not self._closed:
            n: int = fast.send(payload)
            self.session.sent += 1
            return n
        if self._ax is not None and metadata == 0:
            self._fast = self._sender(self._circuit, 0, self.dport)
        return self.send_on(self._circuit, payload, metadata=metadata, dport=self.dport)

    def send_many(self, payloads: Sequence[bytes], *, metadata: int = 0) -> int:
        """Send each of ``payloads`` as its own datagram on the circuit (see
        :meth:`send_many_on`: ``sendmmsg`` batches with the accelerator); returns how many."""
        if self._renew_at is not None and time.time() > self._renew_at:
            self.renew()
        return self.send_many_on(self._circuit, payloads, metadata=metadata, dport=self.dport)

    def renew(self) -> None:
        """Ask the lookup service to extend the circuit's life."""
        if self._lookup is None:
            raise PcsockError("this circuit has no lookup service to renew it with")
        self.circuit = self._lookup.renew(self.circuit)
        self.renewals += 1

    def close(self) -> None:
        if not self._closed and self._lookup is not None and self.circuit.circuit_id:
            with contextlib.suppress(OSError):
                self._lookup.teardown(self.circuit)
        super().close()

    def __enter__(self) -> CircuitSocket:
        return self


class ServiceSocket(PacketCloudSocket):
    """A form-2 socket toward one destination and service ID (ToS flag set)."""

    def __init__(
        self, destination: str, service_id: int, local_ip: str, *, dport: int = 0, **kw: Any
    ) -> None:
        kw.setdefault("tos", wire.TOS_SERVICE)
        super().__init__(local_ip, **kw)
        self.destination = destination
        self.service_id = service_id
        self.dport = dport

    def send(self, payload: bytes, *, metadata: int = 0) -> int:
        return self.sendto_service(
            payload, self.destination, self.service_id, metadata=metadata, dport=self.dport
        )

    def __enter__(self) -> ServiceSocket:
        return self


def listen(
    local_ip: str,
    port: int = 0,
    *,
    mode: str = "udp",
    encap_port: int = wire.UDP_PORT,
    proto: int = wire.IPPROTO_PACKETCLOUD,
    timeout: float | None = None,
) -> PacketCloudSocket:
    """A PacketCloud endpoint on ``local_ip`` whose application port is ``port`` (the source
    port of what it sends; received datagrams carry their own ``dport``)."""
    s = PacketCloudSocket(local_ip, mode=mode, app_port=port, encap_port=encap_port, proto=proto)
    s.settimeout(timeout)
    return s


def open_circuit(
    destination: str,
    service: str,
    *,
    lookup: Any = None,
    psp: str | None = None,
    resolver: Any = None,
    sites: Sequence[str] | None = None,
    mode: str = "udp",
    local_ip: str | None = None,
    lifetime: float = 60.0,
    timeout: float | None = None,
    port: int = 0,
    sport: int = 0,
    encap_port: int = wire.UDP_PORT,
) -> CircuitSocket:
    """Create a circuit to ``destination`` through ``service`` and return a connected socket
    whose datagrams go to application port ``port`` there.

    The lookup service is ``lookup`` (a :class:`pcsock.lookup.LookupClient` or a
    ``(host, port)`` pair), or found by DNS: ``psp`` is the PSP's domain, ``resolver`` a
    :class:`pcsock.discovery.Resolver`. ``sites`` names the sites in order (None lets the PSP
    choose).
    """
    from pcsock.lookup import LookupClient, find_lookup

    if lookup is None:
        if psp is None or resolver is None:
            raise ValueError("give lookup=(host, port) or psp= and resolver= to find it in DNS")
        lookup = find_lookup(resolver, psp, service)
    if isinstance(lookup, tuple):
        lookup = LookupClient(lookup[0], lookup[1])
    src = local_ip or local_address_for(destination)
    circuit = lookup.create(
        destination=destination, service=service, source=src, sites=sites, lifetime=lifetime
    )
    try:
        s = CircuitSocket(
            circuit,
            src,
            lookup=lookup,
            mode=mode,
            dport=port,
            lifetime=lifetime,
            app_port=sport,
            encap_port=encap_port,
        )
    except BaseException:
        with contextlib.suppress(OSError):
            lookup.teardown(circuit)
        raise
    s.settimeout(timeout)
    return s


def service_socket(
    destination: str,
    service_id: int,
    *,
    mode: str = "udp",
    local_ip: str | None = None,
    port: int = 0,
    sport: int = 0,
    encap_port: int = wire.UDP_PORT,
    timeout: float | None = None,
) -> ServiceSocket:
    """A form-2 socket: ``service_id`` shim + ToS 0xAC toward the real ``destination``
    (application port ``port``)."""
    if not 0 <= service_id <= 0xFFFFFF:
        raise ValueError("a service ID is 24 bits")
    s = ServiceSocket(
        destination,
        service_id,
        local_ip or local_address_for(destination),
        dport=port,
        mode=mode,
        app_port=sport,
        encap_port=encap_port,
    )
    s.settimeout(timeout)
    return s


# --- trio ------------------------------------------------------------------------------------


class AsyncPacketCloudSocket(_Endpoint):
    """The trio flavour of :class:`PacketCloudSocket` (UDP or raw-IP mode; the same keywords).
    Circuit datagrams go out through the C accelerator's senders as in the blocking socket
    (``accel``), without blocking the event loop: a full socket buffer waits in trio."""

    def __init__(self, local_ip: str, **kw: Any) -> None:
        super().__init__(local_ip, **kw)
        rx, tx = self._rx, self._tx
        self._rx = trio.socket.from_stdlib_socket(rx)
        self._tx = self._rx if tx is rx else trio.socket.from_stdlib_socket(tx)

    async def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        await self._tx.sendto(data, self._dest(addr))

    async def send_on(
        self, circuit: Circuit, payload: bytes, *, metadata: int = 0, dport: int = 0
    ) -> int:
        if self._ax is not None:
            sender = self._sender(circuit, metadata, dport)
            while True:
                try:
                    n: int = sender.send_nowait(payload)
                    break
                except BlockingIOError:
                    await self._tx.wait_writable()
            self.session.sent += 1
            await trio.lowlevel.checkpoint()
            return n
        await self._send(*self._circuit_frame(circuit, payload, metadata, dport))
        return len(payload)

    async def sendto_service(self, payload: bytes, destination: str, service_id: int, *,
                             metadata: int = 0, dport: int = 0) -> int:  # fmt: skip
        await self._send(*self._service_frame(payload, destination, service_id, metadata, dport))
        return len(payload)

    async def reply(self, to: Datagram | str, payload: bytes, *, metadata: int = 0) -> int:
        await self._send(*self._reply_frame(to, payload, metadata))
        return len(payload)

    async def recv(self) -> Datagram:
        """The next PacketCloud datagram (use ``trio.fail_after`` for a timeout)."""
        while True:
            if self._closed:
                raise PcsockError("socket is closed")
            data, src = await self._rx.recvfrom(_RECV_BUF)
            d = self._decode(data, src)
            if d is not None:
                return d

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> AsyncPacketCloudSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _blocking(fn: Callable[[], _T]) -> _T:
    """Run blocking ``fn`` (a lookup-service call) in a new thread started from this one.

    Not ``trio.to_thread.run_sync``: trio keeps its worker threads in one process-wide cache,
    and a cached worker stays in the network namespace of the thread that started it, so a
    connection it opens can reach another namespace's address, or leave the host through its
    default route. A thread started here inherits this thread's namespace (a new thread gets
    the namespaces of the thread that starts it). As with ``to_thread.run_sync``, waiting is
    not cancellable: the call (bounded by the client's timeout) ends before cancellation acts.
    """
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc
        finally:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

    threading.Thread(target=run, name="pcsock-lookup", daemon=True).start()
    with trio.CancelScope(shield=True):
        await done.wait()
    if "error" in box:
        raise box["error"]
    return box["result"]


class AsyncCircuitSocket(AsyncPacketCloudSocket):
    """The trio flavour of :class:`CircuitSocket`."""

    def __init__(
        self, circuit: Circuit, local_ip: str, *, lookup: Any = None, dport: int = 0, **kw: Any
    ):
        super().__init__(local_ip, **kw)
        self.circuit = circuit
        self.dport = dport
        self._lookup = lookup

    async def send(self, payload: bytes, *, metadata: int = 0) -> int:
        return await self.send_on(self.circuit, payload, metadata=metadata, dport=self.dport)

    async def renew(self) -> None:
        if self._lookup is None:
            raise PcsockError("this circuit has no lookup service to renew it with")
        self.circuit = await _blocking(lambda: self._lookup.renew(self.circuit))

    async def aclose(self) -> None:
        if not self._closed and self._lookup is not None and self.circuit.circuit_id:
            with contextlib.suppress(OSError):
                await _blocking(lambda: self._lookup.teardown(self.circuit))
        self.close()

    async def __aenter__(self) -> AsyncCircuitSocket:
        return self


async def open_circuit_async(
    destination: str,
    service: str,
    *,
    lookup: Any,
    sites: Sequence[str] | None = None,
    mode: str = "udp",
    local_ip: str | None = None,
    lifetime: float = 60.0,
    port: int = 0,
    sport: int = 0,
    encap_port: int = wire.UDP_PORT,
) -> AsyncCircuitSocket:
    """trio: like :func:`open_circuit` (the lookup call runs in a thread of its own, started
    from the calling thread so that it shares its network namespace)."""
    from pcsock.lookup import LookupClient

    if isinstance(lookup, tuple):
        lookup = LookupClient(lookup[0], lookup[1])
    src = local_ip or local_address_for(destination)
    circuit = await _blocking(
        lambda: lookup.create(
            destination=destination, service=service, source=src, sites=sites, lifetime=lifetime
        )
    )
    return AsyncCircuitSocket(
        circuit, src, lookup=lookup, mode=mode, dport=port, app_port=sport, encap_port=encap_port
    )
