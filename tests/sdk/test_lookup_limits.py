"""The lookup server's bounds: an over-long line is refused without reading the rest of it,
and connections are capped in all and per address (loopback, no root)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from pcsock.lookup import CircuitBroker, LookupServer
from tests.support import wait_until


@pytest.fixture
def broker() -> Iterator[CircuitBroker]:
    b = CircuitBroker("acme", [])
    yield b
    b.close()


def _connect(port: int, src: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def _line(s: socket.socket) -> dict[str, object]:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    return json.loads(buf)


def test_an_over_long_line_is_refused_before_it_ends(broker: CircuitBroker) -> None:
    with LookupServer(broker, "127.0.0.1", 0, max_line=1024) as srv:
        port = srv.address[1]
        with _connect(port) as s:
            s.sendall(json.dumps({"op": "sites"}).encode() + b"\n")
            assert _line(s)["ok"] is True
            s.sendall(b"x" * 4096)  # and the line never ends: the server must not wait for it
            err = _line(s)
            assert err == {"ok": False, "error": {
                "code": "bad_request", "message": "line longer than 1024 bytes"}}  # fmt: skip
            assert s.recv(1) == b""  # then it closes the connection


def test_connections_are_capped_in_all_and_per_address(broker: CircuitBroker) -> None:
    with LookupServer(broker, "127.0.0.1", 0, max_connections=3, max_per_client=2) as srv:
        port = srv.address[1]
        held = [_connect(port), _connect(port)]
        for s in held:  # served (an answer proves the connection was admitted)
            s.sendall(b'{"op": "sites"}\n')
            assert _line(s)["ok"] is True
        with _connect(port) as third:
            err = _line(third)
            assert err["error"]["code"] == "unavailable"  # type: ignore[index]
            assert "2 connections from 127.0.0.1" in err["error"]["message"]  # type: ignore[index]
        other = _connect(port, "127.0.0.2")  # another address still gets in
        other.sendall(b'{"op": "sites"}\n')
        assert _line(other)["ok"] is True
        with _connect(port, "127.0.0.3") as fourth:  # but the site-wide cap holds
            assert "limit of 3 connections" in _line(fourth)["error"]["message"]  # type: ignore[index]
        assert srv.refused == 2
        held[0].close()
        other.close()

        # a closed connection frees its slot
        def slot_free() -> bool:
            with _connect(port, "127.0.0.3") as again:
                again.sendall(b'{"op": "sites"}\n')
                return _line(again)["ok"] is True

        assert wait_until(slot_free, 10), "a slot never came free"
        held[1].close()
