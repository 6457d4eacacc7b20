"""The control API over a FIS outage: writes answer 503 ``unavailable`` naming the FIS while
Redis is away and take effect again once it is back, with no provider action; a service the
site disabled can be re-enabled by its owner through the API."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pcsite_lite.control.app import ControlApp, Request, openapi_document
from pcsite_lite.control.auth import Credentials
from pcsite_lite.control.site_backend import SiteBackend
from pcsite_lite.daemon.config import parse
from pcsite_lite.daemon.state import WorkerSite
from pcsite_lite.fis import FISAuthError, FISUnavailableError
from pcsite_lite.runtime import ACTIVE, DISABLED
from tests.support import wait_until

ADMIN = "admin-token-0123456789abcdef"
ACME = "acme-token-0123456789abcdef"
EVIL = "evil-token-0123456789abcdef"
StartRedis = Callable[..., contextlib.AbstractContextManager[str]]


def _app(fis_url: str, state: Path, ops: list[dict[str, Any]]) -> ControlApp:
    cfg = parse({
        "site": {"name": "t1", "public_ip": "198.18.9.1", "fis": fis_url,
                 "state_dir": str(state)},
        "control": {"admin_token": ADMIN, "psps": {"acme": {"token": ACME},
                                                   "evil": {"token": EVIL}}},
    })  # fmt: skip
    creds = Credentials(admin_token=ADMIN, psp_tokens={"acme": ACME, "evil": EVIL})
    return ControlApp(SiteBackend(cfg, broadcast=ops.append), creds)


def _call(app: ControlApp, method: str, path: str, body: Any = None, token: str = ACME) -> Any:
    data = b"" if body is None else json.dumps(body).encode()
    headers = {"authorization": f"Bearer {token}"}
    if body is not None:
        headers["content-type"] = "application/json"
    resp = app.handle(Request(method, path, headers, data))
    return resp.status, (json.loads(resp.body) if resp.body else None)


def test_writes_fail_clearly_during_an_outage_and_work_again_after_it(
    tmp_path: Path, start_redis: StartRedis
) -> None:
    kv = "/v1/psps/acme/fis/srouting/kv/7"
    with start_redis(tmp_path, persist=True) as url:
        app = _app(url, tmp_path, [])
        assert _call(app, "PUT", kv, {"value": {"label": 9}})[0] == 204
    for method, body in (("PUT", {"value": 1}), ("GET", None), ("DELETE", None)):
        status, doc = _call(app, method, kv, body)
        assert status == 503, doc
        assert doc["error"]["code"] == "unavailable"
        assert "FIS engine unavailable: Redis at" in doc["error"]["message"]
    with start_redis(tmp_path, persist=True):
        # the same client reconnects by itself
        assert wait_until(lambda: _call(app, "PUT", kv, {"value": {"label": 10}})[0] == 204, 5)
        assert _call(app, "GET", kv) == (200, {"value": {"label": 10}})


def test_a_site_that_ran_before_starts_while_its_fis_is_away(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/absent.sock"
    with pytest.raises(FISUnavailableError):  # first start: most likely a wrong URL
        _app(url, tmp_path, [])
    (tmp_path / "fis-cache-0.json").write_text("{}")  # a worker of an earlier run's snapshot
    app = _app(url, tmp_path, [])  # a restart in an outage: starts, writes answer 503
    assert _call(app, "PUT", "/v1/psps/acme/fis/s/kv/k", {"value": 1})[0] == 503


def test_refused_credentials_fail_at_start_even_after_a_run(
    tmp_path: Path, start_redis: StartRedis
) -> None:
    (tmp_path / "fis-cache-0.json").write_text("{}")
    with start_redis(tmp_path, acl={"site": "right-password"}) as url:
        user_url = url.replace("unix://", "unix://site:wrong-password@")
        with pytest.raises(FISAuthError, match=r"refused access.*credentials"):
            _app(user_url, tmp_path, [])
        good = url.replace("unix://", "unix://site:right-password@")
        app = _app(good, tmp_path, [])
        assert _call(app, "PUT", "/v1/psps/acme/fis/s/kv/k", {"value": 1})[0] == 204


def test_fis_routes_document_503_and_the_enable_route_exists() -> None:
    doc = openapi_document()
    put = doc["paths"]["/v1/psps/{psp}/fis/{service}/kv/{key}"]["put"]
    assert "503" in put["responses"]
    enable = doc["paths"]["/v1/psps/{psp}/services/{service}/enable"]["post"]
    assert enable["operationId"] == "enableService" and "404" in enable["responses"]


def test_owner_re_enables_a_disabled_service_on_the_workers(tmp_path: Path) -> None:
    ops: list[dict[str, Any]] = []
    url = f"sqlite://{tmp_path / 'fis.db'}"
    app = _app(url, tmp_path, ops)
    status, doc = _call(app, "POST", "/v1/psps/acme/circuits", {"service": "fw"})
    assert status == 201
    hop = {"in_key": "ab" * 16, "out": [], "deliver": "198.18.9.9"}
    assert _call(app, "PUT", f"/v1/psps/acme/circuits/{doc['label']}", hop)[0] == 200
    ops.clear()
    # a worker replica whose service failed until the site disabled it
    worker = WorkerSite(app.backend.cfg)  # type: ignore[attr-defined]
    worker.site.deploy("acme", "fw", "def process(pkt):\n    raise ValueError('bad')\n")
    slot = worker.site.runtime.slot("acme", "fw")
    for _ in range(worker.site.runtime.max_failures):
        worker.site.runtime.failed(slot, 0.0, "service_error", "ValueError: bad")
    assert slot.status == DISABLED

    assert _call(app, "POST", "/v1/psps/acme/services/nope/enable")[0] == 404
    assert _call(app, "POST", "/v1/psps/acme/services/fw/enable", token=EVIL)[0] == 403
    assert _call(app, "POST", "/v1/psps/evil/services/fw/enable", token=EVIL)[0] == 404
    assert ops == []
    status, doc = _call(app, "POST", "/v1/psps/acme/services/fw/enable")
    assert (status, doc) == (200, {"service": "fw", "status": "active"})
    assert ops == [{"op": "enable", "psp": "acme", "service": "fw"}]
    worker.apply(ops[0])
    assert slot.status == ACTIVE and slot.consecutive_failures == 0


@pytest.mark.parametrize("bad", ["redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0"])
def test_a_tcp_redis_fis_without_credentials_is_a_config_error(bad: str, tmp_path: Path) -> None:
    from pcsite_lite.daemon.config import ConfigError

    with pytest.raises(ConfigError, match=r"site\.fis.*USER:PASSWORD"):
        _app(bad, tmp_path, [])
