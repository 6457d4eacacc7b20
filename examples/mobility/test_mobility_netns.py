"""The mobility handoff with real packets in a namespace testbed (root; prefix "pce")."""

from __future__ import annotations

import pytest

from examples.mobility import demo
from pcdemo.example_testbed import run_testbed


@pytest.mark.netns
def test_handoff_with_real_packets_loses_only_in_flight_packets_and_beats_the_home_agent() -> None:
    """On ``pcsite run``: a DNSSEC sign-up with the ISP's redirect prefixes, bindings through
    the control API, the confined service tunnelling to the care-of address."""
    res = run_testbed(demo)
    assert res["sent"] >= 500
    # every lost packet reached the old address after the router had left it
    assert res["packets_lost"] == res["lost_at_old_address"]
    assert res["packets_lost"] < 60  # the ~1 packet/ms stream for well under 60 ms
    # the binding reaches the site within the FIS staleness bound (5 ms) plus scheduling; on a
    # loaded 2-core machine scheduling alone can take tens of ms, so the bound here is loose
    # (the demo and the README report the measured figures against the 10 ms goal)
    assert res["service_drops"] == {"C1": 0, "C2": 0}
    assert res["mobility_handoff_ms"] <= 50.0 + res["delay_after_ms"]
    # the home agent's triangle is several times longer than redirecting at C1
    assert res["home_agent_received"] >= 0.9 * res["home_agent_sent"]
    assert res["path_length_ratio_vs_triangle"] < 0.5
