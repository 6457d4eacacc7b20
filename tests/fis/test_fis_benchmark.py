"""benchmarks.fis runs (tiny iteration count) and writes its figures as JSON."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bench import run_benchmark


def test_fis_benchmark_writes_its_figures(tmp_path: Path, redis_url: str) -> None:
    figures = run_benchmark("fis", tmp_path, "--quick", "--redis", f"{redis_url}?prefix=pcf-bench")
    for name in ("dict_get_ns", "fis_cached_get_ns", "fis_cached_lookup_ns", "lpm_lookup_ns",
                 "sqlite_get_us", "sqlite_lookup_us", "redis_get_us",
                 "fis_sqlite_invalidation_ms_max", "fis_redis_invalidation_ms_max"):  # fmt: skip
        assert figures[name] >= 0, name
    ratio = figures["fis_cached_get_ns"] / figures["dict_get_ns"]
    assert figures["fis_cached_get_vs_dict"] == pytest.approx(ratio, rel=0.05)
    assert figures["quick"] is True


def test_fis_failover_benchmark_writes_its_figures(tmp_path: Path) -> None:
    figures = run_benchmark("fis_failover", tmp_path, "--quick")
    assert figures["cluster_fis_acked_writes_lost"] == 0
    assert figures["cluster_fis_acked_writes"] > 50  # the 50 before the kill, then more
    assert 0 < figures["cluster_fis_failover_s"] < 60
    assert figures["cluster_fis_wait_ratio"] == pytest.approx(
        figures["cluster_fis_write_wait_us"] / figures["cluster_fis_write_nowait_us"], rel=1e-6
    )
    assert figures["quick"] is True
