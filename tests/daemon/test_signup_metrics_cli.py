"""Destination sign-up with real DNSSEC proofs, the Prometheus exposition, the pcsite CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pcsite_lite.control.app import ControlApp, Request
from pcsite_lite.control.auth import Credentials
from pcsite_lite.control.site_backend import SiteBackend
from pcsite_lite.daemon.config import parse
from pcsite_lite.metering import Counters
from pcsite_lite.metrics import WorkerStats, render
from pcsock.ownership import OwnershipClaim, ZoneKey, build_proof, reverse_zone
from tests.support.sites import ADMIN, OTHER_TOKEN, PSP_TOKEN

NOW = 1_795_000_000.0
PREFIX = "198.18.5.0/24"


class FakeKernel:
    """Records what the backend asks the kernel to divert (the netns tests use the real one)."""

    def __init__(self) -> None:
        self.divert: list[list[str]] = []

    def set_divert(self, prefixes: list[str]) -> None:
        self.divert.append(list(prefixes))


@pytest.fixture(scope="module")
def keys() -> tuple[ZoneKey, ZoneKey]:
    return ZoneKey.generate("in-addr.arpa."), ZoneKey.generate(reverse_zone(PREFIX))


def _app(tmp: Path, anchor: str, kernel: FakeKernel) -> ControlApp:
    cfg = parse({
        "site": {"name": "t1", "public_ip": "198.18.9.1", "fis": f"sqlite://{tmp / 'f.db'}"},
        "control": {"admin_token": ADMIN},
    })  # fmt: skip
    creds = Credentials(admin_token=ADMIN, psp_tokens={"acme": PSP_TOKEN, "evil": OTHER_TOKEN})
    return ControlApp(SiteBackend(cfg, kernel=kernel), creds, trust_anchor=anchor,
                      clock=lambda: NOW)  # fmt: skip


def _proof(
    keys: tuple[ZoneKey, ZoneKey], owner: str = "acme", signer: ZoneKey | None = None
) -> str:
    root, own = keys
    claim = OwnershipClaim(PREFIX, owner, "firewall", NOW - 3600, NOW + 86400)
    p = build_proof([claim], signer or own, chain=[root], inception=NOW - 60,
                    expiration=NOW + 3600)  # fmt: skip
    return str(p)


def _signup(
    app: ControlApp,
    token: str,
    psp: str,
    proof: str,
    prefix: str = PREFIX,
    redirect: object = None,
) -> object:
    import json

    doc: dict[str, object] = {"prefix": prefix, "service": "firewall", "proof": proof}
    if redirect is not None:
        doc["redirect_prefixes"] = redirect
    body = json.dumps(doc).encode()
    return app.handle(Request("POST", f"/v1/psps/{psp}/destinations",
                              {"authorization": f"Bearer {token}"}, body))  # fmt: skip


def test_valid_proof_enables_diversion_and_others_are_rejected(
    tmp_path: Path, keys: tuple[ZoneKey, ZoneKey]
) -> None:
    kernel = FakeKernel()
    app = _app(tmp_path, keys[0].ds_text(), kernel)
    # a proof naming another owner: rejected, nothing diverted
    r = _signup(app, OTHER_TOKEN, "evil", _proof(keys))
    assert (r.status, r.json()["error"]["code"]) == (422, "ownership_rejected")  # type: ignore[attr-defined]
    assert "wrong_owner" in r.json()["error"]["message"]  # type: ignore[attr-defined]
    # a whole chain of the claimant's own keys, not under the configured anchor: rejected
    fake = (ZoneKey.generate("in-addr.arpa."), ZoneKey.generate(reverse_zone(PREFIX)))
    r = _signup(app, PSP_TOKEN, "acme", _proof(fake))
    assert r.json()["error"]["code"] == "ownership_rejected"  # type: ignore[attr-defined]
    r = _signup(app, PSP_TOKEN, "acme", "not a proof")
    assert r.json()["error"]["code"] == "ownership_rejected"  # type: ignore[attr-defined]
    assert kernel.divert == []
    # the owner's valid proof: registered and diverted
    r = _signup(app, PSP_TOKEN, "acme", _proof(keys))
    assert r.status == 201, r.body  # type: ignore[attr-defined]
    doc = r.json()  # type: ignore[attr-defined]
    assert doc["diverted"] and doc["owner"] == "acme" and doc["prefix"] == PREFIX
    assert kernel.divert == [[PREFIX]]
    r = app.handle(Request("GET", "/v1/psps/acme/destinations",
                           {"authorization": f"Bearer {PSP_TOKEN}"}))  # fmt: skip
    assert [d["prefix"] for d in r.json()["destinations"]] == [PREFIX]


def test_redirect_prefixes_need_the_isp_credential_and_reach_the_workers(
    tmp_path: Path, keys: tuple[ZoneKey, ZoneKey]
) -> None:
    from pcsite_lite.daemon.state import WorkerSite

    kernel = FakeKernel()
    app = _app(tmp_path, keys[0].ds_text(), kernel)
    redirect = ["198.18.6.0/24", "198.18.7.0/24"]
    r = _signup(app, PSP_TOKEN, "acme", _proof(keys), redirect=redirect)  # the PSP alone
    assert (r.status, r.json()["error"]["code"]) == (403, "forbidden")  # type: ignore[attr-defined]
    assert kernel.divert == []
    r = _signup(app, ADMIN, "acme", _proof(keys), redirect=["198.18.6.1/24"])
    assert (r.status, r.json()["error"]["code"]) == (400, "bad_field")  # type: ignore[attr-defined]
    r = _signup(app, ADMIN, "acme", _proof(keys), redirect=[42])
    assert (r.status, r.json()["error"]["code"]) == (400, "bad_field")  # type: ignore[attr-defined]
    # the ISP, acting for the PSP with the PSP's proof, approves where it may redirect
    r = _signup(app, ADMIN, "acme", _proof(keys), redirect=redirect)
    assert r.status == 201, r.body  # type: ignore[attr-defined]
    assert r.json()["redirect_prefixes"] == redirect  # type: ignore[attr-defined]
    state = app.backend.state  # type: ignore[attr-defined]
    assert state.site.destinations.get(PREFIX).redirect_prefixes == redirect
    # and a worker replica rebuilt from the master carries them too
    replica = WorkerSite(state.cfg)
    for op in state.snapshot_ops():
        replica.apply(op)
    assert replica.site.destinations.get(PREFIX).redirect_prefixes == redirect
    # without redirect prefixes a PSP still signs up alone
    r = _signup(app, PSP_TOKEN, "acme", _proof(keys), redirect=[])
    assert r.status == 201 and r.json()["redirect_prefixes"] == []  # type: ignore[attr-defined]


def test_signup_without_trust_anchor_is_not_configured(
    tmp_path: Path, keys: tuple[ZoneKey, ZoneKey]
) -> None:
    app = _app(tmp_path, keys[0].ds_text(), FakeKernel())
    app.trust_anchor = None
    r = _signup(app, PSP_TOKEN, "acme", _proof(keys))
    assert (r.status, r.json()["error"]["code"]) == (501, "not_configured")  # type: ignore[attr-defined]


_LINE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*\})? -?[0-9.e+]+$'
)


def test_metrics_follow_the_exposition_format() -> None:
    w0 = WorkerStats(rx_packets=10, rx_bytes=1000, tx_packets=9, tx_bytes=900,
                     drops={"bad_mac": 1, 'we"ird\n': 2})  # fmt: skip
    w1 = WorkerStats(alive=False, restarts=3)
    usage = {("acme", "srcroute"): Counters(packets=9, bytes_in=900, cpu_ns=12345)}
    text = render({0: w0, 1: w1}, usage, site="s1", gauges={"circuits": ("Hops", 4.0)})
    assert text.endswith("\n")
    seen_types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ")
            assert name not in seen_types
            seen_types[name] = typ
        elif line.startswith("# HELP "):
            continue
        else:
            assert _LINE.match(line), line
            name = line.split("{")[0].split(" ")[0]
            assert name in seen_types  # every sample follows its family's TYPE line
    assert 'pcsite_rx_packets_total{site="s1",worker="0"} 10' in text
    assert 'pcsite_worker_up{site="s1",worker="1"} 0' in text
    assert 'pcsite_drops_total{site="s1",worker="0",reason="we\\"ird\\n"} 2' in text
    assert 'pcsite_service_cpu_ns_total{site="s1",psp="acme",service="srcroute"} 12345' in text
    assert 'pcsite_circuits{site="s1"} 4' in text
    assert seen_types["pcsite_worker_up"] == "gauge"


def test_check_config_reports_the_bad_key_and_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        f'[site]\nname = "s"\npublic_ip = "198.18.1.1"\nworkers = 2\n'
        f'[control]\nadmin_token = "{ADMIN}"\n'
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace("workers = 2", "workers = 99"))
    run = [sys.executable, "-m", "pcsite_lite.cli", "check-config", "--config"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "ok" in ok.stdout
    ko = subprocess.run([*run, str(bad)], capture_output=True, text=True)
    assert ko.returncode == 2 and "site.workers" in ko.stderr and "Traceback" not in ko.stderr
    missing = subprocess.run([*run, str(tmp_path / "nope.toml")], capture_output=True, text=True)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def _call(app: ControlApp, method: str, path: str, token: str, doc: object) -> object:
    import json

    return app.handle(Request(method, path, {"authorization": f"Bearer {token}"},
                              json.dumps(doc).encode()))  # fmt: skip


def test_a_service_ids_redirect_prefixes_need_the_isp_and_survive_replicas_and_restarts(
    tmp_path: Path, keys: tuple[ZoneKey, ZoneKey]
) -> None:
    from pcsite_lite.daemon.state import SiteState, WorkerSite
    from pcsite_lite.daemon.store import SiteStore

    app = _app(tmp_path, keys[0].ds_text(), FakeKernel())
    gateways = ["198.18.42.2/32", "198.18.43.2/32"]
    doc = {"service": "congestion", "service_id": 0xC6F0, "redirect_prefixes": gateways}
    r = _call(app, "POST", "/v1/psps/acme/service-ids", PSP_TOKEN, doc)  # the PSP alone
    assert (r.status, r.json()["error"]["code"]) == (403, "forbidden")  # type: ignore[attr-defined]
    bad = {**doc, "redirect_prefixes": ["198.18.42.2/24"]}  # host bits set
    r = _call(app, "POST", "/v1/psps/acme/service-ids", ADMIN, bad)
    assert (r.status, r.json()["error"]["code"]) == (400, "bad_field")  # type: ignore[attr-defined]
    r = _call(app, "POST", "/v1/psps/acme/service-ids", ADMIN, doc)  # the ISP, for the PSP
    assert r.status == 201 and r.json()["redirect_prefixes"] == gateways  # type: ignore[attr-defined]
    state = app.backend.state  # type: ignore[attr-defined]
    assert state.site.service_ids[0xC6F0].redirect_prefixes == gateways
    replica = WorkerSite(state.cfg)  # a worker rebuilt from the master
    for op in state.snapshot_ops():
        replica.apply(op)
    assert replica.site.service_ids[0xC6F0].redirect_prefixes == gateways
    store = SiteStore(tmp_path / "site.db")  # what a restarted site reads back
    store.put_service_id(0xC6F0, "acme", "congestion", gateways)
    store.put_service_id(7, "acme", "plain")
    assert store.load(NOW).service_id_redirects == {0xC6F0: gateways}
    restarted = SiteState(state.cfg)
    restarted.restore(store.load(NOW), log=lambda _: None)
    assert restarted.site.service_ids[0xC6F0].redirect_prefixes == gateways
    store.delete_service_id(0xC6F0)
    assert store.load(NOW).service_id_redirects == {}
    store.close()
    r = _call(app, "POST", "/v1/psps/acme/service-ids", PSP_TOKEN, {"service": "other"})
    assert r.status == 201 and r.json()["redirect_prefixes"] == []  # type: ignore[attr-defined]


def test_the_isp_writes_longest_prefix_entries_of_its_namespace_and_only_the_isp(
    tmp_path: Path, keys: tuple[ZoneKey, ZoneKey]
) -> None:
    from pcsite_lite import fis

    app = _app(tmp_path, keys[0].ds_text(), FakeKernel())
    entry = {"prefix": "198.18.42.0/24", "value": {"level": 0.95}}
    r = _call(app, "PUT", "/v1/isp/fis/isp/lpm/congestion", PSP_TOKEN, entry)
    assert r.status == 403  # type: ignore[attr-defined]
    r = _call(app, "PUT", "/v1/isp/fis/acme.x/lpm/congestion", ADMIN, entry)
    assert (r.status, r.json()["error"]["code"]) == (404, "not_found")  # type: ignore[attr-defined]
    r = _call(app, "PUT", "/v1/isp/fis/isp/lpm/congestion", ADMIN, {**entry, "prefix": "x"})
    assert r.status == 400  # type: ignore[attr-defined]
    r = _call(app, "PUT", "/v1/isp/fis/isp/lpm/congestion", ADMIN, entry)
    assert r.status == 204, r.body  # type: ignore[attr-defined]
    store = app.backend.fis  # type: ignore[attr-defined]
    assert dict(store.lpm_items(fis.ISP, fis.CONGESTION)) == {"198.18.42.0/24": {"level": 0.95}}
