"""``benchmarks.cluster``'s per-node CPU rounds with tiny parameters (root): the figures it
writes, and the property the method rests on: every compute node, on a site of 1 or 2 nodes,
is handed the same number of packets in a window (one sender process per node)."""

from __future__ import annotations

import math

import pytest

from benchmarks.cluster import node_cpu

pytestmark = pytest.mark.netns


def test_node_cpu_rounds_give_every_node_the_same_traffic_and_write_every_figure() -> None:
    seconds, pps = 0.6, 300.0
    out = node_cpu((1, 2), seconds, pps, per_node=2, rounds=1)
    for k in (1, 2):
        packets = out[f"cluster_node_packets_per_window_{k}"]
        assert 0.5 * seconds * pps < packets < 1.5 * seconds * pps, out  # each node its rate
        assert out[f"cluster_node_packets_spread_{k}"] < 0.2, out  # and the same as the others
        gross = out[f"cluster_node_cpu_gross_us_per_packet_{k}"]
        worker = out[f"cluster_node_worker_cpu_us_per_packet_{k}"]
        assert 0 < worker < gross, out  # the workers are a part of the node's processes
        assert out[f"cluster_node_cpu_us_per_packet_{k}"] < gross, out  # idle subtracted
        assert out[f"cluster_node_idle_cpu_ms_per_s_{k}"] > 0, out
        assert out[f"cluster_node_packets_per_wakeup_{k}"] > 0, out
    assert math.isfinite(out["cluster_node_cpu_spread"]), out
    assert math.isfinite(out["cluster_node_cpu_gross_spread"]), out
