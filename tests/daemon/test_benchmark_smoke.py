"""The forwarding benchmark runs end to end (tiny durations) and writes its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]


def test_site_forwarding_benchmark_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.site_forwarding", "--json", str(out),
         "--seconds", "1", "--rounds", "1", "--probes", "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    figures = doc["figures"]
    for name in ("site_vs_kernel_1w", "site_vs_bare_tun_1w", "scaling_2w_vs_1w",
                 "hop_latency_added_us_median", "site_ip_vs_udp_1w"):  # fmt: skip
        assert isinstance(figures[name], float) and figures[name] == figures[name], name
    r = doc["rounds"][0]
    for mode in ("kernel", "bare_1w", "site_1w", "site_ip_1w", "site_2w"):
        assert r[mode]["rx_pps"] > 100, (mode, r[mode])
