"""The tree's one HTTP server: serve an app over HTTP/1.1 (or HTTPS) with trio and h11, within
limits. The site's control API (``pcsite_lite.control``) and the PSP's lookup service
(:mod:`pcsock.lookup`) both run on it.

The server is a thin adapter: h11 parses, the app answers (:class:`Request` in,
:class:`Response` out), h11 serialises. Everything a client can make it hold is bounded by the
app's ``limits`` (:class:`ServerLimits`, or any object with those attributes):

- **connections**: at most ``max_connections_per_client`` per address (more are answered 429
  ``too_many_connections`` and closed) and ``max_connections`` in all; at the cap the least
  recently active connection that is not being answered is closed to admit the new one, so
  idle connections cannot lock clients out (:class:`ConnectionTable`). The cap is also kept
  below the process's descriptor limit (raised soft -> hard at start), and an ``accept()``
  that fails for lack of descriptors or memory (``EMFILE``...) sheds an idle connection,
  backs off and keeps serving;
- **time**: ``idle_timeout`` to start a request, ``header_timeout`` to finish its headers,
  ``request_timeout`` to finish its body and to take the answer (slow-loris bounds);
- **size**: ``max_header_bytes`` (431) and ``max_body`` (413), checked while reading.

Protocol errors get the same JSON error document as application errors
(``{"error": {"code": ..., "message": ...}}``, :class:`HttpError`), then the connection
closes. With ``tls`` (an :class:`ssl.SSLContext`), every connection is a :class:`trio.SSLStream`.
The messages name the bounds by their site-config keys (``limits.max_body``...).
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import resource
import select
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final, Protocol

import h11
import trio

__all__ = [
    "Conn",
    "ConnectionTable",
    "HttpApp",
    "HttpError",
    "Request",
    "Response",
    "ServerLimits",
    "ServerStats",
    "raise_fd_limit",
    "retry_after_header",
    "serve",
    "serve_listeners",
    "tls_context",
]


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request as the app sees it (header names lower-case)."""

    method: str
    target: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    client: str = ""  #: the peer's address (rate limit of failed authentication)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()  #: extra headers, e.g. Retry-After

    def json(self) -> Any:
        return json.loads(self.body)


class HttpError(Exception):
    """An answer that refuses a request: an HTTP ``status`` plus a stable machine-readable
    ``code`` and a ``message`` for people; 429 answers carry ``Retry-After``."""

    def __init__(self, code: str, message: str, *, status: int,
                 retry_after: float | None = None) -> None:  # fmt: skip
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after  #: seconds, sent as ``Retry-After`` (rounded up)
        super().__init__(f"{code}: {message}")

    def body(self) -> dict[str, dict[str, str]]:
        """The JSON error document."""
        return {"error": {"code": self.code, "message": self.message}}


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """The bounds the server itself enforces (the site's ``[limits]`` has these and more)."""

    #: Largest request body (bytes).
    max_body: int = 1 << 20
    #: Request line plus headers (bytes); more is 431 ``headers_too_large``.
    max_header_bytes: int = 16 * 1024
    #: Open connections in all; at the cap the least recently active idle one is closed.
    max_connections: int = 1024
    #: Open connections from one client address; more are refused with 429.
    max_connections_per_client: int = 32
    #: Seconds a connection may wait for (the first byte of) its next request.
    idle_timeout: float = 15.0
    #: Seconds from a request's first byte to the end of its headers.
    header_timeout: float = 5.0
    #: Seconds from a request's first byte to the end of its body, and to send the answer.
    request_timeout: float = 30.0


