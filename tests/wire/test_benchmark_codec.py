"""The codec benchmark runs (tiny counts) and writes the figures the issue names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.bench import ROOT, assert_positive, run_benchmark


def test_codec_benchmark_quick_run_writes_its_figures(tmp_path: Path) -> None:
    figures = run_benchmark("codec", tmp_path, "--quick")
    assert_positive(figures, "codec_us_per_packet", "codec_vs_scapy",
                    "codec_us_per_packet_verify_ip", "codec_us_per_packet_packet",
                    "codec_us_per_packet_setters", "scapy_us_per_packet")  # fmt: skip
    # the ratio is what it says it is
    ratio = figures["scapy_us_per_packet"] / figures["codec_us_per_packet"]
    assert abs(figures["codec_vs_scapy"] - ratio) < 1e-6 * ratio
    runs = {"wire", "wire_verify_ip", "wire_packet", "wire_setters", "scapy", "macs_only",
            "inline_floor", "empty_call"}  # fmt: skip
    if figures["codec_accelerated"]:
        # the accelerated and the pure path, measured in the same invocation
        runs |= {"wire_nomemo", "wire_pure", "wire_verify_ip_pure", "wire_packet_pure",
                 "wire_setters_pure"}  # fmt: skip
        pure = figures["scapy_us_per_packet"] / figures["codec_us_per_packet_pure"]
        assert abs(figures["codec_vs_scapy_pure"] - pure) < 1e-6 * pure
        assert figures["codec_us_per_packet_nomemo"] > 0
    assert set(figures["raw"]["us_per_packet_runs"]) == runs


def test_runner_runs_named_benchmark_and_lists_it(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "codec", "--quick", "--results", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "codec" in proc.stdout and "ok" in proc.stdout
    assert "codec_vs_scapy" in json.loads((tmp_path / "codec.json").read_text())
