"""The billing demo: invoices come out of a run of the real site pipeline."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from pcsite_lite.billing.demo import main
from pcsite_lite.billing.ledger import Ledger


def test_demo_run_meters_into_a_ledger_and_prints_both_invoices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "demo.ledger"
    assert (
        main(["--ledger", str(path), "--packets", "400", "--interval", "100", "--format", "json"])
        == 0
    )
    out = capsys.readouterr().out
    docs = [json.loads(chunk) for chunk in _json_docs(out)]
    assert [d["psp"] for d in docs] == ["acme", "zeta"]
    acme = {(li["service"], li["resource"]) for li in docs[0]["lines"]}
    assert {
        ("relay", "bandwidth_interdomain"),
        ("relay", "bandwidth_local"),
        ("meter", "log_lines"),
        ("meter", "fis_reads"),
    } <= acme
    for d in docs:
        assert sum(Decimal(li["amount"]) for li in d["lines"]) == Decimal(d["total"]) > 0
    with Ledger(path, create=False) as led:
        assert len(led.logs("acme", service="meter")) == 100  # one log line per meter packet
        assert sum(r.counters.packets for r in led.records()) == 400
    assert "--prices" in out.splitlines()[-1]


def test_demo_refuses_to_overwrite_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "demo.ledger"
    path.write_text("x")
    with pytest.raises(SystemExit) as e:
        main(["--ledger", str(path), "--packets", "4"])
    assert e.value.code == 2


def _json_docs(text: str) -> list[str]:
    """The top-level JSON objects in the demo's output."""
    docs: list[str] = []
    buf: list[str] = []
    depth = 0
    for line in text.splitlines():
        if line.startswith("{") and depth == 0:
            buf = []
        if depth or line.startswith("{"):
            buf.append(line)
            depth += line.count("{") - line.count("}")
            if depth == 0:
                docs.append("\n".join(buf))
    return docs
