"""The encryption-offload benchmark runs (tiny counts) and writes its figures."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import encryption_offload


def test_benchmark_writes_the_sender_cpu_figures(tmp_path: Path) -> None:
    out = tmp_path / "enc.json"
    assert encryption_offload.main(["--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    for key in ("local", "offload", "plain", "aes_only"):
        assert data[f"sender_cpu_us_per_packet_{key}"] > 0
    assert data["sender_cpu_offload_ratio"] == (
        data["sender_cpu_us_per_packet_offload"] / data["sender_cpu_us_per_packet_local"]
    )
    assert data["site_cpu_us_per_packet_encrypt"] > 0 and data["site_cpu_us_per_packet_decrypt"] > 0
