"""Collecting a site daemon's /metrics into the ledger: deltas, exactly once, resets."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcsite_lite.billing.cli import main
from pcsite_lite.billing.collect import MetricsError, UsageCollector, parse_service_counters
from pcsite_lite.billing.ledger import Ledger
from pcsite_lite.metering import Counters
from pcsite_lite.metrics import WorkerStats, render

from .util import T0


def metrics(usage: dict[tuple[str, str], Counters], site: str = "site-a") -> str:
    """What the daemon serves (rendered by the daemon's own renderer)."""
    return render({0: WorkerStats(rx_packets=1)}, usage, site=site)


def test_parser_reads_what_the_daemon_renders_including_escaped_labels() -> None:
    usage = {
        ("acme", "relay"): Counters(packets=3, bytes_in=300, cpu_ns=7),
        ('we"ird\\psp', "fw"): Counters(drops=2),
    }
    got = parse_service_counters(metrics(usage))
    assert got == {("site-a", p, s): c for (p, s), c in usage.items()}


@pytest.mark.parametrize(
    "line, message",
    [
        ('pcsite_service_packets_total{site="s",psp="p"} 1', "no 'service' label"),
        ('pcsite_service_packets_total{site="s",psp="p",service="x"} 1.5', "whole number"),
        ('pcsite_service_packets_total{site="s",psp="p",service="x"} -1', "whole number"),
        ('pcsite_service_packets_total{site="s",psp="p",service="x"} many', "bad value"),
    ],
)
def test_parser_refuses_bad_samples(line: str, message: str) -> None:
    with pytest.raises(MetricsError, match=message):
        parse_service_counters(line)


def test_scrapes_become_interval_records_of_the_increase(ledger: Ledger) -> None:
    col = UsageCollector(ledger, "site-a")
    assert col.observe(metrics({("acme", "relay"): Counters(packets=5)}), T0) == []  # baseline
    recs = col.observe(
        metrics(
            {
                ("acme", "relay"): Counters(packets=12, bytes_out=700),
                ("zeta", "fw"): Counters(packets=1),
            }
        ),
        T0 + 60,
    )
    assert [(r.psp, r.service, r.counters.packets, r.counters.bytes_out) for r in recs] == [
        ("acme", "relay", 7, 700),
        ("zeta", "fw", 1, 0),
    ]
    assert all((r.site, r.interval_start, r.interval_end) == ("site-a", T0, T0 + 60) for r in recs)
    # nothing new: no records
    same = metrics(
        {
            ("acme", "relay"): Counters(packets=12, bytes_out=700),
            ("zeta", "fw"): Counters(packets=1),
        }
    )
    assert col.observe(same, T0 + 120) == []
    assert sum(r.counters.packets for r in ledger.records()) == 8


def test_a_restarted_collector_continues_exactly_where_it_stopped(tmp_path: Path) -> None:
    path = tmp_path / "l.ledger"
    with Ledger(path) as led:
        col = UsageCollector(led, "site-a")
        col.observe(metrics({("acme", "relay"): Counters(packets=1)}), T0)
        col.observe(metrics({("acme", "relay"): Counters(packets=4)}), T0 + 60)
    with Ledger(path) as led:  # a new process, same ledger
        col = UsageCollector(led, "site-a")
        recs = col.observe(metrics({("acme", "relay"): Counters(packets=10)}), T0 + 120)
        assert [(r.interval_start, r.counters.packets) for r in recs] == [(T0 + 60, 6)]
        assert sum(r.counters.packets for r in led.records()) == 9
        with pytest.raises(MetricsError, match="not after"):
            col.observe(metrics({}), T0 + 120)


def test_a_counter_reset_never_bills_twice(ledger: Ledger) -> None:
    col = UsageCollector(ledger, "site-a")
    col.observe(metrics({("acme", "relay"): Counters(packets=100, bytes_in=9000)}), T0)
    # a worker restarted: the site's sums went down for packets, up for nothing
    recs = col.observe(metrics({("acme", "relay"): Counters(packets=40, bytes_in=9500)}), T0 + 1)
    assert [(r.counters.packets, r.counters.bytes_in) for r in recs] == [(0, 500)]
    recs = col.observe(metrics({("acme", "relay"): Counters(packets=45, bytes_in=9600)}), T0 + 2)
    assert [(r.counters.packets, r.counters.bytes_in) for r in recs] == [(5, 100)]


def test_pcbill_collect_errors_are_clear(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PCBILL_TOKEN", raising=False)
    led = str(tmp_path / "c.ledger")
    assert main(["collect", "--url", "http://127.0.0.1:9", "--ledger", led]) == 1
    assert "ISP token is needed" in capsys.readouterr().err
    rc = main(
        [
            "collect",
            "--url",
            "http://127.0.0.1:9",
            "--token",
            "t" * 24,
            "--ledger",
            led,
            "--count",
            "1",
            "--retry-delay",
            "0.01",
            "--max-failures",
            "3",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "127.0.0.1:9" in err and "Traceback" not in err
    # it retried (with backoff) before giving up, saying so
    assert err.count("retry") == 2 and "3 failed attempts in a row" in err
