"""Serve a :class:`~.app.HttpApp` over HTTP/1.1 with trio and h11 (keep-alive, limits).

The server is a thin adapter: h11 parses, the app answers, h11 serialises. Protocol errors
(bad request line, oversized body, idle or slow clients) get the same JSON error document as
application errors, then the connection closes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final, Protocol

import h11
import trio

from .app import Request, Response
from .errors import ApiError

__all__ = ["HttpApp", "serve", "serve_listeners"]


class HttpApp(Protocol):
    """What the server serves: :class:`~.app.ControlApp` or anything that dispatches to one.

    If the object also has an ``async settle()`` method, the server awaits it after each
    request and before answering (the daemon waits there until every worker applied the
    change, so a PSP may send on a circuit as soon as its install call returned).
    """

    @property
    def max_body(self) -> int: ...

    def handle(self, req: Request) -> Response: ...


#: Seconds a client may take to send one complete request (slow-loris bound).
REQUEST_TIMEOUT: Final = 10.0
#: Seconds an idle keep-alive connection is held.
IDLE_TIMEOUT: Final = 30.0
MAX_HEADER_BYTES: Final = 16 * 1024
_SERVER: Final = b"pcsite-control/1"


async def _send(stream: trio.SocketStream, conn: h11.Connection, resp: Response) -> None:
    headers = [
        (b"content-type", resp.content_type.encode()),
        (b"content-length", str(len(resp.body)).encode()),
        (b"server", _SERVER),
        (b"cache-control", b"no-store"),
    ]
    if resp.status == 204:
        headers = [(b"server", _SERVER)]
    data = conn.send(h11.Response(status_code=resp.status, headers=headers))
    if data:
        await stream.send_all(data)
    if resp.status != 204 and resp.body:
        await stream.send_all(conn.send(h11.Data(data=resp.body)) or b"")
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


async def _read_request(
    stream: trio.SocketStream, conn: h11.Connection, max_body: int
) -> Request | None:
    """One complete request, or None when the client closed cleanly."""
    req: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            chunk = await stream.receive_some(65536)
            conn.receive_data(chunk)
            continue
        if isinstance(event, h11.ConnectionClosed):
            return None
        if isinstance(event, h11.Request):
            req = event
            clen = dict(event.headers).get(b"content-length")
            if clen is not None and int(clen) > max_body:
                raise ApiError("body_too_large", f"bodies are limited to {max_body} bytes")
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                raise ApiError("body_too_large", f"bodies are limited to {max_body} bytes")
        elif isinstance(event, h11.EndOfMessage):
            assert req is not None
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.headers}
            return Request(
                method=req.method.decode("ascii", "replace"),
                target=req.target.decode("latin-1"),
                headers=headers,
                body=bytes(body),
            )


async def _handle_connection(app: HttpApp, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    try:
        while True:
            timeout = IDLE_TIMEOUT if conn.their_state is h11.IDLE else REQUEST_TIMEOUT
            try:
                with trio.fail_after(timeout):
                    req = await _read_request(stream, conn, app.max_body)
                    if req is None:
                        return
            except trio.TooSlowError:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE) and conn.their_state not in (
                    h11.IDLE,
                    h11.DONE,
                ):
                    await _fail(stream, conn, ApiError("bad_request", "request timed out"))
                return
            except h11.RemoteProtocolError as exc:
                await _fail(stream, conn, ApiError("bad_request", f"HTTP error: {exc}"))
                return
            except ApiError as err:
                await _fail(stream, conn, err)
                return
            resp = app.handle(req)
            settle = getattr(app, "settle", None)
            if settle is not None:  # e.g. wait until workers applied a state change
                await settle()
            await _send(stream, conn, resp)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
        return
    finally:
        await stream.aclose()


async def _fail(stream: trio.SocketStream, conn: h11.Connection, err: ApiError) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = json.dumps(err.body()).encode()
    try:
        data = conn.send(
            h11.Response(
                status_code=err.status,
                headers=[
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    (b"server", _SERVER),
                ],
            )
        )
        await stream.send_all((data or b"") + (conn.send(h11.Data(data=body)) or b""))
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
    except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def serve_listeners(
    app: HttpApp,
    listeners: list[trio.SocketListener],
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on already-bound listeners until cancelled."""

    async def handler(stream: trio.SocketStream) -> None:
        await _handle_connection(app, stream)

    await trio.serve_listeners(handler, listeners, task_status=task_status)


async def serve(
    app: HttpApp,
    host: str,
    port: int,
    *,
    on_ready: Callable[[int], None] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind ``host:port`` (port 0 picks one), report the port, serve until cancelled."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    if on_ready is not None:
        on_ready(bound)
    task_status.started(bound)
    await serve_listeners(app, listeners)
