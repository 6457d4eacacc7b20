"""The usage ledger: durability under SIGKILL, idempotent export/import, the logging API."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pcsite_lite.billing.ledger import (
    Ledger,
    LedgerConflict,
    LedgerError,
    LogLine,
    record_id,
)
from pcsite_lite.metering import Counters, UsageRecord

from .util import DAY, T0, rec

# A site worker: appends usage records forever and prints each id once append() returned.
CHILD = textwrap.dedent(
    """
    import sys
    from pcsite_lite.billing.ledger import Ledger
    from pcsite_lite.metering import Counters, UsageRecord

    path, site = sys.argv[1], sys.argv[2]
    led = Ledger(path)
    i = 0
    while True:
        r = UsageRecord(site, "acme", "svc", float(i), float(i + 1), Counters(packets=i, cpu_ns=7))
        rid = led.append(r)
        sys.stdout.write(rid + "\\n")
        sys.stdout.flush()
        i += 1
    """
)


def test_ledger_is_wal_with_full_sync(ledger: Ledger) -> None:
    assert str(ledger.pragma("journal_mode")).lower() == "wal"
    assert ledger.pragma("synchronous") == 2  # FULL


def test_sigkilled_writers_lose_no_acknowledged_record(tmp_path: Path, run_id: str) -> None:
    path = tmp_path / "crash.ledger"
    Ledger(path).close()  # create the schema once, before the writers race
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), f"{run_id}-w{k}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for k in range(2)
    ]
    acked: list[str] = []
    try:
        # let both writers acknowledge some records, then kill them mid-stream by PID
        first = [b"".join(p.stdout.readline() for _ in range(3)) for p in procs if p.stdout]
        assert all(lines.count(b"\n") == 3 for lines in first), [p.stderr for p in procs]
        for p in procs:
            assert p.poll() is None, "a writer died before it was killed"
            os.kill(p.pid, signal.SIGKILL)
        for p in procs:
            p.wait(timeout=10)
            assert p.returncode == -signal.SIGKILL
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
    for p, line in zip(procs, first):
        assert p.stdout is not None
        rest = p.stdout.read()
        p.stdout.close()
        p.stderr.close()  # type: ignore[union-attr]
        text = (line + rest).decode()
        # only complete lines were acknowledged; a torn last line was not
        acked += text.split("\n")[:-1]
    assert len(acked) >= 4, acked
    with Ledger(path) as led:
        present = led.ids()
        assert set(acked) <= present
        # nothing beyond what was committed: at most one unacknowledged row per writer
        assert len(present) - len(acked) <= len(procs)
        assert led._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_append_returns_the_record_id_and_reads_back(ledger: Ledger) -> None:
    r = rec(0, packets=3, cpu_ns=10**9, bytes_local=1500)
    rid = ledger.append(r)
    assert rid == record_id("site-a", "acme", "mcast", T0)
    assert ledger.records() == [r]
    assert ledger.psps() == ["acme"]


def test_identical_append_is_a_no_op_and_a_different_one_conflicts(ledger: Ledger) -> None:
    r = rec(0, packets=3)
    assert ledger.append(r) == ledger.append(r)
    assert len(ledger.records()) == 1
    with pytest.raises(LedgerConflict):
        ledger.append(rec(0, packets=4))
    assert ledger.records() == [r]


def test_append_many_is_all_or_nothing(ledger: Ledger) -> None:
    ledger.append(rec(1, packets=1))
    with pytest.raises(LedgerConflict):
        ledger.append_many([rec(0, packets=1), rec(1, packets=2)])
    assert [r.interval_start for r in ledger.records()] == [T0 + 60]


@pytest.mark.parametrize(
    "bad, why",
    [
        (UsageRecord("", "acme", "s", T0, T0 + 1), "site"),
        (UsageRecord("a", "acme", "s", T0, T0 - 1), "before"),
        (UsageRecord("a", "acme", "s", float("nan"), T0), "finite"),
        (UsageRecord("a", "acme", "s", T0, T0 + 1, Counters(packets=-1)), "packets"),
        (UsageRecord("a", "acme", "s", T0, T0 + 1, Counters(cpu_ns=2**64)), "cpu_ns"),
    ],
)
def test_bad_records_are_refused_with_a_reason(ledger: Ledger, bad: UsageRecord, why: str) -> None:
    with pytest.raises(LedgerError, match=why):
        ledger.append(bad)
    assert ledger.records() == []


def test_records_select_psp_and_half_open_period(ledger: Ledger) -> None:
    ledger.append_many([rec(i, packets=1) for i in range(5)] + [rec(2, psp="other")])
    got = ledger.records("acme", T0 + 60, T0 + 180)
    assert [r.interval_start for r in got] == [T0 + 60, T0 + 120]


def test_a_missing_ledger_is_not_created_for_readers(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="does not exist"):
        Ledger(tmp_path / "nope.ledger", create=False)
    assert not (tmp_path / "nope.ledger").exists()


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "junk.ledger"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="not a usable ledger"):
        Ledger(p)


# -- export / import ---------------------------------------------------------------------------


def _fill(led: Ledger) -> None:
    led.append_many(
        [rec(i, service=s, packets=i + 1, cpu_ns=10**6 * i) for i in range(6) for s in ("a", "b")]
        + [rec(1, psp="zeta", site="site-b", bytes_interdomain=10)]
    )
    sink = led.log_sink("site-a", "acme", "a", clock=iter([T0 + 1, T0 + 2, T0 + DAY]).__next__)
    for text in ("joined group 1", "left group 1", "next day"):
        sink(text)
    sink.flush()


def test_export_of_a_period_is_byte_identical_every_time(tmp_path: Path) -> None:
    with Ledger(tmp_path / "a.ledger") as led:
        _fill(led)
        one = led.export(T0, T0 + 240)
        # later appends outside the period do not change the period's export
        led.append(rec(100, packets=1))
        two = led.export(T0, T0 + 240)
    with Ledger(tmp_path / "a.ledger") as led:
        three = led.export(T0, T0 + 240)
    assert one == two == three
    lines = one.decode().splitlines()
    assert len(lines) == 1 + 8 + 1 + 2  # header, 4 intervals x 2 services, zeta, 2 logs


def test_import_round_trips_and_never_double_counts(tmp_path: Path) -> None:
    with Ledger(tmp_path / "a.ledger") as src:
        _fill(src)
        full = src.export()
        first_half = src.export(None, T0 + 180)
    with Ledger(tmp_path / "b.ledger") as dst:
        r1 = dst.import_export(first_half)
        r2 = dst.import_export(full)  # overlaps the first half
        r3 = dst.import_export(full)  # a plain re-import
        assert (r1.records_added, r1.logs_added) == (7, 2)
        assert (r2.records_added, r2.records_skipped, r2.logs_added) == (6, 7, 1)
        assert (r3.records_added, r3.logs_added) == (0, 0)
        assert r3.records_skipped == 13 and r3.logs_skipped == 3
        assert dst.export() == full
        total = sum(r.counters.packets for r in dst.records("acme"))
    assert total == 2 * sum(i + 1 for i in range(6))


def test_importing_a_conflicting_record_aborts_the_whole_import(tmp_path: Path) -> None:
    with Ledger(tmp_path / "a.ledger") as a, Ledger(tmp_path / "b.ledger") as b:
        a.append_many([rec(0, packets=1), rec(1, packets=1)])
        b.append(rec(1, packets=2))
        with pytest.raises(LedgerConflict):
            b.import_export(a.export())
        assert len(b.records()) == 1


@pytest.mark.parametrize(
    "doc, why",
    [
        (b"", "empty"),
        (b'{"format":"other","version":1}\n', "header"),
        (b"\xff\xfe", "UTF-8"),
        (b'{"format":"pcbill-ledger-export","version":1}\n{nope\n', "line 2: not JSON"),
        (b'{"format":"pcbill-ledger-export","version":1}\n{"kind":"usage"}\n', "missing field"),
        (b'{"format":"pcbill-ledger-export","version":1}\n{"kind":"bill"}\n', "unknown kind"),
    ],
)
def test_malformed_exports_are_refused_with_the_line(ledger: Ledger, doc: bytes, why: str) -> None:
    with pytest.raises(LedgerError, match=why):
        ledger.import_export(doc)


def test_an_export_with_a_forged_record_id_is_refused(ledger: Ledger, tmp_path: Path) -> None:
    with Ledger(tmp_path / "a.ledger") as a:
        a.append(rec(0, packets=1))
        doc = a.export().replace(record_id("site-a", "acme", "mcast", T0).encode(), b"0" * 32)
    with pytest.raises(LedgerError, match="id does not match"):
        ledger.import_export(doc)


# -- logging API (paper §2.5) ------------------------------------------------------------------


def test_log_sink_stores_lines_per_service_at_flush(ledger: Ledger) -> None:
    a = ledger.log_sink("site-a", "acme", "fw", batch=3, clock=lambda: T0)
    b = ledger.log_sink("site-a", "acme", "mcast", batch=3, clock=lambda: T0 + 1)
    a("dropped 10.0.0.1")
    a("dropped 10.0.0.2")
    b("joined")
    assert ledger.logs() == [] and a.pending == 2
    a("dropped 10.0.0.3")  # the third line fills the batch
    assert [ln.text for ln in ledger.logs(service="fw")] == [
        "dropped 10.0.0.1",
        "dropped 10.0.0.2",
        "dropped 10.0.0.3",
    ]
    b.flush()
    assert [ln.text for ln in ledger.logs("acme", service="mcast")] == ["joined"]
    assert ledger.logs("acme", T0 + 1, T0 + 2)[0].service == "mcast"


def test_log_sink_with_batch_1_is_durable_before_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "l.ledger"
    with Ledger(path) as led:
        sink = led.log_sink("s", "acme", "svc", batch=1)
        sink("accounted 1500 bytes for user 7")
        # another connection (another process would be the same) sees it at once
        other = sqlite3.connect(path)
        assert other.execute("SELECT text FROM log").fetchall() == [
            ("accounted 1500 bytes for user 7",)
        ]
        other.close()


def test_log_lines_are_unique_across_sinks(ledger: Ledger) -> None:
    s1 = ledger.log_sink("s", "acme", "svc", batch=1, clock=lambda: T0)
    s2 = ledger.log_sink("s", "acme", "svc", batch=1, clock=lambda: T0)
    s1("same text")
    s2("same text")
    assert len(ledger.logs()) == 2
    with pytest.raises(LedgerConflict):
        line = ledger.logs()[0]
        ledger.append_logs([LogLine(line.id, line.site, line.psp, line.service, T0, "edited")])
