"""Every control API limit answers a clear 4xx with a reason (never a 500, never a hang), the
server survives connection floods and descriptor exhaustion, TLS verifies, and the config's
``[limits]``/``[tls]`` sections are validated. Loopback only, no root."""

from __future__ import annotations

import errno
import gc
import http.client
import json
import os
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from pcsite_lite import pki
from pcsite_lite.control.app import ControlApp, Request
from pcsite_lite.control.auth import Credentials
from pcsite_lite.control.client import ControlClient, ControlError
from pcsite_lite.control.limits import (
    Limits,
    RateLimiter,
    count_entries,
    json_depth,
)
from pcsite_lite.control.site_backend import SiteBackend
from pcsite_lite.daemon.config import ConfigError, parse
from pcsock.httpserver import ConnectionTable, ServerStats, serve_listeners, tls_context
from tests.support import wait_until
from tests.support.sites import ADMIN, OTHER_TOKEN, PSP_TOKEN

LEGIT = "127.0.0.2"  # the legitimate client's source address (all of 127/8 is loopback)
FLOOD = "127.0.0.3"


def _backend(tmp: Path) -> SiteBackend:
    return SiteBackend(parse({
        "site": {"name": "t1", "public_ip": "198.18.9.1", "fis": f"sqlite://{tmp / 'fis.db'}",
                 "state_dir": str(tmp)},
        "control": {"admin_token": ADMIN, "psps": {"acme": {"token": PSP_TOKEN},
                                                   "evil": {"token": OTHER_TOKEN}}},
    }))  # fmt: skip


def _app(tmp: Path, **limits: Any) -> ControlApp:
    creds = Credentials(admin_token=ADMIN, psp_tokens={"acme": PSP_TOKEN, "evil": OTHER_TOKEN})
    return ControlApp(_backend(tmp), creds, limits=Limits(**limits))


@contextmanager
def _served(app: ControlApp, *, tls: ssl.SSLContext | None = None,
            listener: Callable[[trio.SocketListener], Any] | None = None,
            offload_nice: int | None = None,
            ) -> Iterator[tuple[int, ServerStats]]:  # fmt: skip
    """Serve ``app`` on 127.0.0.1 from a trio thread; yields (port, stats)."""
    ready = threading.Event()
    box: dict[str, Any] = {}
    stats: list[ServerStats] = []

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        box["port"] = listeners[0].socket.getsockname()[1]
        wrapped: list[Any] = [listener(ln) if listener else ln for ln in listeners]
        async with trio.open_nursery() as n:
            await n.start(lambda task_status: serve_listeners(
                app, wrapped, tls=tls, stats=stats, offload_nice=offload_nice,
                task_status=task_status))  # fmt: skip
            box["cancel"] = n.cancel_scope
            box["token"] = trio.lowlevel.current_trio_token()
            ready.set()

    t = threading.Thread(target=trio.run, args=(main,), daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        yield box["port"], stats[0]
    finally:
        trio.from_thread.run_sync(box["cancel"].cancel, trio_token=box["token"])
        t.join(10)
        app.backend.close()


def _call(port: int, method: str, path: str, *, token: str = PSP_TOKEN, body: Any = None,
          raw_body: bytes | None = None, src: str = LEGIT, timeout: float = 10.0,
          ) -> tuple[int, dict[str, Any], Any]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(src, 0))  # fmt: skip
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    data = raw_body if raw_body is not None else (json.dumps(body).encode() if body else None)
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        return resp.status, json.loads(payload) if payload else {}, resp.headers
    finally:
        conn.close()


def _idle(n: int, port: int, src: str = FLOOD) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((src, 0))
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


