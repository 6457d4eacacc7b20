"""The lookup server's bounds (it runs on pcsock.httpserver, like the control API): a request
body over the limit is refused without reading the rest of it, and connections are capped per
address and in all (loopback, no root)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator

import pytest

from pcsock.lookup import LOOKUP_PATH, CircuitBroker, LookupServer


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


def _head(length: int) -> bytes:
    return (f"POST {LOOKUP_PATH} HTTP/1.1\r\nhost: lookup\r\ncontent-type: application/json\r\n"
            f"content-length: {length}\r\n\r\n").encode()  # fmt: skip


def _post(s: socket.socket, doc: object) -> None:
    body = json.dumps(doc).encode()
    s.sendall(_head(len(body)) + body)


def _answer(s: socket.socket) -> tuple[int, dict[str, object]]:
    resp = http.client.HTTPResponse(s)
    resp.begin()
    return resp.status, json.loads(resp.read())


def _sites(s: socket.socket) -> bool:
    _post(s, {"op": "sites"})
    status, doc = _answer(s)
    return status == 200 and doc["ok"] is True


def test_an_over_long_request_is_refused_before_it_ends(broker: CircuitBroker) -> None:
    with LookupServer(broker, "127.0.0.1", 0, max_body=1024) as srv:
        port = srv.address[1]
        with _connect(port) as s:
            assert _sites(s)
            s.sendall(_head(4096) + b"x" * 100)  # and the body never ends: no wait for it
            status, err = _answer(s)
            assert status == 413 and err["error"] == {  # type: ignore[comparison-overlap]
                "code": "body_too_large",
                "message": "bodies are limited to 1024 bytes (limits.max_body)",
            }
            assert s.recv(1) == b""  # then it closes the connection


def test_connections_are_capped_per_address_and_in_all(broker: CircuitBroker) -> None:
    with LookupServer(broker, "127.0.0.1", 0, max_connections=3, max_per_client=2) as srv:
        port = srv.address[1]
        held = [_connect(port), _connect(port)]
        assert all(_sites(s) for s in held)  # served: an answer proves it was admitted
        with _connect(port) as third:
            status, err = _answer(third)
            assert status == 429 and err["error"]["code"] == "too_many_connections"  # type: ignore[index]
            assert "2 connections from 127.0.0.1" in err["error"]["message"]  # type: ignore[index]
        other = _connect(port, "127.0.0.2")  # another address still gets in
        assert _sites(other)
        # at the cap in all, the least recently active idle connection makes room
        with _connect(port, "127.0.0.3") as fourth:
            assert _sites(fourth)
            assert held[0].recv(1) == b""  # closed by the server
            assert _sites(held[1]) and _sites(other)
        assert srv.refused == 1
        for s in (*held, other):
            s.close()
