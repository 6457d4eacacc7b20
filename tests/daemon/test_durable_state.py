"""The site's durable state without root: what the control API acknowledged comes back in a
new backend over the same store; a refused write answers 503 and changes nothing; ownership
proofs lapse when they expire or stop validating; bad rows are skipped, not fatal."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pcdemo.rig import render_toml
from pcsite_lite.control.app import ControlApp, Request
from pcsite_lite.control.auth import Credentials
from pcsite_lite.control.site_backend import SiteBackend
from pcsite_lite.daemon.config import SiteConfig, parse
from pcsite_lite.daemon.state import WorkerSite
from pcsite_lite.daemon.store import DB_NAME, SiteStore, StateLock, StoreError
from pcsock.ownership import OwnershipClaim, ZoneKey, build_proof, reverse_zone
from tests.support.sites import ADMIN, OTHER_TOKEN, PSP_TOKEN

from .test_signup_metrics_cli import NOW, PREFIX, FakeKernel

KEY = bytes(range(16)).hex()


@pytest.fixture(scope="module")
def zkeys() -> tuple[ZoneKey, ZoneKey]:
    """A root key and the reverse zone's key of PREFIX (generated once per module)."""
    return ZoneKey.generate("in-addr.arpa."), ZoneKey.generate(reverse_zone(PREFIX))


DELIVER = {"in_key": KEY, "out": [], "deliver": "198.18.9.8"}


def _cfg(tmp: Path, anchor: str = "") -> SiteConfig:
    control: dict[str, Any] = {"admin_token": ADMIN, "psps": {
        "acme": {"token": PSP_TOKEN}, "evil": {"token": OTHER_TOKEN}}}  # fmt: skip
    if anchor:
        control["trust_anchor"] = anchor
    return parse({
        "site": {"name": "t1", "public_ip": "198.18.9.1", "fis": f"sqlite://{tmp / 'f.db'}",
                 "state_dir": str(tmp)},
        "control": control,
    })  # fmt: skip


class Site:
    """A backend with a store over ``tmp`` behind the control app; ``now`` is settable."""

    def __init__(self, tmp: Path, anchor: str) -> None:
        self.now = NOW
        self.ops: list[dict[str, Any]] = []
        self.log: list[str] = []
        self.kernel = FakeKernel()
        self.store = SiteStore(tmp / DB_NAME)
        self.backend = SiteBackend(_cfg(tmp, anchor), kernel=self.kernel, clock=lambda: self.now,
                                   store=self.store, broadcast=self.ops.append,
                                   log_line=self.log.append)  # fmt: skip
        self.restored = self.backend.restore()
        creds = Credentials(admin_token=ADMIN, psp_tokens={"acme": PSP_TOKEN})
        self.app = ControlApp(self.backend, creds, trust_anchor=anchor, clock=lambda: self.now)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = b"" if body is None else json.dumps(body).encode()
        r = self.app.handle(Request(method, f"/v1/psps/acme{path}",
                                    {"authorization": f"Bearer {PSP_TOKEN}"}, data))  # fmt: skip
        return r.status, (json.loads(r.body) if r.body else None)

    def close(self) -> None:
        self.backend.close()


def _proof(zkeys: tuple[ZoneKey, ZoneKey], not_after: float = NOW + 86400) -> str:
    root, own = zkeys
    claim = OwnershipClaim(PREFIX, "acme", "firewall", NOW - 3600, not_after)
    p = build_proof([claim], own, chain=[root], inception=NOW - 60, expiration=NOW + 3600)
    return str(p)


def _state(b: SiteBackend) -> list[str]:
    return sorted(json.dumps(op, sort_keys=True) for op in b.snapshot_ops())


