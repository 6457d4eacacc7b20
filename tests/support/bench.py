"""Smoke runs of the benchmarks: ``run_benchmark("codec", tmp_path, "--quick")`` runs ``python
-m benchmarks.codec --quick --json PATH`` from the repository root (tiny parameters: it checks
that a benchmark works, it takes no figure) and gives back the figures it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "assert_positive", "run_benchmark"]

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(name: str, tmp_path: Path, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run benchmark ``name`` with ``args``; fail with the end of its stderr unless it exits 0;
    the JSON document it wrote."""
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args, "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def assert_positive(figures: dict[str, Any], *names: str) -> None:
    """Every figure in ``names`` is a float above 0 (a measured time, rate or ratio)."""
    for name in names:
        assert isinstance(figures[name], float) and figures[name] > 0, name
