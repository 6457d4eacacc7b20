"""Rule-based forwarding with real packets in a namespace testbed (root; prefix "pcx")."""

from __future__ import annotations

import pytest

from examples.rbf import demo
from examples.rbf.demo import passed
from pcdemo.example_testbed import run_simulator, run_testbed


def test_the_demo_flow_passes_in_the_simulator() -> None:
    res = run_simulator(demo, n=5)
    assert res["bound"]["via_c2_meta7"] == 5 and res["tampered"]["dropped_at_c1"] == 5
    assert passed(res)


@pytest.mark.netns
def test_certified_rules_steer_real_packets_and_tampered_or_uncertified_ones_are_dropped():
    res = run_testbed(demo, n=20)
    assert res["bound"] == {"via_c2_meta7": 20, "via_c2": 0, "direct": 0, "dropped_at_c1": 0}
    assert res["big"]["dropped_at_c1"] == 20
    assert res["congested"]["direct"] == 20  # the ISP's congestion report changed the choice
    assert res["carried"]["direct"] == 20
    assert res["tampered"]["dropped_at_c1"] == 20 and res["uncertified"]["dropped_at_c1"] == 20
    assert passed(res)
