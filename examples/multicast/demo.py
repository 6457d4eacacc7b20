"""The multicast demo with real packets in the multi-domain namespace testbed.

:func:`run_testbed` builds ``testbed/topologies/multidomain.toml`` (three domains in a ring,
each a border router with a co-located site and two receivers, a sender SA in domain A; prefix
``pce`` + a run id; always torn down), runs the multicast service on the real site daemon
(``pcsite run``) in each domain (the service uploaded signed to its repository, circuits and FIS
entries installed through its control API, changed on line), joins receivers in all three
domains and sends ``n`` packets from SA:

* every member receives exactly one copy of every packet (captured at the hosts);
* the inter-domain links carry the tree only: one copy per packet on A-B and on A-C, none on
  B-C (no copy goes back upstream or around the ring) — captured on the routers' interfaces;
* the first site computed the tree once (its service logged one computation);
* a leave and a join (FIS updates) change the very next packet.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pcdemo.example_testbed import ExampleTestbed, main, probe_until, wait_until
from pcsock.wire import IPPROTO_PACKETCLOUD

from .control import receive_payload
from .scenario import (
    GROUP,
    JOIN,
    LEAVE,
    MEMBERS,
    NEEDS,
    PSP,
    SENDER,
    TOPOLOGY,
    Plan,
    build_world,
)

PREFIX = "pce"  #: its testbed's name prefix
__all__ = ["NEEDS", "SCENARIO", "TOPOLOGY", "on_simulator", "on_testbed", "outcome", "passed"]


def _payloads(packets: list[bytes], data_prefix: bytes) -> Counter[bytes]:
    out: Counter[bytes] = Counter()
    for pkt in packets:
        got = receive_payload(pkt)
        if got is not None and got[1].startswith(data_prefix):
            out[got[1]] += 1
    return out


def on_testbed(etb: ExampleTestbed, topo: Any, *, n: int = 20) -> dict[str, Any]:
    """Build the multi-domain testbed and run the multicast demo with real packets on the
    site daemons (one per domain)."""
    plan = Plan(topo)
    handles = {a: etb.site(d.site, PSP) for a, d in plan.domains.items()}
    psp = plan.psp(handles)
    taps = {
        plan.address[h]: etb.capture(h, plan.domains[plan.asn[h]].router) for h in plan.receivers()
    }
    link_taps = {f"{a}->{b}": etb.capture(b, a) for a, b in plan.router_pairs}
    raw = etb.raw_sender(SENDER)
    site_a = handles[plan.asn[SENDER]]

    def computations() -> int:  # the service logs one line per tree computation
        return int(site_a.counters(psp.service).get("log_lines", 0))

    def send_probe(tag: bytes) -> Any:
        return lambda i: raw.sendto(plan.packet(psp, tag + b"%d" % i), (site_a.public_ip, 0))

    # the group's circuits and table in effect at every site's worker (on multi-machine
    # sites: at the circuit's compute node) before the burst: a probe reached every member
    members = [taps[plan.address[h]] for h in MEMBERS]
    probes = probe_until(send_probe(b"probe"),
                         lambda i: all(t.saw(b"probe%d" % i) for t in members))  # fmt: skip
    etb.wait_served(site_a, psp.service, probes)  # its usage report covers the probes
    served0 = {a: int(h.counters(psp.service).get("packets", 0)) for a, h in handles.items()}
    computed0 = computations()
    for t in (*taps.values(), *link_taps.values()):
        t.forget()
    for i in range(n):
        raw.sendto(plan.packet(psp, b"frame%03d" % i), (site_a.public_ip, 0))
        time.sleep(0.002)  # pacing (the sending rate), not a wait for state
    for a, h in handles.items():  # every site has run the service on every packet
        etb.wait_served(h, psp.service, max(n, served0[a] + n))

    def received(data_prefix: bytes) -> dict[str, Counter[bytes]]:
        return {
            h: _payloads(tap.take(proto=IPPROTO_PACKETCLOUD), data_prefix)
            for h, tap in taps.items()
        }

    first = received(b"frame")
    link_frames = {k: len(t.take(0.1, proto=IPPROTO_PACKETCLOUD)) for k, t in link_taps.items()}
    tree_computations = computations()
    # a leave and a join (FIS updates), in effect at the sites once a probe reaches the
    # joined host and not the one that left; then the next packet
    plan.change(psp)
    join, leave = taps[plan.address[JOIN]], taps[plan.address[LEAVE]]

    def changed(i: int) -> bool:
        marker = b"probe-after%d" % i
        return join.saw(marker) and not leave.saw(marker, quiet=0.1)

    change_probes = probe_until(send_probe(b"probe-after"), changed)
    for t in taps.values():
        t.forget()
    raw.sendto(plan.packet(psp, b"after"), (site_a.public_ip, 0))
    res = plan.summary(n, first, received(b"after"))
    res["link_frames"] = link_frames
    res["probes"] = [probes, change_probes]
    # computed for the probes (once per table version they met), none for the burst
    res["tree_computations_at_A"] = tree_computations
    res["tree_computations_in_burst"] = tree_computations - computed0
    wait_until(lambda: computations() > tree_computations, timeout=5)
    res["tree_computations_at_A_after"] = computations()
    for sock in (raw, *taps.values(), *link_taps.values()):
        sock.close()
    return res


def on_simulator(topology: Path, *, n: int = 20) -> dict[str, Any]:
    """The same demo in ``pcsite_lite.sim`` on the same topology file."""
    w = build_world(topology)
    plan = w.plan
    receivers = {plan.address[h]: w.hosts[h] for h in plan.receivers()}

    def received(data_prefix: bytes) -> dict[str, Counter[bytes]]:
        out = {a: _payloads([r.data for r in h.inbox], data_prefix) for a, h in receivers.items()}
        for h in receivers.values():
            h.inbox.clear()
        return out

    sender = w.hosts[SENDER]
    for i in range(n):
        sender.send(plan.packet(w.psp, b"frame%03d" % i))
        w.net.run()
    first = received(b"frame")
    link_frames = {f"{a}->{b}": w.frames[f"{a}->{b}"] for a, b in plan.router_pairs}
    tree_computations = _computations(w.logs)
    plan.change(w.psp)
    sender.send(plan.packet(w.psp, b"after"))
    w.net.run()
    res = plan.summary(n, first, received(b"after"))
    res["link_frames"] = link_frames
    res["tree_computations_at_A"] = tree_computations
    res["tree_computations_at_A_after"] = _computations(w.logs)
    return res


def _computations(logs: list[str]) -> int:
    return sum(f"group={GROUP} " in line for line in logs)


def _one_tree(res: dict[str, Any]) -> bool:
    """The first site computed the tree once and every packet of the burst reused it. On the
    testbed probes go first (until the group's state is in effect everywhere) and the tree is
    computed for them: the burst then computes none."""
    burst = res.get("tree_computations_in_burst")
    if burst is None:  # the simulator: no probes
        return bool(res["tree_computations_at_A"] == 1)
    return bool(burst == 0 and res["tree_computations_at_A"] >= 1)


def passed(res: dict[str, Any]) -> bool:
    lf = res["link_frames"]
    return bool(
        res["members_with_every_packet_once"] == len(res["members"])
        and res["non_member_copies"] == 0
        and lf["RA->RB"] == res["sent"]
        and lf["RA->RC"] == res["sent"]
        and lf["RB->RC"] == lf["RC->RB"] == lf["RB->RA"] == lf["RC->RA"] == 0
        and _one_tree(res)
        and res["after_change_receivers"] == res["expected_after_change"]
    )


#: the demo's row in ``python -m pcdemo`` (:func:`pcdemo.scenarios.example_scenario`)
SCENARIO = ("multicast", "inter-domain multicast over three domains (§2.6.2)")


def outcome(out: Any, res: dict[str, Any]) -> None:
    m = len(res["members"])
    out.sent = res["sent"]
    out.received = res["members_with_every_packet_once"] * res["sent"]
    out.check("every member got every packet once", res["members_with_every_packet_once"] == m)
    out.check("one tree computation, reused by every packet", _one_tree(res))
    out.check("links carry the tree only", passed(res))
    out.detail = f"{m} members in 3 domains; inter-domain frames {res['link_frames']}"


if __name__ == "__main__":
    sys.exit(main(sys.modules[__name__]))
