"""A three-node site on the testbed (root): node kill and node drain under load.

The LB (``pcsite run --role lb,controller``) splits form-1 circuits over three compute nodes
(``--role node``) by a Maglev table; a killed node's circuits forward again from the
survivors within 1 s and the other circuits lose nothing; a drained node (SIGTERM: it leaves
the table first) loses nothing at all.
"""

from __future__ import annotations

import signal
import time

import pytest

from benchmarks._cluster_rig import ClusterSite, Load, owners
from testbed.netns import call_in
from tests.support import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

K = 12  #: circuits


@pytest.fixture(scope="module")
def cs(tmp_path_factory: pytest.TempPathFactory):
    with ClusterSite(tmp_path_factory.mktemp("cluster"), nodes=3) as site:
        site.labels = site.circuits(K)
        yield site


def _settled(cs: ClusterSite, load: Load) -> None:
    assert wait_until(lambda: len(load.got) >= 2 * K, 10), "no traffic through the site"


def _flowing(load: Load, circuits: set[int], after: float, n: int = 30) -> None:
    """Every circuit in ``circuits`` delivered ``n`` packets sent after ``after`` (at 100
    rounds/s: 0.3 s of traffic) -- instead of letting the traffic run a while."""
    assert wait_until(lambda: load.delivered(circuits, after) >= n, 20), (
        f"fewer than {n} packets on some circuit since {after}: {load.delivered(circuits, after)}"
    )


def test_the_state_reached_every_node_and_nodes_refuse_changes(cs: ClusterSite) -> None:
    from pcsock.control import ControlClient, ControlError

    node = cs.tb.node("s1_n1")
    c = ControlClient(f"http://{node.address}:8080", token="acme-token-0123456789abcdef",
                      psp="acme")  # fmt: skip
    with pytest.raises(ControlError) as ei:
        call_in(node.ns, lambda: c.allocate_circuit("relay"), timeout=None)
    assert "controller" in str(ei.value)
    # the controller sees every node on its feed, each having acknowledged every change
    admin = ControlClient(f"http://{cs.tb.cluster('s1').lb_address}:8080",
                          token="isp-admin-token-0123456789", psp=None)  # fmt: skip
    st = call_in(cs.tb.node("s1").ns, admin.status, timeout=None)
    assert st["roles"] == ["controller"] and set(st["nodes"]) == set(cs.node_names())
    assert wait_until(lambda: all(
        n["acked"] >= K for n in call_in(cs.tb.node("s1").ns, admin.status)["nodes"].values()
    ), 10)  # fmt: skip


def test_node_kill_resumes_its_circuits_within_1s_and_others_lose_nothing(cs) -> None:
    load = Load(cs, cs.labels, rate=100)
    own = owners(cs, load, cs.labels)  # before the load starts
    assert len(own) == K and len(set(own.values())) >= 2, own
    victim = max(set(own.values()), key=lambda n: list(own.values()).count(n))
    dead = {i for i, n in own.items() if n == victim}
    with load:
        _settled(cs, load)
        _flowing(load, set(own), time.monotonic())  # traffic on every circuit before the kill
        t_kill = time.monotonic()
        cs.tb.fail(victim)  # SIGKILL its processes and cut its link
        survivors = set(cs.node_names()) - {victim}
        cs.wait_table(survivors, timeout=5)
        assert wait_until(lambda: load.resumed(set(own), t_kill) < 5, 10)
        _flowing(load, set(own), t_kill)  # and on every circuit after it
    # up to where every surviving circuit delivered: a packet missing before it was lost
    t_end = load.delivered_until(set(own) - dead)
    assert t_end > t_kill
    assert load.resumed(dead, t_kill) < 1.0
    assert load.lost(set(own) - dead, t_kill - 0.5, t_end) == 0
    cs.tb.recover(victim)
    cs.start_node(victim)
    cs.wait_table(set(cs.node_names()))


def test_node_drain_loses_nothing(cs: ClusterSite) -> None:
    with Load(cs, cs.labels, rate=100) as load:
        _settled(cs, load)
        t0 = time.monotonic()
        name = cs.node_names()[-1]
        cs.procs[name].stop(grace=10)  # SIGTERM: drains first
        assert cs.in_table() == set(cs.node_names()) - {name}
        _flowing(load, set(range(K)), time.monotonic())  # every circuit forwards after it
    t1 = load.delivered_until(set(range(K)))  # a packet missing before it was lost
    assert t1 > t0
    assert load.lost(set(range(K)), t0 - 0.5, t1) == 0
    cs.start_node(name)
    cs.wait_table(set(cs.node_names()))


