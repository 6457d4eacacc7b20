"""The FIS-outage benchmark runs end to end with tiny parameters and writes its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]


def test_fis_outage_benchmark_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "fis_outage.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.fis_outage", "--json", str(out), "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert 0.9 <= doc["fis_outage_delivered_ratio"] <= 1.1  # cached circuit kept forwarding
    assert 0 < doc["fis_outage_recovery_s"] < 10
    assert doc["fis_outage_s"] == 0.5