def test_acknowledged_changes_come_back_in_a_new_backend_over_the_same_store(
    tmp_path: Path, zkeys: tuple[ZoneKey, ZoneKey]
) -> None:
    a = Site(tmp_path, zkeys[0].ds_text())
    labels = []
    for i in range(3):
        st, doc = a.call("POST", "/circuits", {"service": f"svc{i}", "lifetime": 600})
        assert st == 201
        labels.append(doc["label"])
        st, _ = a.call("PUT", f"/circuits/{doc['label']}", {
            "in_key": KEY, "out": [{"label": 100 + i, "next_hop": "198.18.9.9", "key": KEY}],
            "lifetime": 600})  # fmt: skip
        assert st == 200
    assert a.call("POST", f"/circuits/{labels[1]}/renew", {"lifetime": 900})[0] == 200
    assert a.call("DELETE", f"/circuits/{labels[2]}")[0] == 204
    pending = a.call("POST", "/circuits", {"service": "later", "lifetime": 600})[1]["label"]
    assert a.call("POST", "/service-ids", {"service": "tagger", "service_id": 7})[0] == 201
    assert a.call("POST", "/service-ids", {"service": "gone", "service_id": 8})[0] == 201
    assert a.call("DELETE", "/service-ids/8")[0] == 204
    st, doc = a.call("POST", "/destinations",
                     {"prefix": PREFIX, "service": "firewall", "proof": _proof(zkeys)})  # fmt: skip
    assert st == 201, doc
    before = _state(a.backend)
    a.close()

    b = Site(tmp_path, zkeys[0].ds_text())  # what a restarted daemon does at start
    assert b.restored["circuits"] == 2 and b.restored["service_ids"] == 1
    assert b.restored["destinations"] == 1 and b.restored["reservations"] == 1
    assert _state(b.backend) == before
    assert b.backend.state.circuits.get(labels[1]).expires == NOW + 900
    assert b.call("GET", "/destinations")[1]["destinations"][0]["prefix"] == PREFIX
    assert b.kernel.divert == []  # the supervisor loads the divert set after kernel setup
    b.backend.apply_divert()
    assert b.kernel.divert == [[PREFIX]]
    # the reservation survived with its service: installing it after the restart works
    st, doc = b.call("PUT", f"/circuits/{pending}",
                     DELIVER)  # fmt: skip
    assert st == 200 and doc["service"] == "later"
    # and a worker replica streamed from the restored master holds the same state
    replica = WorkerSite(b.backend.cfg)
    for op in b.backend.iter_snapshot_ops():
        replica.apply(op)
    assert replica.site.circuits.get(labels[0]) is not None
    assert replica.site.service_ids[7].service == "tagger"
    reg = replica.site.destinations.get(PREFIX)
    assert reg is not None and reg.service == "firewall"
    b.close()
    # the store holds hop keys: only its owner may read it
    assert (tmp_path / DB_NAME).stat().st_mode & 0o077 == 0
    # the credentials table holds digests of the configured tokens, never the tokens
    db = sqlite3.connect(tmp_path / DB_NAME)
    rows = dict(db.execute("SELECT name, token_sha256 FROM credentials").fetchall())
    assert set(rows) == {"isp", "acme", "evil"}
    assert PSP_TOKEN not in rows.values() and len(rows["acme"]) == 64


def test_a_refused_store_write_answers_503_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = Site(tmp_path, "")
    label = a.call("POST", "/circuits", {"service": "s", "lifetime": 600})[1]["label"]
    before = _state(a.backend)
    ops = len(a.ops)

    def refuse(*_: Any) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(a.store, "_tx", refuse)
    st, doc = a.call("PUT", f"/circuits/{label}", DELIVER)
    assert (st, doc["error"]["code"]) == (503, "unavailable")
    assert "disk full" in doc["error"]["message"]
    assert a.call("POST", "/service-ids", {"service": "t", "service_id": 9})[0] == 503
    assert a.call("DELETE", f"/circuits/{label}")[0] == 503
    # nothing reached the workers and the master is as before
    assert _state(a.backend) == before and len(a.ops) == ops
    assert 9 not in a.backend.state.site.service_ids
    monkeypatch.undo()
    st, _ = a.call("PUT", f"/circuits/{label}", DELIVER)
    assert st == 200  # the reservation is still held
    a.close()


def test_a_refused_release_puts_the_service_id_back_with_its_redirect_prefixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pcsite_lite.control.errors import ApiError

    a = Site(tmp_path, "")
    a.backend.register_service_id("acme", "t", 9, redirect_prefixes=["198.18.7.0/24"])

    def refuse(*_: Any) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(a.store, "_tx", refuse)
    with pytest.raises(ApiError):
        a.backend.release_service_id("acme", 9)
    reg = a.backend.state.site.service_ids[9]
    assert (reg.psp, reg.service, reg.redirect_prefixes) == ("acme", "t", ["198.18.7.0/24"])
    a.close()