@contextmanager
def _holding(n: int, port: int) -> Iterator[list[socket.socket]]:
    """``n`` idle connections from the flood address, closed at the end."""
    socks = _idle(n, port)
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def _closed_by_peer(s: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sent before it closed ``s`` (raises if it stays open)."""
    s.settimeout(timeout)
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return buf
        if not chunk:
            return buf
        buf += chunk


def _error_of(raw: bytes) -> tuple[int, str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]["code"]


# --- the body's shape --------------------------------------------------------------------


def test_json_depth_matches_the_parser_and_ignores_brackets_in_strings() -> None:
    for doc in ([], {"a": [1, {"b": [[]]}]}, [[[[[]]]]], {"s": "[[[{{{"}, "x", 3):
        text = json.dumps(doc).encode()

        def depth(v: Any) -> int:
            if isinstance(v, dict):
                return 1 + max((depth(x) for x in v.values()), default=0)
            if isinstance(v, list):
                return 1 + max((depth(x) for x in v), default=0)
            return 0

        assert json_depth(text, 1000) == depth(doc), doc
    assert json_depth(b'["\\"[[[[", [[]]]', 1000) == 3  # an escaped quote inside a string
    assert json_depth(b"[" * 500_000, 32) == 33  # stops just past the limit
    assert count_entries({"a": [1, 2, {"b": 3}], "c": 4}) == 6


def test_half_a_million_deep_json_is_a_400_not_a_500(tmp_path: Path) -> None:
    app = _app(tmp_path)
    deep = b'{"value": ' + b"[" * 500_000 + b"]" * 500_000 + b"}"
    with _served(app) as (port, _):
        status, doc, _ = _call(port, "PUT", "/v1/psps/acme/fis/svc/kv/k", raw_body=deep)
        assert status == 400 and doc["error"]["code"] == "limit_exceeded"
        assert "limits.max_json_depth" in doc["error"]["message"]
        # a body at the limit is fine
        ok = b'{"value": ' + b"[" * 31 + b"]" * 31 + b"}"
        assert _call(port, "PUT", "/v1/psps/acme/fis/svc/kv/k", raw_body=ok)[0] == 204


def test_too_many_entries_and_out_hops_are_refused_with_the_limit_named(tmp_path: Path) -> None:
    app = _app(tmp_path, max_entries=1000, max_out_hops=8)
    with _served(app) as (port, _):
        status, doc, _ = _call(port, "PUT", "/v1/psps/acme/fis/svc/kv/k",
                               body={"value": list(range(1001))})  # fmt: skip
        assert (status, doc["error"]["code"]) == (400, "limit_exceeded")
        assert "limits.max_entries" in doc["error"]["message"]
        label = _call(port, "POST", "/v1/psps/acme/circuits", body={"service": "s"})[1]["label"]
        hop = {"label": 7, "next_hop": "198.18.2.1", "key": bytes(16).hex()}
        body = {"in_key": bytes(16).hex(), "out": [hop] * 9}
        status, doc, _ = _call(port, "PUT", f"/v1/psps/acme/circuits/{label}", body=body)
        assert (status, doc["error"]["code"]) == (400, "limit_exceeded")
        assert "limits.max_out_hops" in doc["error"]["message"]
        body["out"] = [hop] * 8
        status, doc, _ = _call(port, "PUT", f"/v1/psps/acme/circuits/{label}", body=body)
        assert status == 200 and len(doc["out"]) == 8


def test_oversized_body_and_headers_get_413_and_431(tmp_path: Path) -> None:
    app = _app(tmp_path, max_body=2048, max_header_bytes=2048)
    with _served(app) as (port, _):
        status, doc, _ = _call(port, "PUT", "/v1/psps/acme/fis/svc/kv/k",
                               body={"value": "x" * 4000})  # fmt: skip
        assert (status, doc["error"]["code"]) == (413, "body_too_large")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /v1/health HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 4096 + b"\r\n\r\n")
            assert _error_of(_closed_by_peer(s)) == (431, "headers_too_large")


# --- request rate ------------------------------------------------------------------------


def test_rate_limit_per_credential_answers_429_with_retry_after(tmp_path: Path) -> None:
    app = _app(tmp_path, rate=1.0, burst=3)
    with _served(app) as (port, _):
        for _ in range(3):
            assert _call(port, "GET", "/v1/whoami")[0] == 200
        status, doc, headers = _call(port, "GET", "/v1/whoami")
        assert (status, doc["error"]["code"]) == (429, "rate_limited")
        assert "credential psp/acme" in doc["error"]["message"]
        assert int(headers["Retry-After"]) >= 1
        # another credential has its own bucket
        assert _call(port, "GET", "/v1/whoami", token=OTHER_TOKEN)[0] == 200
        # the client reports the code and Retry-After
        c = ControlClient(f"http://127.0.0.1:{port}", token=PSP_TOKEN, psp="acme")
        with pytest.raises(ControlError) as e:
            c.whoami()
        assert e.value.code == "rate_limited" and e.value.retry_after is not None


def test_failed_logins_are_rate_limited_per_address() -> None:
    now = [0.0]
    creds = Credentials(admin_token=ADMIN, psp_tokens={"acme": PSP_TOKEN})
    app = ControlApp(None, creds, limits=Limits(rate=2.0, burst=2),  # type: ignore[arg-type]
                     monotonic=lambda: now[0])  # fmt: skip

    def who(token: str, client: str) -> int:
        req = Request("GET", "/v1/whoami", {"authorization": f"Bearer {token}"}, client=client)
        return app.handle(req).status

    assert [who("guess-000000000000", "10.0.0.9") for _ in range(3)] == [401, 401, 429]
    assert who("guess-000000000000", "10.0.0.8") == 401  # another address: its own bucket
    assert who(ADMIN, "10.0.0.9") == 200  # a real credential is not locked out by guessers
    now[0] += 1.0  # two tokens back
    assert who("guess-000000000000", "10.0.0.9") == 401


def test_token_bucket_refills_at_its_rate() -> None:
    now = [100.0]
    rl = RateLimiter(10.0, 5, clock=lambda: now[0])
    for _ in range(5):
        rl.take("k", "k")
    with pytest.raises(Exception) as e:
        rl.take("k", "k")
    assert e.value.retry_after == pytest.approx(0.1)  # type: ignore[attr-defined]
    now[0] += 0.1 + 1e-9  # (float rounding)
    rl.take("k", "k")


# --- connections -------------------------------------------------------------------------


def test_connection_table_evicts_least_recently_active_and_never_a_busy_one() -> None:
    closed: list[str] = []
    t = ConnectionTable(total=3, per_client=2)
    a, _ = t.admit("A", lambda: closed.append("a"))
    b, _ = t.admit("B", lambda: closed.append("b"))
    c, _ = t.admit("C", lambda: closed.append("c"))
    assert a and b and c
    t.set_busy(a, True)
    t.touch(b)
    d, why = t.admit("D", lambda: closed.append("d"))
    assert d and closed == ["c"] and c.evicted  # c was the least recently active idle one
    d2, _ = t.admit("D", lambda: None)
    assert d2 is not None and closed == ["c", "b"]
    assert "max_connections_per_client" in t.admit("D", lambda: None)[1]
    t.set_busy(d, True)
    t.set_busy(d2, True)
    assert len(t) == 3
    refused, why = t.admit("E", lambda: None)  # everything left is busy
    assert refused is None and "busy" in why
    t.release(a)
    t.release(a)  # twice: counted once
    assert len(t) == 2 and t.count("A") == 0


def test_per_address_cap_refuses_with_429_and_other_addresses_still_get_in(
    tmp_path: Path,
) -> None:
    app = _app(tmp_path, max_connections=100, max_connections_per_client=5)
    with _served(app) as (port, stats), _holding(5, port):
        assert wait_until(lambda: stats.open == 5)
        extra = _idle(1, port)[0]
        assert _error_of(_closed_by_peer(extra)) == (429, "too_many_connections")
        extra.close()
        assert _call(port, "GET", "/v1/whoami", src=LEGIT)[0] == 200
        assert stats.refused == 1


def test_idle_flood_at_the_site_wide_cap_evicts_idle_connections_not_clients(
    tmp_path: Path,
) -> None:
    app = _app(tmp_path, max_connections=20, max_connections_per_client=20)
    with _served(app) as (port, stats), _holding(20, port) as held:
        assert wait_until(lambda: stats.open == 20)
        for i in range(5):  # each legitimate call needs a slot: an idle one is closed
            assert _call(port, "GET", "/v1/whoami", src=LEGIT)[0] == 200
            assert wait_until(lambda: stats.open == 19)  # the legitimate call closed
            assert stats.evicted == i + 1
            held += _idle(1, port)  # the flood takes the freed slot back
            assert wait_until(lambda: stats.open == 20)
        assert _closed_by_peer(held[0]) == b""  # the oldest idle one went, silently


def test_mid_request_eviction_tells_the_client_why(tmp_path: Path) -> None:
    app = _app(tmp_path, max_connections=2, max_connections_per_client=2)
    with _served(app) as (port, _stats):
        slow = _idle(1, port)[0]
        slow.sendall(b"GET /v1/whoami HTTP/1.1\r\n")  # started, never finished
        other = _idle(1, port)[0]
        try:
            # a whole request on `other` makes it the more recently active one
            other.sendall(b"GET /v1/whoami HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
                          + PSP_TOKEN.encode() + b"\r\n\r\n")  # fmt: skip
            other.settimeout(10)
            assert other.recv(65536).startswith(b"HTTP/1.1 200")
            assert _call(port, "GET", "/v1/whoami", src=LEGIT)[0] == 200
            assert _error_of(_closed_by_peer(slow)) == (429, "too_many_connections")
        finally:
            slow.close()
            other.close()


def test_idle_and_slow_requests_time_out(tmp_path: Path) -> None:
    app = _app(tmp_path, idle_timeout=0.3, header_timeout=0.3, request_timeout=0.6)
    with _served(app) as (port, stats):
        idle, slow_head, slow_body = _idle(3, port)
        slow_head.sendall(b"GET /v1/whoami HTTP/1.1\r\nhost: x\r\n")
        slow_body.sendall(b"PUT /v1/psps/acme/fis/s/kv/k HTTP/1.1\r\nhost: x\r\n"
                          b"content-length: 100\r\nauthorization: Bearer " + PSP_TOKEN.encode()
                          + b"\r\n\r\n{")  # fmt: skip
        t0 = time.monotonic()
        assert _closed_by_peer(idle) == b""  # nothing was asked: closed without a word
        assert _error_of(_closed_by_peer(slow_head)) == (408, "request_timeout")
        assert _error_of(_closed_by_peer(slow_body)) == (408, "request_timeout")
        assert time.monotonic() - t0 < 5
        assert stats.timeouts == 3
        for s in (idle, slow_head, slow_body):
            s.close()


class _FailingListener(trio.abc.Listener[trio.SocketStream]):
    """A real listener whose first accepts fail like a process out of descriptors."""

    def __init__(self, inner: trio.SocketListener, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    async def accept(self) -> trio.SocketStream:
        if self.failures:
            self.failures -= 1
            await trio.sleep(0)  # kept: a checkpoint, as a real accept has (no wait)
            raise OSError(errno.EMFILE, "Too many open files")
        return await self.inner.accept()

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_accept_errors_back_off_and_the_server_keeps_serving(tmp_path: Path) -> None:
    app = _app(tmp_path)
    with _served(app, listener=lambda ln: _FailingListener(ln, 5)) as (port, stats):
        assert _call(port, "GET", "/v1/whoami")[0] == 200
        assert stats.accept_errors == 5


def test_real_descriptor_exhaustion_sheds_idle_connections_and_serves(tmp_path: Path) -> None:
    app = _app(tmp_path)
    with _served(app) as (port, stats), _holding(30, port):
        assert wait_until(lambda: stats.open == 30)
        legit = socket.socket()  # made before the squeeze: connect() needs no new descriptor
        legit.bind((LEGIT, 0))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        gc.collect()  # nothing left over may close a descriptor during the squeeze
        top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        fillers = []  # every free number below the top taken: the limit is "top + 1" in use
        while (fd := os.open("/dev/null", os.O_RDONLY)) <= top:
            fillers.append(fd)
        os.close(fd)
        try:  # no descriptor number left under the limit; an evicted connection frees one
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd, hard))
            legit.settimeout(10)
            legit.connect(("127.0.0.1", port))
            legit.sendall(b"GET /v1/whoami HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                          b"authorization: Bearer " + PSP_TOKEN.encode() + b"\r\n\r\n")  # fmt: skip
            answer = _closed_by_peer(legit)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            legit.close()
            for fd in fillers:
                os.close(fd)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert stats.accept_errors >= 1 and stats.evicted >= 1


# --- TLS ---------------------------------------------------------------------------------


def test_tls_control_api_verifies_against_the_ca_and_refuses_others(tmp_path: Path) -> None:
    ca = pki.make_ca()
    ca_file, _ = ca.write(tmp_path / "ca", "ca")
    crt, key = pki.issue(ca, ["127.0.0.1"]).write(tmp_path / "site", "site")
    app = _app(tmp_path)
    with _served(app, tls=tls_context(str(crt), str(key))) as (port, _stats):
        url = f"https://127.0.0.1:{port}"
        c = ControlClient(url, token=PSP_TOKEN, psp="acme", ca_file=str(ca_file))
        assert c.whoami() == {"role": "psp", "name": "acme"}
        c.fis_put("svc", "k", [1, 2])
        assert c.fis_get("svc", "k") == [1, 2]
        # a CA that did not sign the site's certificate: refused before any token is sent
        other_ca, _ = pki.make_ca("someone else").write(tmp_path / "other", "ca")
        with pytest.raises(ControlError) as e:
            ControlClient(url, token=PSP_TOKEN, ca_file=str(other_ca)).whoami()
        assert e.value.code == "connection" and "CERTIFICATE_VERIFY_FAILED" in e.value.message
        # plain HTTP to the TLS port is not served
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /v1/whoami HTTP/1.1\r\nhost: x\r\n\r\n")
            assert not _closed_by_peer(s).startswith(b"HTTP/1.1 200")
    # a certificate for another name is refused too
    crt2, key2 = pki.issue(ca, ["198.18.0.99"]).write(tmp_path / "wrong", "site")
    with _served(app, tls=tls_context(str(crt2), str(key2))) as (port, _):
        with pytest.raises(ControlError) as e:
            ControlClient(f"https://127.0.0.1:{port}", token=PSP_TOKEN,
                          ca_file=str(ca_file)).whoami()  # fmt: skip
        assert e.value.code == "connection"


def test_pki_cli_writes_a_ca_and_a_site_certificate(tmp_path: Path) -> None:
    from pcsite_lite.cli import main

    assert main(["pki", "ca", "--out", str(tmp_path)]) == 0
    assert main(["pki", "cert", "--ca", str(tmp_path), "--name", "198.18.0.1", "--name",
                 "site-a.example", "--out", str(tmp_path)]) == 0  # fmt: skip
    assert (tmp_path / "site.key").stat().st_mode & 0o077 == 0
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    assert ctx.cert_store_stats()["x509_ca"] == 1
    tls_context(str(tmp_path / "site.crt"), str(tmp_path / "site.key"))  # pair matches
    assert main(["pki", "cert", "--ca", str(tmp_path / "nope"), "--name", "x", "--out",
                 str(tmp_path)]) == 2  # fmt: skip


# --- configuration -----------------------------------------------------------------------

BASE = {"site": {"name": "s", "public_ip": "198.18.1.1"}, "control": {"admin_token": ADMIN}}


def test_limits_section_is_parsed_and_every_mistake_names_its_key(tmp_path: Path) -> None:
    cfg = parse({**BASE, "limits": {"max_out_hops": 8, "rate": 5, "idle_timeout": 2}})
    assert cfg.limits == replace(Limits(), max_out_hops=8, rate=5.0, idle_timeout=2.0)
    assert parse(BASE).limits == Limits() and parse(BASE).tls is None
    old = parse({**BASE, "control": {"admin_token": ADMIN, "max_body": 4096}})
    assert old.limits.max_body == 4096 == old.control.max_body  # the older spelling
    for limits, key in [
        ({"bogus": 1}, "limits.bogus"),
        ({"max_json_depth": 0}, "limits.max_json_depth"),
        ({"max_connections": 1.5}, "limits.max_connections"),
        ({"rate": "fast"}, "limits.rate"),
        ({"max_connections": 10, "max_connections_per_client": 20},
         "limits.max_connections_per_client"),
        ({"header_timeout": 9, "request_timeout": 3}, "limits.header_timeout"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError) as e:
            parse({**BASE, "limits": limits})
        assert e.value.key == key, limits
    with pytest.raises(ConfigError) as e:
        parse({**BASE, "control": {"admin_token": ADMIN, "max_body": 4096},
               "limits": {"max_body": 8192}})  # fmt: skip
    assert e.value.key == "control.max_body"


def test_tls_section_checks_the_files_at_load(tmp_path: Path) -> None:
    ca = pki.make_ca()
    crt, _key = pki.issue(ca, ["198.18.1.1"]).write(tmp_path, "site")
    other_key = pki.issue(ca, ["198.18.1.1"]).write(tmp_path, "other")[1]
    cfg = parse({**BASE, "tls": {"cert": "site.crt", "key": "site.key"}}, base_dir=tmp_path)
    assert cfg.tls is not None and cfg.tls.cert == str(crt)
    for tls, key_name in [
        ({"cert": "site.crt"}, "tls.key"),
        ({"cert": "missing.crt", "key": "site.key"}, "tls.cert"),
        ({"cert": "site.crt", "key": str(other_key)}, "tls.cert"),  # key of another cert
        ({"cert": "site.crt", "key": "site.key", "ciphers": "x"}, "tls.ciphers"),
    ]:
        with pytest.raises(ConfigError) as e:
            parse({**BASE, "tls": tls}, base_dir=tmp_path)
        assert e.value.key == key_name, tls


def test_requests_the_app_offloads_are_answered_from_a_worker_thread(tmp_path: Path) -> None:
    app = _app(tmp_path)
    seen: dict[str, int] = {}
    handle = app.handle

    def spy(req: Request) -> Any:
        seen[req.target] = threading.get_ident()
        return handle(req)

    app.handle = spy  # type: ignore[method-assign]
    app.offload = lambda req: req.target == "/v1/whoami"  # type: ignore[attr-defined]
    with _served(app) as (port, _):
        assert _call(port, "GET", "/v1/whoami")[0] == 200
        assert _call(port, "GET", "/v1/health")[0] == 200
    assert seen["/v1/whoami"] != seen["/v1/health"]  # the event loop's thread answered health


def test_offloaded_requests_run_at_the_servers_offload_nice_value(tmp_path: Path) -> None:
    # the supervisor's upload threads run at nice 19 (supervisor.OFFLOAD_NICE): a control-API
    # call that wakes on their CPU preempts them; the event loop keeps the process's value
    from pcsite_lite.daemon.supervisor import OFFLOAD_NICE

    app = _app(tmp_path)
    nice: dict[str, int] = {}
    handle = app.handle

    def spy(req: Request) -> Any:
        nice[req.target] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return handle(req)

    app.handle = spy  # type: ignore[method-assign]
    app.offload = lambda req: req.target == "/v1/whoami"  # type: ignore[attr-defined]
    own = os.getpriority(os.PRIO_PROCESS, 0)
    with _served(app, offload_nice=OFFLOAD_NICE) as (port, _):
        assert _call(port, "GET", "/v1/whoami")[0] == 200
        assert _call(port, "GET", "/v1/health")[0] == 200
    assert OFFLOAD_NICE == 19
    assert (nice["/v1/whoami"], nice["/v1/health"]) == (19, own)


def test_uploads_and_activations_are_offloaded_and_nothing_else(tmp_path: Path) -> None:
    # both verify code and fsync the repository: never on the control API's event loop
    app = _app(tmp_path)
    base = "/v1/psps/p1/services/s"
    assert app.offload(Request("POST", f"{base}/versions"))
    assert app.offload(Request("POST", f"{base}/activate"))
    assert not app.offload(Request("GET", f"{base}/versions"))
    assert not app.offload(Request("GET", "/v1/psps/p1/services"))
    assert not app.offload(Request("POST", "/v1/psps/p1/circuits"))
