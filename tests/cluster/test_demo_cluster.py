"""The four service-form scenarios of the demo on Fig. 2 with three compute nodes per site
(root): every site is an LB + controller and three ``pcsite run --role node`` machines."""

from __future__ import annotations

import pytest

from pcdemo import scenarios as demo

pytestmark = [pytest.mark.netns, pytest.mark.timeout(400)]


def test_core_scenarios_pass_on_three_node_sites() -> None:
    with demo.open_world("testbed", prefix="pcq", progress=lambda _m: None, nodes=3) as world:
        assert {c: len(world.tb.cluster(c).members) for c in ("C1", "C2", "C3")} == {
            "C1": 3, "C2": 3, "C3": 3,
        }  # fmt: skip
        results = demo.run_scenarios(world, list(demo.CORE_SCENARIOS))
    failed = [f"{o.name}: {o.detail}" for o in results if o.status != "pass"]
    assert not failed and len(results) == 4, failed
