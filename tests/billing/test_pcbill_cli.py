"""The ``pcbill`` command: invoices, export/import, logs, prices, costmodel, and clear errors."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from pcsite_lite.billing.cli import main
from pcsite_lite.billing.ledger import Ledger

from .util import T0, rec

PERIOD = ["--from", "2025-11-25", "--to", "2025-11-26"]


@pytest.fixture
def site_ledger(tmp_path: Path) -> Path:
    path = tmp_path / "site.ledger"
    with Ledger(path) as led:
        led.append_many(
            [rec(i, cpu_ns=3_600 * 10**9, bytes_interdomain=10**9) for i in range(3)]
            + [rec(0, service="fw", bytes_local=4 * 10**9), rec(0, psp="zeta", cpu_ns=1)]
        )
        sink = led.log_sink("site-a", "acme", "fw", clock=lambda: T0 + 5)
        sink("blocked 198.18.0.9")
        sink.flush()
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_invoice_in_all_three_formats(
    capsys: pytest.CaptureFixture[str], site_ledger: Path
) -> None:
    base = ["invoice", "--ledger", str(site_ledger), "--psp", "acme", *PERIOD]
    rc, table, _ = run(capsys, *base)
    assert rc == 0
    # 3 CPU-hours * 0.22 + 3 GB inter-domain * 0.12 + 4 GB local * 0.01
    assert table.splitlines()[-1].split() == ["TOTAL", "1.06"]
    rc, text, _ = run(capsys, *base, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rc == 0 and rows[-1]["amount"] == "1.06"
    assert {(r["service"], r["resource"], r["amount"]) for r in rows[:-1]} == {
        ("mcast", "cpu", "0.66"),
        ("mcast", "bandwidth_interdomain", "0.36"),
        ("fw", "bandwidth_local", "0.04"),
    }
    rc, text, _ = run(capsys, *base, "--format", "json")
    assert rc == 0 and json.loads(text)["total"] == "1.06"


def test_invoice_with_a_price_sheet(
    capsys: pytest.CaptureFixture[str], site_ledger: Path, tmp_path: Path
) -> None:
    sheet = tmp_path / "p.toml"
    sheet.write_text('[cpu]\nprice_per_hour = "1"\n')
    rc, text, _ = run(
        capsys,
        "invoice",
        "--ledger",
        str(site_ledger),
        "--psp",
        "acme",
        *PERIOD,
        "--prices",
        str(sheet),
        "--format",
        "json",
    )
    assert rc == 0 and Decimal(json.loads(text)["total"]) == Decimal("3.40")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ledger", "{missing}", "--psp", "acme", *PERIOD], "does not exist"),
        (["--ledger", "{ledger}", "--psp", "nobody", *PERIOD], "unknown PSP 'nobody'"),
        (
            ["--ledger", "{ledger}", "--psp", "acme", "--from", "2025-13-01", "--to", "2026-01-01"],
            "bad date '2025-13-01'",
        ),
        (
            ["--ledger", "{ledger}", "--psp", "acme", "--from", "2025-11-26", "--to", "2025-11-25"],
            "must be after",
        ),
        (
            ["--ledger", "{ledger}", "--psp", "acme", *PERIOD, "--prices", "{missing}"],
            "does not exist",
        ),
        (["--ledger", "{junk}", "--psp", "acme", *PERIOD], "not a usable ledger"),
    ],
)
def test_invoice_errors_are_one_line_without_traceback(
    capsys: pytest.CaptureFixture[str],
    site_ledger: Path,
    tmp_path: Path,
    argv: list[str],
    message: str,
) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0garbage" * 512)
    subst = {
        "{missing}": str(tmp_path / "missing"),
        "{ledger}": str(site_ledger),
        "{junk}": str(junk),
    }
    rc, out, err = run(capsys, "invoice", *[subst.get(a, a) for a in argv])
    assert rc == 1 and out == ""
    assert err.startswith("pcbill: error: ") and message in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "missing").exists()


def test_export_import_is_idempotent_through_the_cli(
    capsys: pytest.CaptureFixture[str], site_ledger: Path, tmp_path: Path
) -> None:
    e1, e2 = tmp_path / "e1.jsonl", tmp_path / "e2.jsonl"
    assert run(capsys, "export", "--ledger", str(site_ledger), *PERIOD, "-o", str(e1))[0] == 0
    assert run(capsys, "export", "--ledger", str(site_ledger), *PERIOD, "-o", str(e2))[0] == 0
    assert e1.read_bytes() == e2.read_bytes()
    central = tmp_path / "central.ledger"
    rc, out, _ = run(capsys, "import", "--ledger", str(central), str(e1), str(e2))
    assert rc == 0
    assert "5 records added, 0 already present; 1 log lines added" in out.splitlines()[0]
    assert "0 records added, 5 already present; 0 log lines added" in out.splitlines()[1]
    inv = ["invoice", "--psp", "acme", *PERIOD, "--format", "json"]
    _, a, _ = run(capsys, *inv, "--ledger", str(site_ledger))
    _, b, _ = run(capsys, *inv, "--ledger", str(central))
    assert json.loads(a)["total"] == json.loads(b)["total"] == "1.06"


def test_import_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("hello\n")
    rc, _, err = run(capsys, "import", "--ledger", str(tmp_path / "l"), str(tmp_path / "none"))
    assert rc == 1 and "does not exist" in err
    rc, _, err = run(capsys, "import", "--ledger", str(tmp_path / "l"), str(bad))
    assert rc == 1 and "line 1" in err and "Traceback" not in err


def test_logs_lists_a_services_accounting_lines(
    capsys: pytest.CaptureFixture[str], site_ledger: Path
) -> None:
    rc, out, _ = run(capsys, "logs", "--ledger", str(site_ledger), "--psp", "acme")
    assert rc == 0
    assert out == "2025-11-25T00:00:05.000000Z site-a fw: blocked 198.18.0.9\n"


def test_prices_validates_a_sheet(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, out, _ = run(capsys, "prices")
    assert rc == 0 and "cpu_per_hour            0.22" in out
    bad = tmp_path / "bad.toml"
    bad.write_text("[bandwidth]\nlocal_per_gb = 1\n")
    rc, _, err = run(capsys, "prices", "--prices", str(bad))
    assert rc == 1 and "interdomain_per_gb must not be below" in err


def test_costmodel_prints_the_papers_figures_and_writes_the_plot(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    png = tmp_path / "cm.png"
    rc, out, _ = run(capsys, "costmodel", "--json", "--plot", str(png))
    doc = json.loads(out)
    assert rc == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["machines"] == 14 and round(doc["site_yearly_cost"] / 1000, 2) == 42.38
    rc, out, _ = run(capsys, "costmodel", "--site-gbps", "100", "--cores-per-node", "16")
    assert rc == 0 and "= 35" in out and "$30.84K/yr" in out
    rc, _, err = run(capsys, "costmodel", "--node-gbps", "fast")
    assert rc == 1 and "node_gbps: not a number" in err
    rc, _, err = run(capsys, "costmodel", "--plot", str(tmp_path / "no" / "dir.png"))
    assert rc == 1 and "cannot write plot" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["invoice", "--psp", "acme"])
    assert e.value.code == 2


def test_the_console_script_is_installed_and_runs() -> None:
    exe = shutil.which("pcbill", path=str(Path(sys.executable).parent))
    assert exe is not None
    p = subprocess.run([exe, "costmodel"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "$42.38K/yr" in p.stdout
