"""The FIS-outage benchmark runs end to end with tiny parameters and writes its figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bench import run_benchmark

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]


def test_fis_outage_benchmark_writes_its_figures(tmp_path: Path) -> None:
    doc = run_benchmark("fis_outage", tmp_path, "--quick", timeout=150)
    assert 0.9 <= doc["fis_outage_delivered_ratio"] <= 1.1  # cached circuit kept forwarding
    assert 0 < doc["fis_outage_recovery_s"] < 10
    assert doc["fis_outage_s"] == 0.5
