"""Redundancy elimination with real packets in a namespace testbed (root; prefix "pcx")."""

from __future__ import annotations

import pytest

from examples.redundancy import demo
from examples.redundancy.demo import passed
from pcdemo.example_testbed import run_simulator, run_testbed


def test_the_demo_flow_passes_in_the_simulator() -> None:
    res = run_simulator(demo, n=150)
    assert res["received_intact"] == 150 and passed(res)


@pytest.mark.netns
def test_the_site_pair_saves_the_known_redundancy_on_the_core_with_real_packets() -> None:
    res = run_testbed(demo, n=200)
    assert res["received_intact"] == 200 and res["core_packets"] == 200
    assert res["known_redundancy"] > 0.4
    assert 0.85 * res["known_redundancy"] < res["re_bytes_saved_ratio"] <= res["known_redundancy"]
    assert res["site_processed"] == {"C1": 200, "C2": 200}
    assert res["service_drops"] == {"C1": 0, "C2": 0}  # no re_miss, no re_corrupt
    assert passed(res)
