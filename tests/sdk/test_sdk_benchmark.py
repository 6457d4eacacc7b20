"""benchmarks.circuit_setup runs (tiny counts) and writes its figures."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]


def test_circuit_setup_benchmark_writes_its_figures(tmp_path):
    from benchmarks import circuit_setup

    out = tmp_path / "cs.json"
    assert circuit_setup.main(["--quick", "--json", str(out)]) == 0
    fig = json.loads(out.read_text())
    for key in ("circuit_setup_ms_median", "circuit_setup_ms_median_inprocess_tables",
                "control_call_ms_median", "pcsock_send_pps", "udp_send_pps"):  # fmt: skip
        assert fig[key] > 0, key
    assert fig["circuits"] == 5 and fig["sites_per_circuit"] == 3
    assert (
        0
        < fig["pcsock_send_ratio_vs_udp"]
        == pytest.approx(fig["pcsock_send_pps"] / fig["udp_send_pps"], rel=0.01)
    )
    assert fig["pcsock_send_pps_pure"] > 0 and fig["udp_send_same_datagram_pps"] > 0
    if fig["pcsock_accelerated"]:
        assert fig["pcsock_send_many_pps"] > 0
        assert fig["pcsock_send_many_ratio_vs_udp"] == pytest.approx(
            fig["pcsock_send_many_pps"] / fig["udp_send_pps"], rel=0.01
        )
