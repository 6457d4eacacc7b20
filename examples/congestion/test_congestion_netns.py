"""Congestion-aware forwarding with real packets in a namespace testbed (root; prefix "pcx")."""

from __future__ import annotations

import pytest

from examples.congestion import demo
from examples.congestion.demo import SWITCH_BOUND_MS, passed
from pcdemo.example_testbed import run_simulator, run_testbed


def test_the_demo_flow_passes_in_the_simulator() -> None:
    res = run_simulator(demo, n=200)
    assert res["via_a"] + res["via_b"] == 200 and res["b_before_flip"] == 0
    assert 0 <= res["switch_ms"] <= 10 and passed(res)


@pytest.mark.netns
def test_the_site_daemon_follows_the_isps_congestion_update_with_real_packets() -> None:
    """On ``pcsite run``: the ISP registers the service ID with the gateways as redirect
    prefixes and publishes congestion through the control API."""
    res = run_testbed(demo, n=400)
    assert res["via_a"] + res["via_b"] == 400  # every packet tunnelled to a gateway
    assert res["b_before_flip"] == 0  # before: all through the less congested A
    assert res["a_after_switch"] == 0  # after the first packet through B: none through A
    assert res["switch_ms"] is not None and 0 <= res["switch_ms"] <= SWITCH_BOUND_MS
    assert res["service_drops"] == 0
    assert passed(res)
