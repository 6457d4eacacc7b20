"""The lookup client's connection handling against scripted HTTP servers (loopback, no root):
which failures it retries (only a kept connection the server closed before answering), and
that no failure leaves an answer on the connection for the next call to read."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import pytest

from pcsock.lookup import LookupClient, LookupServiceError

OK = b'{"ok": true}'

#: a handler gets the connection's number (0, 1, ...) and its file; it returns when done
Handler = Callable[[int, BinaryIO], None]


class Scripted:
    """A TCP server on loopback whose connections run ``handler``; records every request."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[tuple[int, dict[str, Any]]] = []  # (connection, request)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.release = threading.Event()  # handlers that hang wait on this
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(n, conn), daemon=True).start()
            n += 1

    def _run(self, n: int, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            try:
                self.handler(n, f)  # type: ignore[arg-type]
            except OSError:
                pass

    def read(self, n: int, f: BinaryIO) -> bool:
        """Read one HTTP request (head and Content-Length body); record its JSON body."""
        line = f.readline()
        if not line:
            return False
        length = 0
        while (header := f.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = header.decode().partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        self.requests.append((n, json.loads(f.read(length))))
        return True


@contextmanager
def scripted(handler: Callable[[Scripted, int, BinaryIO], None]) -> Iterator[Scripted]:
    srv = Scripted(lambda n, f: handler(srv, n, f))
    try:
        yield srv
    finally:
        srv.release.set()
        srv.sock.close()


def reply(f: BinaryIO, body: bytes, *, length: int | None = None) -> None:
    """An HTTP answer carrying ``body`` (announced as ``length`` bytes if given)."""
    head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    head += f"content-length: {len(body) if length is None else length}\r\n\r\n"
    f.write(head.encode() + body)
    f.flush()


def test_a_kept_connection_the_server_closed_is_replaced_and_the_request_sent_once() -> None:
    def handler(srv: Scripted, n: int, f: BinaryIO) -> None:
        srv.read(n, f)
        reply(f, OK)  # then close, as the server's idle timeout does

    with scripted(handler) as srv:
        client = LookupClient("127.0.0.1", srv.port, timeout=5)
        try:
            assert client.call({"op": "sites", "i": 1}) == {"ok": True}
            assert client.call({"op": "sites", "i": 2}) == {"ok": True}
        finally:
            client.close()
        assert srv.requests == [(0, {"op": "sites", "i": 1}), (1, {"op": "sites", "i": 2})]


def test_no_answer_in_time_is_not_retried_and_a_late_answer_is_never_read() -> None:
    def handler(srv: Scripted, n: int, f: BinaryIO) -> None:
        while srv.read(n, f):
            if n == 0:  # the first connection answers late (after the client gave up)
                srv.release.wait(10)
                reply(f, b'{"ok": true, "late": 1}')
            else:
                reply(f, b'{"ok": true, "fresh": 1}')

    with scripted(handler) as srv:
        client = LookupClient("127.0.0.1", srv.port, timeout=0.3)
        try:
            with pytest.raises(LookupServiceError) as e:
                client.call({"op": "create", "i": 1})
            assert e.value.code == "unavailable" and "no answer" in e.value.message
            # create is not idempotent: it reached the server exactly once
            assert srv.requests == [(0, {"op": "create", "i": 1})]
            srv.release.set()  # the late answer goes out now, to a connection already closed
            client.timeout = 5
            assert client.call({"op": "sites", "i": 2}) == {"ok": True, "fresh": 1}
        finally:
            client.close()
        assert srv.requests[-1] == (1, {"op": "sites", "i": 2})


def test_a_fresh_connection_closed_without_an_answer_is_not_retried() -> None:
    def handler(srv: Scripted, n: int, f: BinaryIO) -> None:
        srv.read(n, f)  # and close without answering

    with scripted(handler) as srv:
        client = LookupClient("127.0.0.1", srv.port, timeout=5)
        with pytest.raises(LookupServiceError) as e:
            client.call({"op": "create"})
        assert e.value.code == "unavailable"
        assert srv.requests == [(0, {"op": "create"})]


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"[1, 2]", "not a JSON object"),  # an HTTP answer, not a JSON object
        (b"garbage\r\n\r\n", "not an HTTP answer"),  # not HTTP at all
        (b'{"ok": tr', "cut short"),  # fewer bytes than announced, then closed
    ],
)
def test_a_garbled_answer_is_a_bad_response_and_drops_the_connection(
    answer: bytes, why: str
) -> None:
    def handler(srv: Scripted, n: int, f: BinaryIO) -> None:
        while srv.read(n, f):
            if n > 0:
                reply(f, OK)
            elif why == "cut short":
                reply(f, answer, length=100)
                return  # closes mid-body
            elif why == "not an HTTP answer":
                f.write(answer)
                reply(f, b'{"ok": true, "stale": 1}')  # which the next call must not take
            else:  # a valid answer follows, which the next call must not take
                reply(f, answer)
                reply(f, b'{"ok": true, "stale": 1}')

    with scripted(handler) as srv:
        client = LookupClient("127.0.0.1", srv.port, timeout=5)
        try:
            with pytest.raises(LookupServiceError) as e:
                client.call({"op": "sites"})
            assert e.value.code == "bad_response" and why in e.value.message
            # the next call goes over a new connection, not the rest of the garbled stream
            assert client.call({"op": "sites"}) == {"ok": True}
        finally:
            client.close()
        assert [n for n, _ in srv.requests] == [0, 1]


def test_an_http_refusal_is_a_lookup_error_with_the_servers_message() -> None:
    def handler(srv: Scripted, n: int, f: BinaryIO) -> None:
        srv.read(n, f)
        body = b'{"error": {"code": "too_many_connections", "message": "2 connections open"}}'
        f.write(b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: %d\r\n\r\n" % len(body))
        f.write(body)
        f.flush()

    with scripted(handler) as srv:
        client = LookupClient("127.0.0.1", srv.port, timeout=5)
        with pytest.raises(LookupServiceError) as e:
            client.call({"op": "sites"})
        assert (e.value.code, e.value.message) == ("unavailable", "2 connections open")
        client.close()
