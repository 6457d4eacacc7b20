"""The benchmarks run end to end (tiny durations) and write their figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bench import run_benchmark

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]


def test_site_forwarding_benchmark_writes_every_figure(tmp_path: Path) -> None:
    doc = run_benchmark("site_forwarding", tmp_path, "--circuits", "32", "--quick", timeout=280)
    figures = doc["figures"]
    ratios = ("site_vs_kernel_1w", "site_vs_kernel_udp_1w", "site_vs_kernel_udp_batched",
              "scaling_2w_vs_1w")  # fmt: skip
    measured = ("hop_latency_added_us_median", "worker_cpu_us_per_packet_1w",
                "worker_cpu_frac_ping", "worker_share_2w_w0", "worker_share_2w_w1")  # fmt: skip
    for base in ratios + measured:
        for name in (base, f"{base}_accel", f"{base}_pure"):
            assert isinstance(figures[name], float), name
            # a ratio is NaN only when no rate tried lost < 1 % (a loaded machine); the others
            # are always measured
            assert base in ratios or figures[name] == figures[name], name
    for name in ("site_vs_bare_tun_1w", "scaling_2w_vs_1w_min"):
        assert isinstance(figures[name], float), name
    for name in ("hop_latency_added_us_median_no_busy_poll", "worker_cpu_frac_ping_no_busy_poll",
                 "hop_latency_added_us_median_spin", "worker_cpu_frac_ping_spin"):  # fmt: skip
        assert figures[name] == figures[name], name
    # the TUN floor: a read and a write each cost something, and bound the TUN design
    assert figures["tun_read_us_per_packet"] > 0 and figures["tun_write_us_per_packet"] > 0
    assert figures["tun_floor_pps"] > 0
    # the default dataplane switched the load in C; the Python paths did not
    assert figures["native_share_1w"] > 0.5
    assert figures["native_share_1w_accel"] == 0 == figures["native_share_1w_pure"]
    # both workers of the two-worker site received packets, and the shares add up
    assert figures["worker_share_2w_w0"] > 0 and figures["worker_share_2w_w1"] > 0
    assert abs(figures["worker_share_2w_w0"] + figures["worker_share_2w_w1"] - 1) < 1e-9
    r = doc["rounds"][0]
    for mode in ("kernel_ip", "kernel_udp", "bare_udp_1w", "site_ip_1w", "site_udp_1w",
                 "site_udp_1w_batched", "site_udp_1w_batched_pure",
                 "site_ip_2w", "site_ip_1w_pure", "site_ip_1w_accel"):  # fmt: skip
        assert r[mode]["steps"][0]["received"] > 100, (mode, r[mode]["steps"][0])
    assert len(doc["scaling_2w_vs_1w_rounds"]) == 1
    assert all(doc[k] == v or v != v for k, v in figures.items())  # also at the top level


def test_survival_benchmark_writes_every_figure(tmp_path: Path) -> None:
    doc = run_benchmark("survival", tmp_path, "--circuits", "3", "--rate", "30", "--rounds", "1",
                        timeout=200)  # fmt: skip
    assert 0 < doc["restart_resume_s"] < 30 and doc["cold_start_s"] > 0
    for name in ("restart_state_lost", "restart_kernel_leftovers",
                 "worker_restart_lost_packets"):  # fmt: skip
        assert isinstance(doc[name], int), name
    assert doc["rounds"][0]["worker"]["sent_after"] > 0
