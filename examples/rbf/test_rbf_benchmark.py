"""The RBF benchmark runs (tiny counts) and writes its figures."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import rbf


def test_benchmark_writes_the_interpretation_cost_per_packet(tmp_path: Path) -> None:
    out = tmp_path / "rbf.json"
    assert rbf.main(["--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["baseline_us_per_packet"] > 0
    for case in ("forward", "demo", "chain16", "carried"):
        assert data[f"rbf_us_per_packet_{case}"] > 0
        assert f"rbf_interpretation_us_per_packet_{case}" in data
