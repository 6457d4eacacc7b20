"""Control API without root: auth and ownership, OpenAPI coverage, JSON errors, the client,
over the real trio + h11 server on 127.0.0.1 and in-process."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from pcsite_lite.control.app import ROUTES, ControlApp, Request, openapi_document
from pcsite_lite.control.auth import Credentials
from pcsite_lite.control.client import ControlClient, ControlError, OutHop
from pcsite_lite.control.errors import CODES
from pcsite_lite.control.site_backend import SiteBackend
from pcsite_lite.daemon.config import parse
from pcsock.httpserver import serve
from tests.support.sites import ADMIN, OTHER_TOKEN, PSP_TOKEN

KEY = bytes(range(16)).hex()


def _cfg(tmp: Path) -> object:
    return parse({
        "site": {"name": "t1", "public_ip": "198.18.9.1", "fis": f"sqlite://{tmp / 'fis.db'}",
                 "state_dir": str(tmp)},
        "control": {"admin_token": ADMIN, "psps": {"acme": {"token": PSP_TOKEN},
                                                   "evil": {"token": OTHER_TOKEN}}},
    })  # fmt: skip


def _app(tmp: Path) -> ControlApp:
    cfg = _cfg(tmp)
    creds = Credentials(admin_token=ADMIN, psp_tokens={"acme": PSP_TOKEN, "evil": OTHER_TOKEN})
    return ControlApp(SiteBackend(cfg), creds, max_body=4096)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    app = _app(tmp_path)
    ready = threading.Event()
    box: dict[str, object] = {}

    async def main() -> None:
        async with trio.open_nursery() as n:
            box["port"] = await n.start(serve, app, "127.0.0.1", 0)
            box["cancel"] = n.cancel_scope
            box["token"] = trio.lowlevel.current_trio_token()
            ready.set()

    t = threading.Thread(target=trio.run, args=(main,))
    t.start()
    assert ready.wait(10)
    yield f"http://127.0.0.1:{box['port']}"
    trio.from_thread.run_sync(box["cancel"].cancel, trio_token=box["token"])  # type: ignore[attr-defined]
    t.join(10)


def _raw(url: str, data: bytes) -> tuple[int, dict[str, object]]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(data)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_unauthenticated_calls_are_rejected_on_every_route(server: str) -> None:
    for r in ROUTES:
        path = re.sub(r"\{psp\}", "acme", r.path)
        path = re.sub(r"\{label\}", "5", path)
        path = re.sub(r"\{service_id\}", "5", path)
        path = re.sub(r"\{\w+\}", "x", path)
        for token in (None, "wrong-token-000000000000"):
            c = ControlClient(server, token=token or "", psp="acme")
            if token is None:
                c.token = ""
            with pytest.raises(ControlError) as e:
                c.request(r.method, path, {} if r.body is not None else None)
            assert e.value.status == 401 and e.value.code == "unauthenticated", (r.path, token)


def test_cross_tenant_calls_are_forbidden_and_labels_do_not_leak(server: str) -> None:
    acme = ControlClient(server, token=PSP_TOKEN, psp="acme")
    evil = ControlClient(server, token=OTHER_TOKEN, psp="evil")
    label = acme.allocate_circuit("srcroute")["label"]
    acme.install_hop(label, in_key=bytes(range(16)), out=[OutHop(7, "198.18.2.1", bytes(16))])
    for method, path, body in [
        ("GET", f"/v1/psps/acme/circuits/{label}", None),
        ("DELETE", f"/v1/psps/acme/circuits/{label}", None),
        ("PUT", "/v1/psps/acme/fis/srcroute/kv/k", {"value": 1}),
        ("GET", "/v1/psps/acme/usage", None),
        ("POST", "/v1/psps/acme/circuits", {"service": "s"}),
    ]:
        with pytest.raises(ControlError) as e:
            evil.request(method, path, body)
        assert (e.value.status, e.value.code) == (403, "forbidden")
    # acme's label seen through evil's own path: not found (never "exists, not yours")
    with pytest.raises(ControlError) as e:
        evil.get_circuit(label)
    assert e.value.code == "not_found"
    with pytest.raises(ControlError) as e:
        evil.teardown_circuit(label)
    assert e.value.code == "not_found"
    assert acme.get_circuit(label)["out"][0]["label"] == 7
    # PSP credentials cannot call ISP routes
    for call in (evil.status, evil.metrics):
        with pytest.raises(ControlError) as e:
            call()
        assert e.value.code == "forbidden"
    admin = ControlClient(server, token=ADMIN)
    assert 'pcsite_circuits{site="t1"} 1' in admin.metrics()
    assert admin.whoami() == {"role": "isp", "name": "isp"}


def test_circuit_lifecycle_and_fis_through_the_client(server: str) -> None:
    c = ControlClient(server, token=PSP_TOKEN, psp="acme")
    hop = c.allocate_circuit("srcroute", lifetime=30)
    assert hop["site"] == "198.18.9.1" and 0 < hop["label"] <= 0xFFFFFFFF
    c.install_hop(hop["label"], in_key=bytes(16), deliver="198.18.3.3", strip=True)
    assert c.list_circuits()[0]["service"] == "srcroute"
    assert c.renew_circuit(hop["label"], 100)["label"] == hop["label"]
    c.teardown_circuit(hop["label"])
    with pytest.raises(ControlError) as e:
        c.get_circuit(hop["label"])
    assert e.value.code == "not_found"
    c.fis_put("srcroute", "7", {"out_label": 9})
    assert c.fis_get("srcroute", "7") == {"out_label": 9}
    c.fis_lpm_put("srcroute", "routes", "198.18.4.0/24", "x")
    c.fis_lpm_delete("srcroute", "routes", "198.18.4.0/24")
    c.fis_delete("srcroute", "7")
    sid = c.register_service_id("cc", 77)
    assert sid["service_id"] == 77
    evil = ControlClient(server, token=OTHER_TOKEN, psp="evil")
    with pytest.raises(ControlError) as e:
        evil.register_service_id("x", 77)
    assert e.value.code == "conflict"
    with pytest.raises(ControlError) as e:
        c.register_destination("198.18.5.0/24", "fw", "junk")
    assert e.value.code == "not_configured"  # no trust anchor configured at this site


def test_receiver_hop_without_a_key_installs_and_reads_back(server: str) -> None:
    from pcsite_lite.control.client import OutHop

    c = ControlClient(server, token=PSP_TOKEN, psp="acme")
    label = c.allocate_circuit("srcroute", lifetime=30)["label"]
    keyed = OutHop(5, "198.18.3.3", bytes(range(16)))
    c.install_hop(label, in_key=bytes(16), out=[keyed, OutHop(6, "198.18.3.4", key=None)])
    assert OutHop(6, "198.18.3.4").to_json()["key"] is None  # sent as JSON null
    assert [o["label"] for o in c.get_circuit(label)["out"]] == [5, 6]


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"POST /v1/psps/acme/circuits HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
         + PSP_TOKEN.encode() + b"\r\ncontent-length: 5\r\nconnection: close\r\n\r\n{oops",
         400, "bad_json"),
        (b"POST /v1/psps/acme/circuits HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
         + PSP_TOKEN.encode() + b"\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
         400, "missing_field"),
        (b"POST /v1/psps/acme/circuits HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
         + PSP_TOKEN.encode() + b"\r\ncontent-length: 16\r\nconnection: close\r\n\r\n"
         b'{"service": 123}', 400, "bad_field"),
        (b"POST /v1/psps/acme/circuits HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
         + PSP_TOKEN.encode() + b"\r\ncontent-length: 99999\r\nconnection: close\r\n\r\n",
         413, "body_too_large"),
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET /nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", 404, "not_found"),
        (b"PATCH /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", 405,
         "method_not_allowed"),
        (b"GET /v1/psps/acme/circuits/notanumber HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
         + PSP_TOKEN.encode() + b"\r\nconnection: close\r\n\r\n", 400, "bad_request"),
    ],
)  # fmt: skip
def test_bad_input_gets_json_error_with_stable_code(
    server: str, raw: bytes, status: int, code: str
) -> None:
    got_status, doc = _raw(server, raw)
    assert got_status == status
    assert doc["error"]["code"] == code  # type: ignore[index]
    assert CODES[code] == status


def test_openapi_describes_every_route_and_only_those(tmp_path: Path) -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.")
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert described == {(r.method, r.path) for r in ROUTES}
    for r in ROUTES:
        op = doc["paths"][r.path][r.method.lower()]
        assert {p["name"] for p in op["parameters"]} == set(r.params)
        assert str(r.ok_status) in op["responses"] and "401" in op["responses"]
        if r.body is not None:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert set(schema["properties"]) == {f.name for f in r.body}
    ids = [r.operation_id for r in ROUTES]
    assert len(ids) == len(set(ids))
    # and the app serves exactly this document
    app = _app(tmp_path)
    resp = app.handle(Request("GET", "/openapi.json", {"authorization": f"Bearer {ADMIN}"}))
    assert resp.status == 200 and resp.json() == json.loads(json.dumps(doc))


def test_credentials_reject_weak_or_duplicate_tokens() -> None:
    with pytest.raises(ValueError):
        Credentials(admin_token="short", psp_tokens={})
    with pytest.raises(ValueError):
        Credentials(admin_token=ADMIN, psp_tokens={"a": ADMIN})


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    from pcsite_lite.daemon.config import ConfigError, load

    base = {"site": {"name": "s", "public_ip": "198.18.1.1"}, "control": {"admin_token": ADMIN}}
    cases = [
        ({"site": {"name": "s"}}, "site.public_ip"),
        ({"site": {**base["site"], "workers": 0}}, "site.workers"),
        ({"site": {**base["site"], "public_ip": "10.0.0.1"}}, "site.public_ip"),
        ({"site": {**base["site"], "bogus": 1}}, "site.bogus"),
        ({"control": {"admin_token": "x"}}, "control.admin_token"),
        ({"control": {"admin_token": ADMIN, "listen": "nope"}}, "control.listen"),
        ({"dataplane": {"buckets": 0}}, "dataplane.buckets"),
    ]
    for patch, key in cases:
        with pytest.raises(ConfigError) as e:
            parse({**base, **patch})
        assert e.value.key == key
    p = tmp_path / "bad.toml"
    p.write_text("[site\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(p)