def test_usage_over_the_feed_is_billed_once_across_a_node_sigkill(cs: ClusterSite) -> None:
    """Without a Redis engine the nodes' journaled batches travel in their feed reports: after
    a node's SIGKILL and restart and a clean stop of all, each node's journal was billed up to
    its last batch with nothing left over (none lost: the collector takes a node's batches
    only in sequence) and the ledger holds no more than the nodes metered (none twice)."""
    from pcsite_lite.billing.cluster import NodeUsageLog
    from pcsite_lite.billing.ledger import Ledger

    victim = cs.node_names()[0]
    p = cs.procs[victim]
    ledger = cs.tmp / "lb" / "usage.ledger"

    def billed_upto(node: str) -> int:
        """The last batch of ``node`` the controller billed."""
        if not ledger.exists():
            return 0
        with Ledger(ledger, create=False) as led:
            cp = led.checkpoint("cluster:s1")
        return 0 if cp is None else int(cp[1]["nodes"].get(node, 0))

    def billed_and_live() -> tuple[int, int]:
        billed = 0
        if ledger.exists():
            with Ledger(ledger, create=False) as led:
                billed = sum(r.counters.packets for r in led.records(psp="acme"))
        return billed, sum(s["packets"] for s in cs.client().usage()["services"].values())

    # what earlier tests left: all billed (a node killed there may have been billed for a
    # batch none of its reports counted, so this test compares what it adds to both)
    assert wait_until(lambda: all(billed_upto(n) >= cs.journaled(n) for n in cs.node_names()),
                      10)  # fmt: skip
    billed0, live0 = billed_and_live()

    with Load(cs, cs.labels, rate=100) as load:
        _settled(cs, load)
        # the victim dies with usage journaled (and what it metered since, not yet) ...
        first = cs.journaled(victim)
        assert wait_until(lambda: cs.journaled(victim) > first, 10), "no batch journaled"
        # ... every batch of which reached the controller in a report whose live usage counts
        # it: stopped (it journals nothing more), until that batch is billed. (A batch
        # journaled after the last report is billed after the restart, but no report of the
        # killed incarnation counts it: billing would exceed the live view.)
        for _ in range(20):
            p.popen.send_signal(signal.SIGSTOP)
            seq = cs.journaled(victim)
            if wait_until(lambda s=seq: billed_upto(victim) >= s, 1.0, 0.05):
                break
            p.popen.send_signal(signal.SIGCONT)  # one batch after its last report: report it
            assert wait_until(lambda s=seq: billed_upto(victim) >= s, 10, 0.05), seq
        else:
            raise AssertionError(f"the victim's journal never in step: {billed_upto(victim)}")
        p.popen.kill()
        p.popen.wait(10)
        killed_at = cs.journaled(victim)
        cs.start_node(victim)
        cs.wait_table(set(cs.node_names()))
        # traffic goes on through the restarted node's table: every circuit delivers more
        _flowing(load, set(range(len(cs.labels))), time.monotonic())
        assert cs.journaled(victim) >= killed_at  # its journal carries on where it stopped
    for n in cs.node_names():
        cs.procs[n].stop(grace=15)  # drains, journals the rest, waits until it is billed
    with Ledger(ledger, create=False) as led:
        cp = led.checkpoint("cluster:s1")
    assert cp is not None
    for n in cs.node_names():
        journal = NodeUsageLog(cs.tmp / n / "usage-journal.db", n)
        try:
            assert journal.last_seq() > 0 and cp[1]["nodes"][n] == journal.last_seq(), n
            assert journal.since(0) == [], f"{n}: batches left unbilled"
        finally:
            journal.close()
    # the controller's live view has every incarnation's last report (the killed one's
    # included, though it had not journaled its last interval): billing never exceeds it
    billed, live = billed_and_live()
    assert 0 < billed - billed0 <= live - live0, (billed0, billed, live0, live)
    for n in cs.node_names():
        cs.start_node(n)
    cs.wait_table(set(cs.node_names()))


def test_lb_and_controller_as_separate_processes(tmp_path) -> None:
    # ``--role lb`` and ``--role controller`` apart (as on two machines): circuits installed
    # at the controller reach the nodes, the LB splits their packets, nothing is lost
    with ClusterSite(tmp_path, nodes=2, split=True) as site:
        labels = site.circuits(4)
        with Load(site, labels, rate=50) as load:
            assert wait_until(lambda: len(load.got) >= 40, 10), site.procs["s1"].log_text()
        t1 = load.delivered_until(set(range(4)))  # a packet missing before it was lost
        assert load.lost(set(range(4)), 0, t1) == 0
        assert site.in_table() == set(site.node_names())
        # the LB alone follows the controller's feed (for the form-3 prefixes it diverts)
        assert wait_until(lambda: "feed from" in site.procs["s1"].log_text(), 5)
