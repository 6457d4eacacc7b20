"""The daemon's usage ledger writer and the idempotent export/collection built on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcsite_lite.billing.collect import collect_export
from pcsite_lite.billing.ledger import Ledger, LedgerError
from pcsite_lite.daemon.config import ConfigError, parse
from pcsite_lite.daemon.usage import UsageRecorder, export_since, totals
from pcsite_lite.metering import Counters
from tests.support import FakeClock


def test_recorder_appends_increases_over_contiguous_intervals(tmp_path: Path) -> None:
    usage = {("acme", "relay"): Counters(packets=10, bytes_in=1000)}
    clock = FakeClock(100.0)
    rec = UsageRecorder("s1", tmp_path / "u.ledger", lambda: usage, clock=clock)
    clock.now = 100.5
    assert rec.flush() == 1
    clock.now = 101.0
    assert rec.flush() == 0  # nothing new: no record
    usage = {("acme", "relay"): Counters(packets=15, bytes_in=1500),
             ("acme", "fw"): Counters(packets=1)}  # fmt: skip
    clock.now = 101.5
    assert rec.flush() == 2
    rec.close()
    with Ledger(tmp_path / "u.ledger", create=False) as led:
        got = [(r.service, r.interval_start, r.interval_end, r.counters.packets)
               for r in led.records()]  # fmt: skip
    assert got == [
        ("relay", 100.0, 100.5, 10),
        ("fw", 101.0, 101.5, 1),
        ("relay", 101.0, 101.5, 5),
    ]


def test_recorder_keeps_usage_queued_while_the_ledger_fails(tmp_path: Path) -> None:
    usage = {("acme", "relay"): Counters(packets=3)}
    clock = FakeClock(10.0)
    rec = UsageRecorder("s1", tmp_path / "u.ledger", lambda: usage, clock=clock)
    clock.now = 11.0
    rec.take()
    real = rec.ledger.append_many

    def broken(*a: object, **k: object) -> list[str]:
        raise LedgerError("disk full")

    rec.ledger.append_many = broken  # type: ignore[method-assign]
    with pytest.raises(LedgerError):
        rec.write()
    assert len(rec.pending) == 1
    rec.ledger.append_many = real  # type: ignore[method-assign]
    usage = {("acme", "relay"): Counters(packets=5)}
    clock.now = 12.0
    rec.take()
    assert rec.write() == 2 and rec.pending == []
    rec.close()
    with Ledger(tmp_path / "u.ledger", create=False) as led:
        assert sum(r.counters.packets for r in led.records()) == 5


def test_totals_sum_workers() -> None:
    got = totals([{"acme/relay": {"packets": 2}}, {"acme/relay": {"packets": 3, "drops": 1}}])
    assert got == {("acme", "relay"): Counters(packets=5, drops=1)}


def test_collection_is_an_idempotent_export_with_a_cursor(tmp_path: Path) -> None:
    site = tmp_path / "site.ledger"
    usage = {("acme", "relay"): Counters(packets=1)}
    clock = FakeClock(1000.0)
    rec = UsageRecorder("s1", site, lambda: usage, clock=clock)
    asked: list[float] = []

    def fetch(since: float) -> str:
        asked.append(since)
        return export_since(site, since)

    with Ledger(tmp_path / "central.ledger") as central:
        for i in range(1, 4):
            usage = {("acme", "relay"): Counters(packets=i * 10)}
            clock.now = 1000.0 + i
            rec.flush()
        r1, cursor = collect_export(central, "s1", fetch)
        assert (r1.records_added, cursor) == (3, 1002.0)
        # a second collection asks from the cursor; the record there is already present
        r2, _ = collect_export(central, "s1", fetch)
        assert (r2.records_added, r2.records_skipped) == (0, 1)
        usage = {("acme", "relay"): Counters(packets=45)}
        clock.now = 1004.0
        rec.flush()
        r3, cursor = collect_export(central, "s1", fetch)
        assert (r3.records_added, cursor) == (1, 1003.0)
        assert asked == [0.0, 1002.0, 1002.0]
        assert sum(r.counters.packets for r in central.records("acme")) == 45
    rec.close()


def _cfg(extra: str) -> dict:
    import tomllib

    return tomllib.loads(
        '[site]\nname = "s"\npublic_ip = "198.18.0.1"\nstate_dir = "/tmp/x"\n'
        '[control]\nadmin_token = "a-long-enough-admin-token-000"\n' + extra
    )


def test_metering_config_defaults_and_limits() -> None:
    cfg = parse(_cfg(""))
    assert (cfg.metering.ledger, cfg.metering.interval) == ("/tmp/x/usage.ledger", 0.5)
    cfg = parse(_cfg('[metering]\nledger = "/var/lib/u.ledger"\ninterval = 1\n'))
    assert (cfg.metering.ledger, cfg.metering.interval) == ("/var/lib/u.ledger", 1.0)
    with pytest.raises(ConfigError, match=r"metering\.interval"):
        parse(_cfg("[metering]\ninterval = 0\n"))
    with pytest.raises(ConfigError, match=r"metering\.nope"):
        parse(_cfg("[metering]\nnope = 1\n"))


def test_usage_export_route_is_the_isps_and_checks_its_argument(tmp_path: Path) -> None:
    from pcsite_lite.billing.ledger import Ledger as L
    from pcsite_lite.control.app import ControlApp, Request
    from pcsite_lite.control.auth import Credentials
    from pcsite_lite.control.site_backend import SiteBackend

    admin, psp = "u-admin-token-0123456789", "u-acme-token-0123456789"
    cfg = parse({"site": {"name": "s", "public_ip": "198.18.0.1", "state_dir": str(tmp_path),
                          "fis": f"sqlite://{tmp_path / 'fis.db'}"},
                 "control": {"admin_token": admin}})  # fmt: skip
    clock = FakeClock(50.0)
    rec = UsageRecorder("s", tmp_path / "u.ledger", lambda: {("acme", "r"): Counters(packets=7)},
                        clock=clock)  # fmt: skip
    clock.now = 51.0
    rec.flush()
    creds = Credentials(admin_token=admin, psp_tokens={"acme": psp})

    def get(app: ControlApp, path: str, token: str) -> tuple[int, dict]:
        r = app.handle(Request("GET", path, {"authorization": f"Bearer {token}"}))
        return r.status, r.json()

    be = SiteBackend(cfg, usage_export=lambda since: export_since(tmp_path / "u.ledger", since))
    app = ControlApp(be, creds)
    status, doc = get(app, "/v1/isp/usage/0", admin)
    assert status == 200 and doc["site"] == "s"
    with L(tmp_path / "central.ledger") as central:
        assert central.import_export(doc["export"].encode()).records_added == 1
    assert get(app, "/v1/isp/usage/51", admin)[1]["export"].count("\n") == 1  # header only
    assert get(app, "/v1/isp/usage/0", psp)[0] == 403
    assert get(app, "/v1/isp/usage/soon", admin)[0] == 400
    assert get(app, "/v1/isp/usage/nan", admin)[0] == 400
    assert get(ControlApp(SiteBackend(cfg), creds), "/v1/isp/usage/0", admin)[0] == 501
    be.close()
    rec.close()