def test_an_expired_proof_lapses_with_a_log_line_a_metric_and_a_release_op(
    tmp_path: Path, zkeys: tuple[ZoneKey, ZoneKey]
) -> None:
    a = Site(tmp_path, zkeys[0].ds_text())
    proof = _proof(zkeys, not_after=NOW + 8)
    st, _ = a.call("POST", "/destinations", {"prefix": PREFIX, "service": "firewall",
                                             "proof": proof})  # fmt: skip
    assert st == 201
    assert a.backend.tick(NOW + 5) == NOW + 8  # the next check is due at the proof's expiry
    assert a.backend.state.site.destinations.get(PREFIX) is not None
    a.backend.tick(NOW + 8.5)
    assert a.backend.state.site.destinations.get(PREFIX) is None
    assert a.call("GET", "/destinations")[1]["destinations"] == []
    assert any("lapsed" in line and PREFIX in line for line in a.log)
    assert a.ops[-1] == {"op": "release_destination", "prefix": PREFIX}
    assert a.kernel.divert[-1] == []
    assert 'pcsite_destinations_lapsed_total{site="t1"} 1' in a.backend.metrics_text()
    a.close()
    b = Site(tmp_path, zkeys[0].ds_text())  # and it does not come back at the next start
    assert b.restored["destinations"] == 0
    b.close()
    # a replica drops it on the release op
    replica = WorkerSite(_cfg(tmp_path))
    replica.apply({"op": "destination", "prefix": PREFIX, "psp": "acme", "service": "f"})
    replica.apply({"op": "release_destination", "prefix": PREFIX})
    assert replica.site.destinations.get(PREFIX) is None


def test_proofs_are_validated_again_and_lapse_under_a_new_trust_anchor(
    tmp_path: Path, zkeys: tuple[ZoneKey, ZoneKey]
) -> None:
    a = Site(tmp_path, zkeys[0].ds_text())
    st, _ = a.call("POST", "/destinations",
                   {"prefix": PREFIX, "service": "firewall", "proof": _proof(zkeys)})  # fmt: skip
    assert st == 201
    assert a.backend.recheck_proofs() == 0  # still valid
    assert a.backend.state.site.destinations.get(PREFIX) is not None
    # the RRSIGs expire at NOW + 3600, before the claim's not_after: that is the lapse time
    assert a.backend.tick(NOW) == NOW + 3600
    other = ZoneKey.generate("in-addr.arpa.")
    a.backend.reconfigure(_cfg(tmp_path, other.ds_text()))  # what SIGHUP does
    assert a.backend.recheck_proofs() == 1
    assert a.backend.state.site.destinations.get(PREFIX) is None
    assert any("no longer valid" in line for line in a.log)
    a.close()


def test_rows_that_do_not_parse_are_skipped_and_the_rest_restored(tmp_path: Path) -> None:
    a = Site(tmp_path, "")
    for _ in range(2):
        label = a.call("POST", "/circuits", {"service": "s", "lifetime": 600})[1]["label"]
        assert a.call("PUT", f"/circuits/{label}", DELIVER)[0]
    a.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("UPDATE circuits SET op='{not json' WHERE label=(SELECT MIN(label) FROM circuits)")
    db.commit()
    db.close()
    b = Site(tmp_path, "")
    assert b.restored["circuits"] == 1 and b.restored["skipped"] == 1
    assert any("skipped circuit" in line for line in b.log)
    b.close()


def test_one_daemon_per_state_dir_and_cleanup_refuses_a_running_site(tmp_path: Path) -> None:
    cfg = tmp_path / "site.toml"
    site = {"name": "t1", "public_ip": "198.18.9.1", "state_dir": str(tmp_path)}
    cfg.write_text(render_toml({"site": site, "control": {"admin_token": ADMIN}}))
    with StateLock(tmp_path):
        with pytest.raises(StoreError, match="another pcsite runs this site"):
            StateLock(tmp_path).acquire()
        for cmd in ("cleanup", "run"):
            r = subprocess.run([sys.executable, "-m", "pcsite_lite.cli", cmd, "--config",
                                str(cfg)], capture_output=True, text=True, timeout=60)  # fmt: skip
            assert r.returncode != 0
            if cmd == "cleanup":
                assert "another pcsite runs this site" in r.stderr, r.stderr
    StateLock(tmp_path).acquire()  # released with the holder


