"""Inter-domain multicast in the simulator and in the namespace testbed, on one topology file.

Three domains in a ring (``testbed/topologies/multidomain.toml``): each a border router with a
co-located site and receiver hosts; the sender SA is in domain A. Link counters on the
inter-domain links show the tree: one copy per tree link per packet, none elsewhere (so none
around the ring and none back upstream).
"""

from __future__ import annotations

import pytest

from examples.multicast import demo
from examples.multicast.demo import passed
from examples.multicast.scenario import SENDER, build_world, domains
from pcdemo.example_testbed import TopologyLacks, run_simulator, run_testbed
from testbed.topology import load


def test_the_simulator_reads_the_demos_topology_file() -> None:
    w = build_world()
    doms = w.plan.domains
    assert [(d.asn, d.site, d.router) for d in doms.values()] == [
        (64501, "CA", "RA"),
        (64502, "CB", "RB"),
        (64503, "CC", "RC"),
    ]
    assert sorted(w.plan.links) == [(64501, 64502), (64502, 64503), (64503, 64501)]
    # the same addresses as the testbed's plan of that file
    assert w.hosts[SENDER].ip == w.plan.address[SENDER]
    assert w.psp.sites[64501].public_ip == "198.18.254.10"


@pytest.mark.parametrize(
    "world",
    ["simulator", pytest.param("testbed", marks=pytest.mark.netns)],
)
def test_members_in_three_domains_get_one_copy_and_links_carry_only_the_tree(world: str) -> None:
    """The same demo in both worlds; on the testbed, on the real site daemons (signed upload,
    circuits and FIS through the control API) with real packets captured."""
    res = run_testbed(demo, n=20) if world == "testbed" else run_simulator(demo, n=20)
    assert res["members_with_every_packet_once"] == 4  # in domains A, B and C
    assert res["non_member_copies"] == 0
    lf = res["link_frames"]
    assert lf["RA->RB"] == 20 and lf["RA->RC"] == 20
    # nothing around the ring, nothing back upstream
    assert lf["RB->RC"] == lf["RC->RB"] == lf["RB->RA"] == lf["RC->RA"] == 0
    if world == "simulator":
        assert res["tree_computations_at_A"] == 1  # one tree computation for 20 packets
    else:  # computed for the probes sent until the group was in effect; none for the burst
        assert res["tree_computations_at_A"] >= 1 and res["tree_computations_in_burst"] == 0
    # a leave in C and a join of the other C host change the next packet
    assert res["after_change_receivers"] == res["expected_after_change"]
    assert res["tree_computations_at_A_after"] > res["tree_computations_at_A"]
    assert passed(res)


def test_a_topology_without_two_sites_is_refused(tmp_path) -> None:
    f = tmp_path / "one.toml"
    f.write_text(
        'name = "one"\n[[node]]\nname = "R"\nkind = "router"\n'
        '[[node]]\nname = "C"\nkind = "site"\nrouter = "R"\npublic_ip = "198.18.254.1"\n'
        '[[node]]\nname = "H"\nkind = "host"\n[[link]]\na = "H"\nb = "R"\n'
    )
    with pytest.raises(TopologyLacks, match="two sites"):
        domains(load(f))
