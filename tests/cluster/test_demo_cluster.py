"""The four service-form scenarios of the demo on Fig. 2 with three compute nodes per site
(root): every site is an LB + controller and three ``pcsite run --role node`` machines, and
its FIS is replicated on three machines (``fis_replicas = 3``: a Redis primary, two replicas,
three Sentinels), which every machine of the site reaches by its Sentinel URL."""

from __future__ import annotations

import pytest

from pcdemo import scenarios as demo

pytestmark = [pytest.mark.netns, pytest.mark.timeout(400)]


def test_core_scenarios_pass_on_three_node_sites() -> None:
    with demo.open_world("testbed", prefix="pcq", progress=lambda _m: None, nodes=3,
                         fis_replicas=3) as world:  # fmt: skip
        assert {c: len(world.tb.cluster(c).members) for c in ("C1", "C2", "C3")} == {
            "C1": 3, "C2": 3, "C3": 3,
        }  # fmt: skip
        results = demo.run_scenarios(world, list(demo.CORE_SCENARIOS))
        for c in ("C1", "C2", "C3"):  # every machine of the site was given the Sentinel URL
            hosts = ",".join(f"{m.address}:26379" for m in world.tb.cluster(c).fis)
            configs = list(world.tmp.glob(f"{c}-*.toml"))
            assert len(configs) == 4 and all(
                f"@{hosts}/pcfis?" in p.read_text() for p in configs
            ), c
            assert world.tb.fis_primary(c) == f"{c}_f1"
    failed = [f"{o.name}: {o.detail}" for o in results if o.status != "pass"]
    assert not failed and len(results) == 4, failed
