"""The redundancy benchmark runs (tiny counts) and writes its figures."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import redundancy


def test_benchmark_writes_bytes_saved_and_throughput(tmp_path: Path) -> None:
    out = tmp_path / "re.json"
    assert redundancy.main(["--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["delivered_intact"] == data["packets"] == 60
    assert 0 < data["re_bytes_saved_ratio"] <= data["known_redundancy"]
    assert data["re_throughput_mbps"] > 0 and data["passthrough_throughput_mbps"] > 0
