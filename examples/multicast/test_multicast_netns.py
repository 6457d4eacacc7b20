"""Inter-domain multicast with real packets in the multi-domain testbed (root; prefix "pce")."""

from __future__ import annotations

import pytest

from examples.multicast import demo
from examples.multicast.demo import passed
from pcdemo.example_testbed import run_testbed


@pytest.mark.netns
def test_members_in_three_domains_get_one_copy_and_links_carry_only_the_tree() -> None:
    """On the real site daemons: signed upload, circuits and FIS through the control API."""
    res = run_testbed(demo, n=20)
    assert res["members_with_every_packet_once"] == 4  # in domains A, B and C
    assert res["non_member_copies"] == 0
    lf = res["link_frames"]
    assert lf["RA->RB"] == 20 and lf["RA->RC"] == 20
    # nothing around the ring, nothing back upstream
    assert lf["RB->RC"] == lf["RC->RB"] == lf["RB->RA"] == lf["RC->RA"] == 0
    assert res["tree_computations_at_A"] == 1
    # a leave in C and a join of the other C host change the very next packet
    assert res["after_change_receivers"] == res["expected_after_change"]
    assert res["tree_computations_at_A_after"] == 2
    assert passed(res)