def test_the_systemd_unit_restarts_on_failure_cleans_up_and_runs_real_commands(
    tmp_path: Path,
) -> None:
    import configparser
    import shutil

    unit = Path(__file__).parents[2] / "contrib" / "systemd" / "pcsite@.service"
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.read_string(unit.read_text())
    svc = cp["Service"]
    assert svc["Restart"] == "on-failure" and svc["RestartPreventExitStatus"] == "2"
    assert svc["ExecStart"].split()[1:] == ["run", "--config", "/etc/pcsite/%i.toml"]
    assert svc["ExecStopPost"].split()[1:] == ["cleanup", "--config", "/etc/pcsite/%i.toml"]
    # the commands it runs exist in this installation's CLI
    for cmd in ("run", "cleanup"):
        r = subprocess.run([sys.executable, "-m", "pcsite_lite.cli", cmd, "--help"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr
    pcsite = Path(sys.executable).parent / "pcsite"
    analyze = shutil.which("systemd-analyze")
    if analyze and pcsite.exists():  # systemd's own check of the unit, with our binary
        local = tmp_path / "pcsite@.service"
        local.write_text(unit.read_text().replace("/usr/local/bin/pcsite", str(pcsite)))
        r = subprocess.run([analyze, "verify", str(tmp_path / "pcsite@x.service")],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr


def test_supervisor_streams_any_size_of_state_gives_buckets_only_on_the_ack_and_survives_junk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor's half of ready-means-ready, over a socketpair (no root): a hop with
    5,000 out hops in the master state is streamed in frames; the worker becomes ready (and
    the bucket map is recomputed) only when it acks the ``synced`` op; a malformed message
    from a worker ends that worker, never the daemon."""
    import socket as socketlib

    import trio

    from pcsite_lite.daemon import channel
    from pcsite_lite.daemon.supervisor import Supervisor, WorkerSlot

    restarting = trio.Event()  # the supervisor's log says it ends the worker

    def log(msg: str) -> None:
        if "restarting it" in msg:
            restarting.set()

    sup = Supervisor(_cfg(tmp_path), log=log)
    rebalanced: list[bool] = []
    recomputed = trio.Event()

    def rebalance() -> None:  # the supervisor calls it in a thread
        rebalanced.append(True)
        trio.from_thread.run_sync(recomputed.set)

    monkeypatch.setattr(sup, "_rebalance", rebalance)
    from pcsite_lite.circuits import OutHopEntry

    # straight into the master copy (whatever limit the API sets on out hops per hop)
    table = sup.backend.state.circuits
    table.reserve(77, "acme")
    table.install(77, psp="acme", service="relay", in_key=bytes(range(16)),
                  out_hops=[OutHopEntry(10_000 + i, "198.18.9.9") for i in range(5000)],
                  expires=time.time() + 600)  # fmt: skip
    ours, theirs = socketlib.socketpair(socketlib.AF_UNIX, socketlib.SOCK_SEQPACKET)
    ours.setblocking(False)
    # kept: the worker's stand-in idles (the workload) until the supervisor kills it
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    slot = WorkerSlot(0, tun=None, proc=victim, sock=ours)
    sup.slots.append(slot)
    got: list[dict[str, Any]] = []

    async def worker_side() -> None:
        theirs.setblocking(False)
        inbox = channel.Reassembler()
        theirs.send(b'{"ready": 0, "pid": 1}')
        while True:
            await trio.lowlevel.wait_readable(theirs)
            doc = inbox.feed(theirs.recv(1 << 20))
            if doc is None:
                continue
            got.append(doc)
            if doc["op"] == "synced":
                assert not slot.ready and not rebalanced  # no traffic before the ack
                theirs.send(json.dumps({"ack": doc["seq"]}).encode())
                return

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(sup._guarded, slot, "reading", sup._read_worker, ours)
            n.start_soon(sup._guarded, slot, "sending", sup._sender, ours)
            await worker_side()
            with trio.fail_after(10):  # the ack: ready, and the bucket map recomputed
                await recomputed.wait()
            assert slot.ready
            theirs.send(b"{not json")  # a worker that talks nonsense is restarted
            with trio.fail_after(10):
                await restarting.wait()
            assert await trio.to_thread.run_sync(victim.wait, 10) == -9  # killed by it
            n.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        victim.kill()
        victim.wait()
        sup.backend.close()
    assert [d["op"] for d in got] == ["circuit", "synced"]
    assert len(got[0]["out"]) == 5000
    assert victim.returncode == -9
