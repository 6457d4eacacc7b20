"""The Mininet comparison benchmark runs and writes its figures (tiny size; not a measurement)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.netns
@pytest.mark.skipif(shutil.which("mn") is None, reason="mininet not installed")
def test_benchmark_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.testbed_vs_mininet",
            "--sizes",
            "3",
            "--settle",
            "0",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    assert figures["testbed_vs_mininet_3"] == pytest.approx(
        figures["testbed_seconds_3"] / figures["mininet_seconds_3"], rel=0.01
    )
    assert figures["mininet_seconds_3"] > 0 and figures["testbed_up_seconds_3"] > 0
