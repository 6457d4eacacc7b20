"""The Mininet comparison benchmark runs and writes its figures (tiny size; not a measurement)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.bench import run_benchmark


@pytest.mark.netns
@pytest.mark.skipif(shutil.which("mn") is None, reason="mininet not installed")
def test_benchmark_writes_its_figures(tmp_path: Path) -> None:
    figures = run_benchmark("testbed_vs_mininet", tmp_path, "--sizes", "3", "--settle", "0")
    assert figures["testbed_vs_mininet_3"] == pytest.approx(
        figures["testbed_seconds_3"] / figures["mininet_seconds_3"], rel=0.01
    )
    assert figures["mininet_seconds_3"] > 0 and figures["testbed_up_seconds_3"] > 0
