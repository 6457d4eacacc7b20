"""The pipeline benchmark runs and writes its figures (tiny iteration count)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import pipeline
from tests.support.bench import assert_positive


def test_benchmark_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    assert pipeline.main(["--quick", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert_positive(figures, "pipeline_us_per_packet", "noop_us_per_packet", "pipeline_vs_noop",
                    "pipeline_general_path_us_per_packet",
                    "pipeline_accounted_us_per_packet")  # fmt: skip
    ratio = figures["pipeline_us_per_packet"] / figures["noop_us_per_packet"]
    assert abs(figures["pipeline_vs_noop"] - ratio) < 0.01
    assert set(figures["loop_iteration_ns"]) == {"plain", "budget_ticks", "settrace"}
    assert {"mac_check", "copies", "service_call"} <= set(figures["parts_ns"])
    assert all(v > 0 for v in figures["parts_ns"].values())
    if figures["pipeline_accelerated"]:  # both paths in the same invocation
        assert_positive(figures, "pipeline_us_per_packet_pure",
                        "pipeline_noop_service_us_per_packet_pure", "pipeline_accel_speedup",
                        "pipeline_vs_noop_pure")  # fmt: skip