DEFAULT_LIMITS: Final = ServerLimits()


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` takes whole seconds: round up, at least 1."""
    return str(max(1, math.ceil(seconds)))


# --- connections ----------------------------------------------------------------------------


class Conn:
    """One admitted connection: its client address and a way to close it from outside."""

    __slots__ = ("busy", "cancel", "client", "evicted", "gone")

    def __init__(self, client: str, cancel: Callable[[], None]) -> None:
        self.client = client
        self.cancel = cancel
        self.busy = False  #: a request is being answered (never evicted then)
        self.evicted = False  #: closed by the table to make room
        self.gone = False  #: no longer counted (evicted or released)


class ConnectionTable:
    """Admission of connections under a site-wide and a per-address cap.

    A new connection from an address at ``per_client`` is refused. At ``total``, the least
    recently active connection that is not answering a request is evicted to make room (an
    idle flood cannot lock legitimate clients out); only when every connection is busy is the
    new one refused. Connections mark activity with :meth:`touch` and :meth:`set_busy`.
    """

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._per: dict[str, int] = {}
        self._lru: OrderedDict[Conn, None] = OrderedDict()  # evictable, oldest first
        self._open = 0  #: admitted and not evicted nor released
        self.evictions = 0
        self.refusals = 0

    def __len__(self) -> int:
        return self._open

    def count(self, client: str) -> int:
        return self._per.get(client, 0)

    def admit(self, client: str, cancel: Callable[[], None]) -> tuple[Conn | None, str]:
        """A :class:`Conn`, or None and the reason it was refused."""
        if self._per.get(client, 0) >= self.per_client:
            self.refusals += 1
            return None, (
                f"{self.per_client} connections from {client} are open "
                "(limits.max_connections_per_client)"
            )
        while self._open >= self.total:
            if not self.evict_oldest():
                self.refusals += 1
                return None, f"all {self.total} connections are busy (limits.max_connections)"
        conn = Conn(client, cancel)
        self._per[client] = self._per.get(client, 0) + 1
        self._lru[conn] = None
        self._open += 1
        return conn, ""

    def evict_oldest(self) -> bool:
        """Close the least recently active non-busy connection; False if there is none."""
        if not self._lru:
            return False
        conn, _ = self._lru.popitem(last=False)
        conn.evicted = True
        self._forget(conn)
        self.evictions += 1
        conn.cancel()
        return True

    def touch(self, conn: Conn) -> None:
        if conn in self._lru:
            self._lru.move_to_end(conn)

    def set_busy(self, conn: Conn, busy: bool) -> None:
        if conn.gone:
            return
        conn.busy = busy
        if busy:
            self._lru.pop(conn, None)
        else:
            self._lru[conn] = None  # most recently active

    def release(self, conn: Conn) -> None:
        if not conn.gone:
            self._lru.pop(conn, None)
            self._forget(conn)

    def _forget(self, conn: Conn) -> None:
        conn.gone = True
        self._open -= 1
        n = self._per.get(conn.client, 0) - 1
        if n > 0:
            self._per[conn.client] = n
        else:
            self._per.pop(conn.client, None)


class HttpApp(Protocol):
    """What the server serves (the site's ``ControlApp``, the lookup service's app...).

    If the object also has an ``async settle()`` method, the server awaits it after each
    request and before answering (the daemon waits there until every worker applied the
    change, so a PSP may send on a circuit as soon as its install call returned). If it has
    ``offload(req) -> bool``, requests it names are handled in a worker thread (they must not
    touch state the event loop uses). Its ``limits`` are read at every connection, so a
    reload changes them in place.
    """

    @property
    def max_body(self) -> int: ...

    @property
    def limits(self) -> ServerLimits: ...

    def handle(self, req: Request) -> Response: ...


_SERVER: Final = b"packetcloud/1"
#: offloaded requests (``app.offload(req)`` true) handled at once by default; the rest queue
OFFLOAD_THREADS: Final = 2
#: accept() errors that mean "out of descriptors/memory right now": shed, back off, go on.
_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Descriptors kept free for everything but connections (workers, TUN, FIS, logs).
FD_RESERVE: Final = 256
#: Refusals answered at once (TLS ones need a handshake); more are closed without an answer.
_MAX_REFUSING: Final = 64
#: Connections accepted per wakeup of the accept loop.
_ACCEPT_BATCH: Final = 64
#: Back-off after an accept() that found no descriptor (doubling up to the max), seconds.
_BACKOFF_MIN: Final = 0.005
_BACKOFF_MAX: Final = 0.25
#: accept() errors about the one connection being accepted (trio's list): skip it.
_IGNORABLE_ACCEPT_ERRNOS: Final = frozenset({
    errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENOPROTOOPT,
    errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH,
})  # fmt: skip


@dataclass
class ServerStats:
    """What the server did, for tests, logs and the flood benchmark."""

    accepted: int = 0
    refused: int = 0  #: over a connection cap, answered 429 (or closed when too many)
    evicted: int = 0  #: closed to make room at the site-wide cap
    accept_errors: int = 0  #: EMFILE & co. survived
    timeouts: int = 0
    open: int = 0  #: connections held now
    cap: int = 0  #: the effective site-wide connection cap


def raise_fd_limit() -> int:
    """Raise the descriptor soft limit to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_cap(limits: ServerLimits, fd_soft: int) -> int:
    """The site-wide cap in force: the configured one, kept ``FD_RESERVE`` (and a quarter of
    the descriptors) below the descriptor limit."""
    return max(1, min(limits.max_connections, fd_soft - max(FD_RESERVE, fd_soft // 4)))


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for the control API: TLS 1.2+, the site's certificate chain and key."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


# --- one connection -------------------------------------------------------------------------


def _headers(resp: Response) -> list[tuple[bytes, bytes]]:
    if resp.status == 204:
        out = [(b"server", _SERVER)]
    else:
        out = [
            (b"content-type", resp.content_type.encode()),
            (b"content-length", str(len(resp.body)).encode()),
            (b"server", _SERVER),
            (b"cache-control", b"no-store"),
        ]
    return out + [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers]


async def _send(stream: trio.abc.Stream, conn: h11.Connection, resp: Response) -> None:
    data = conn.send(h11.Response(status_code=resp.status, headers=_headers(resp))) or b""
    if resp.status != 204 and resp.body:
        data += conn.send(h11.Data(data=resp.body)) or b""
    await stream.send_all(data + (conn.send(h11.EndOfMessage()) or b""))


def _error_headers(err: HttpError, body: bytes) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        (b"server", _SERVER),
    ]
    if err.retry_after is not None:
        headers.append((b"retry-after", retry_after_header(err.retry_after).encode()))
    return headers


def _error_bytes(err: HttpError) -> bytes:
    """A complete ``Connection: close`` error response, outside any h11 connection."""
    body = json.dumps(err.body()).encode()
    head = f"HTTP/1.1 {err.status} {HTTPStatus(err.status).phrase}\r\n".encode()
    head += b"".join(k + b": " + v + b"\r\n" for k, v in _error_headers(err, body))
    return head + b"\r\n" + body


async def _fail(stream: trio.abc.Stream, conn: h11.Connection, err: HttpError) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = json.dumps(err.body()).encode()
    try:
        data = conn.send(h11.Response(status_code=err.status, headers=_error_headers(err, body)))
        data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
        await stream.send_all(data + (conn.send(h11.EndOfMessage()) or b""))
    except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


class _Connection:
    """Reads requests off one stream within the limits, answers them, keeps the table told."""

    def __init__(self, server: _Server, stream: trio.abc.Stream, rec: Conn,
                 scope: trio.CancelScope) -> None:  # fmt: skip
        self.server = server
        self.stream = stream
        self.rec = rec
        self.scope = scope
        lim = server.limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=lim.max_header_bytes)

    async def _receive(self) -> None:
        chunk = await self.stream.receive_some(65536)
        self.h11.receive_data(bytes(chunk))  # b"" marks the end of the stream

    async def _next_request(self, lim: ServerLimits) -> Request | None:
        """One complete request, or None when the client closed or stayed idle too long."""
        conn = self.h11
        # idle: nothing of the next request has arrived yet
        event = conn.next_event()
        if event is h11.NEED_DATA and not conn.trailing_data[0]:
            with trio.move_on_after(lim.idle_timeout) as idle:
                while event is h11.NEED_DATA and not conn.trailing_data[0]:
                    await self._receive()  # (h11 drops blank lines between requests)
                    event = conn.next_event()
            if idle.cancelled_caught:
                self.server.stats.timeouts += 1
                return None
        self.server.table.touch(self.rec)
        start = trio.current_time()
        # the head, within header_timeout of its first byte
        with trio.fail_after(min(lim.header_timeout, lim.request_timeout)):
            while event is h11.NEED_DATA:
                await self._receive()
                event = conn.next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")
        head = event
        # h11 bounds a head still arriving; one that arrived whole is measured here
        size = len(head.method) + len(head.target) + 12
        size += sum(len(k) + len(v) + 4 for k, v in head.headers)
        if size > lim.max_header_bytes:
            raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        clen = dict(head.headers).get(b"content-length")
        if clen is not None and int(clen) > lim.max_body:
            raise HttpError(
                "body_too_large",
                f"bodies are limited to {lim.max_body} bytes (limits.max_body)",
                status=413,
            )
        body = bytearray()
        with trio.fail_at(start + lim.request_timeout):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    await self._receive()
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > lim.max_body:
                        raise HttpError("body_too_large", f"bodies are limited to {lim.max_body} "
                                        "bytes (limits.max_body)", status=413)  # fmt: skip
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
        return Request(
            method=head.method.decode("ascii", "replace"),
            target=head.target.decode("latin-1"),
            headers=headers,
            body=bytes(body),
            client=self.rec.client,
        )

    async def run(self) -> None:
        app, conn, table = self.server.app, self.h11, self.server.table
        while True:
            lim = self.server.limits
            try:
                req = await self._next_request(lim)
            except trio.TooSlowError:
                self.server.stats.timeouts += 1
                await self._fail_in_time(HttpError(
                    "request_timeout", f"the request did not arrive in time "
                    f"(limits.header_timeout {lim.header_timeout:g} s, limits.request_timeout "
                    f"{lim.request_timeout:g} s)", status=408,
                ), lim)  # fmt: skip
                return
            except h11.RemoteProtocolError as exc:
                if exc.error_status_hint == 431:
                    err = HttpError(
                        "headers_too_large",
                        f"request head over {lim.max_header_bytes} bytes (limits.max_header_bytes)",
                        status=431,
                    )
                else:
                    err = HttpError("bad_request", f"HTTP error: {exc}", status=400)
                await self._fail_in_time(err, lim)
                return
            except HttpError as err:
                await self._fail_in_time(err, lim)
                return
            if req is None:
                return
            table.set_busy(self.rec, True)
            offload = getattr(app, "offload", None)
            if offload is not None and offload(req):
                # e.g. a service upload whose check may take a while: the event loop (other
                # requests, the workers' heartbeats) must not wait for it
                resp = await self.server.offload(app.handle, req)
            else:
                resp = app.handle(req)
            settle = getattr(app, "settle", None)
            if settle is not None:  # e.g. wait until workers applied a state change
                await settle()
            with trio.move_on_after(lim.request_timeout):
                await _send(self.stream, conn, resp)
            table.set_busy(self.rec, False)
            if conn.our_state is not h11.DONE:  # the answer did not go out in time
                return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _fail_in_time(self, err: HttpError, lim: ServerLimits) -> None:
        with trio.move_on_after(min(lim.request_timeout, 5.0)):
            await _fail(self.stream, self.h11, err)

    async def evicted(self) -> None:
        """Closed to make room: a client that was mid-request is told why."""
        if self.h11.their_state is h11.IDLE and not self.h11.trailing_data[0]:
            return
        with trio.CancelScope(deadline=trio.current_time() + 0.2, shield=True):
            await _fail(self.stream, self.h11, HttpError(
                "too_many_connections", "the server is at its connection limit "
                "(limits.max_connections); this connection was the least recently active",
                status=429, retry_after=1.0,
            ))  # fmt: skip


# --- the server -----------------------------------------------------------------------------


class _Waiting:
    """Accepted connections that have not sent a byte yet: one private epoll set, no task
    each. Under an idle-connection flood this is where the flood lives, so holding, evicting
    and timing one out costs a few system calls, not a task with its parser and streams. A
    connection gets its task when its first bytes (or its close) arrive."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.ep = select.epoll()
        self.socks: OrderedDict[int, tuple[socket.socket, Conn, float]] = OrderedDict()

    def add(self, sock: socket.socket, rec: Conn) -> None:
        fd = sock.fileno()
        try:
            self.ep.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        except OSError:
            self.server.table.release(rec)
            sock.close()
            return
        self.socks[fd] = (sock, rec, trio.current_time())
        rec.cancel = lambda: self.drop(fd)  # evicted while waiting: just close it

    def drop(self, fd: int) -> None:
        entry = self.socks.pop(fd, None)
        if entry is not None:
            self.ep.unregister(fd)
            entry[0].close()

    async def run(self, nursery: trio.Nursery) -> None:
        server = self.server
        try:
            while True:
                with trio.move_on_after(0.5):
                    await trio.lowlevel.wait_readable(self.ep.fileno())
                for fd, _ev in self.ep.poll(0, _ACCEPT_BATCH):
                    entry = self.socks.pop(fd, None)
                    if entry is None:
                        continue
                    self.ep.unregister(fd)
                    sock, rec, _ = entry
                    server.table.touch(rec)
                    scope = trio.CancelScope()
                    rec.cancel = scope.cancel
                    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                    nursery.start_soon(server._run, stream, rec, scope)
                self._expire()
                await trio.lowlevel.checkpoint()
        finally:
            for sock, _, _ in self.socks.values():
                sock.close()
            self.socks.clear()
            self.ep.close()

    def _expire(self) -> None:
        """Close connections that stayed silent for ``idle_timeout`` (oldest first)."""
        deadline = trio.current_time() - self.server.limits.idle_timeout
        while self.socks:
            fd, (_sock, rec, since) = next(iter(self.socks.items()))
            if since > deadline:
                break
            self.drop(fd)
            self.server.table.release(rec)
            self.server.stats.timeouts += 1
        self.server.stats.open = len(self.server.table)


def _lower_priority(nice: int) -> None:
    """Run this thread at ``nice`` (Linux: a thread's own nice value; elsewhere, or when
    refused, it keeps the process's)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (OSError, AttributeError):
        pass


class _Server:
    def __init__(self, app: HttpApp, tls: ssl.SSLContext | None, log: Callable[[str], None],
                 offload_threads: int = OFFLOAD_THREADS,
                 offload_nice: int | None = None) -> None:  # fmt: skip
        self.app = app
        self.tls = tls
        self.log = log
        # the server's own threads (not trio's process-wide cache): they are started from the
        # server's thread, so they share its network namespace, and die with the server.
        # ``offload_nice``: their nice value; at 19, a request on the event loop that wakes
        # while one of them computes on the same CPU preempts it at once (at the same nice
        # value the scheduler may let it finish its slice, a few ms)
        init = None if offload_nice is None else functools.partial(_lower_priority, offload_nice)
        self.pool = ThreadPoolExecutor(offload_threads, thread_name_prefix="httpserver",
                                       initializer=init)  # fmt: skip
        self.fd_soft = raise_fd_limit()
        lim = self.limits
        self.table = ConnectionTable(connection_cap(lim, self.fd_soft),
                                     lim.max_connections_per_client)  # fmt: skip
        self.stats = ServerStats(cap=self.table.total)
        self.waiting = _Waiting(self)
        self._refusing = 0
        self._last_accept_log = 0.0

    @property
    def limits(self) -> ServerLimits:
        return getattr(self.app, "limits", DEFAULT_LIMITS)

    async def offload(self, fn: Callable[[Request], Response], req: Request) -> Response:
        """``fn(req)`` in one of the server's threads (at most ``offload_threads`` at once,
        the rest queue); the event loop goes on meanwhile."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_f: Future[Response]) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        fut = self.pool.submit(fn, req)
        fut.add_done_callback(wake)
        await done.wait()
        return fut.result()

    def _update_caps(self) -> None:
        lim = self.limits
        self.table.total = connection_cap(lim, self.fd_soft)
        self.table.per_client = lim.max_connections_per_client
        self.stats.cap = self.table.total

    async def accept_loop(self, listener: trio.abc.Listener[Any], nursery: trio.Nursery) -> None:
        if isinstance(listener, trio.SocketListener):
            await self._accept_batches(listener, nursery)
        else:
            await self._accept_each(listener, nursery)

    async def _accept_batches(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """accept() until the queue is empty (up to ``_ACCEPT_BATCH``), then let the
        connections run: under a connection flood one wakeup admits, evicts or refuses many,
        so a legitimate client does not wait a scheduler round per connection ahead of it."""
        raw = socket.socket(fileno=os.dup(listener.socket.fileno()))  # the same listening socket
        raw.setblocking(False)
        backoff = _BACKOFF_MIN
        try:
            while True:
                await trio.lowlevel.wait_readable(raw)
                for _ in range(_ACCEPT_BATCH):
                    try:
                        sock, peer = raw.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:
                        if exc.errno not in _CAPACITY_ERRNOS:
                            if exc.errno in _IGNORABLE_ACCEPT_ERRNOS:
                                continue
                            raise
                        backoff = await self._out_of_capacity(exc, backoff)
                        break
                    backoff = _BACKOFF_MIN
                    sock.setblocking(False)  # (accepted sockets start out blocking)
                    self._admit(sock, peer[0], nursery)
                await trio.lowlevel.checkpoint()
        finally:
            raw.close()

    async def _accept_each(self, listener: trio.abc.Listener[Any], nursery: trio.Nursery) -> None:
        backoff = _BACKOFF_MIN
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _CAPACITY_ERRNOS:
                    raise
                backoff = await self._out_of_capacity(exc, backoff)
                continue
            backoff = _BACKOFF_MIN
            try:
                client = stream.socket.getpeername()[0]
            except OSError:
                stream.socket.close()
                continue
            self._admit(stream, client, nursery)

    async def _out_of_capacity(self, exc: OSError, backoff: float) -> float:
        """accept() found no descriptor or memory: free one, wait a little, keep serving."""
        self.stats.accept_errors += 1
        self.table.evict_oldest()
        self.stats.evicted = self.table.evictions
        now = time.monotonic()
        if now - self._last_accept_log > 5.0:
            self._last_accept_log = now
            self.log(f"HTTP server: accept() failed ({errno.errorcode.get(exc.errno or 0)}); "
                     f"{len(self.table)} connections open, shedding idle ones and retrying "
                     f"({self.stats.accept_errors} so far)")  # fmt: skip
        await trio.sleep(backoff)
        return min(backoff * 2, _BACKOFF_MAX)

    def _admit(self, conn: socket.socket | trio.SocketStream, client: str,
               nursery: trio.Nursery) -> None:  # fmt: skip
        """Admit (a task serves it), or refuse, one accepted connection."""
        self.stats.accepted += 1
        self._update_caps()
        scope = trio.CancelScope()
        rec, why = self.table.admit(client, scope.cancel)
        if rec is None:
            self.stats.refused += 1
            self._refuse(conn, why, nursery)
            return
        self.stats.evicted = self.table.evictions
        self.stats.open = len(self.table)
        if isinstance(conn, socket.socket):
            self.waiting.add(conn, rec)  # a task once it sends something
        else:
            nursery.start_soon(self._run, conn, rec, scope)

    def _refuse(self, conn: socket.socket | trio.SocketStream, why: str,
                nursery: trio.Nursery) -> None:  # fmt: skip
        err = HttpError("too_many_connections", why, status=429, retry_after=1.0)
        sock = conn.socket if isinstance(conn, trio.SocketStream) else conn
        if self.tls is None:
            # a fresh socket's send buffer is empty: answer without waiting, then close
            try:
                os.write(sock.fileno(), _error_bytes(err))
                _drain_and_shutdown(sock)
            except OSError:
                pass
            sock.close()
            return
        if self._refusing >= _MAX_REFUSING:
            sock.close()
            return
        self._refusing += 1
        if isinstance(conn, socket.socket):
            conn = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
        nursery.start_soon(self._refuse_tls, conn, err)

    async def _refuse_tls(self, stream: trio.SocketStream, err: HttpError) -> None:
        try:
            with trio.move_on_after(1.0):
                tls = trio.SSLStream(stream, self.tls, server_side=True, https_compatible=True)  # type: ignore[arg-type]
                try:
                    await tls.send_all(_error_bytes(err))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
        finally:
            self._refusing -= 1
            stream.socket.close()

    async def _run(self, raw: trio.SocketStream, rec: Conn, scope: trio.CancelScope) -> None:
        stream: trio.abc.Stream = raw
        if self.tls is not None:
            stream = trio.SSLStream(raw, self.tls, server_side=True, https_compatible=True)
        handler = _Connection(self, stream, rec, scope)
        try:
            with scope:
                try:
                    await handler.run()
                except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError,
                        ssl.SSLError):  # fmt: skip
                    pass
            if rec.evicted:
                try:
                    await handler.evicted()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                        h11.LocalProtocolError):  # fmt: skip
                    pass
        finally:
            self.table.release(rec)
            self.stats.open = len(self.table)
            if self.tls is None:
                try:
                    _drain_and_shutdown(raw.socket)
                except OSError:
                    pass
            raw.socket.close()  # never await a TLS close_notify from a client that left


def _drain_and_shutdown(sock: trio.socket.SocketType | socket.socket) -> None:
    """Read what the client already sent (so close() does not reset the answer away), then
    half-close. The socket is non-blocking: nothing here waits."""
    fd = sock.fileno()
    for _ in range(4):
        try:
            if not os.read(fd, 65536):
                break
        except (BlockingIOError, InterruptedError):
            break
    sock.shutdown(socket.SHUT_WR)


async def serve_listeners(
    app: HttpApp,
    listeners: list[trio.SocketListener],
    *,
    tls: ssl.SSLContext | None = None,
    log: Callable[[str], None] | None = None,
    stats: list[ServerStats] | None = None,
    offload_threads: int = OFFLOAD_THREADS,
    offload_nice: int | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on already-bound listeners until cancelled (``stats``, if given, gets
    the server's :class:`ServerStats` appended; ``offload_threads`` requests the app
    offloads are handled at once, in threads at nice value ``offload_nice`` if given)."""
    server = _Server(app, tls, log or (lambda msg: None), offload_threads, offload_nice)
    if stats is not None:
        stats.append(server.stats)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.waiting.run, nursery)
            for ln in listeners:
                nursery.start_soon(server.accept_loop, ln, nursery)
            task_status.started(listeners)
    finally:
        server.pool.shutdown(wait=False, cancel_futures=True)


async def serve(
    app: HttpApp,
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    log: Callable[[str], None] | None = None,
    stats: list[ServerStats] | None = None,
    on_ready: Callable[[int], None] | None = None,
    offload_threads: int = OFFLOAD_THREADS,
    offload_nice: int | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind ``host:port`` (port 0 picks one), report the port, serve until cancelled."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    if on_ready is not None:
        on_ready(bound)
    task_status.started(bound)
    await serve_listeners(app, listeners, tls=tls, log=log, stats=stats,
                          offload_threads=offload_threads, offload_nice=offload_nice)  # fmt: skip
