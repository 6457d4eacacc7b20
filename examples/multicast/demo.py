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

from pcdemo.example_testbed import ExampleTestbed, main, wait_until
from pcsock.wire import IPPROTO_PACKETCLOUD

from .control import receive_payload
from .scenario import GROUP, NEEDS, PSP, SENDER, TOPOLOGY, Plan, build_world

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
    time.sleep(0.1)  # > the FIS staleness bound
    for i in range(n):
        raw.sendto(plan.packet(psp, b"frame%03d" % i), (site_a.public_ip, 0))
        time.sleep(0.002)
    for h in handles.values():  # every site has run the service on every packet
        etb.wait_served(h, psp.service, n)

    def received(data_prefix: bytes) -> dict[str, Counter[bytes]]:
        return {
            h: _payloads(tap.take(proto=IPPROTO_PACKETCLOUD), data_prefix)
            for h, tap in taps.items()
        }

    first = received(b"frame")
    link_frames = {k: len(t.take(0.1, proto=IPPROTO_PACKETCLOUD)) for k, t in link_taps.items()}

    def computations() -> int:  # the service logs one line per tree computation
        return int(site_a.counters(psp.service).get("log_lines", 0))

    wait_until(lambda: computations() >= 1, timeout=5)  # the workers report usage
    tree_computations = computations()
    # a leave and a join, then the very next packet
    plan.change(psp)
    time.sleep(0.05)  # > the 5 ms FIS staleness bound
    raw.sendto(plan.packet(psp, b"after"), (site_a.public_ip, 0))
    res = plan.summary(n, first, received(b"after"))
    res["link_frames"] = link_frames
    res["tree_computations_at_A"] = tree_computations
    wait_until(lambda: computations() >= 2, timeout=5)
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


def passed(res: dict[str, Any]) -> bool:
    lf = res["link_frames"]
    return bool(
        res["members_with_every_packet_once"] == len(res["members"])
        and res["non_member_copies"] == 0
        and lf["RA->RB"] == res["sent"]
        and lf["RA->RC"] == res["sent"]
        and lf["RB->RC"] == lf["RC->RB"] == lf["RB->RA"] == lf["RC->RA"] == 0
        and res["tree_computations_at_A"] == 1
        and res["after_change_receivers"] == res["expected_after_change"]
    )


#: the demo's row in ``python -m pcdemo`` (:func:`pcdemo.scenarios.example_scenario`)
SCENARIO = ("multicast", "inter-domain multicast over three domains (§2.6.2)")


def outcome(out: Any, res: dict[str, Any]) -> None:
    m = len(res["members"])
    out.sent = res["sent"]
    out.received = res["members_with_every_packet_once"] * res["sent"]
    out.check("every member got every packet once", res["members_with_every_packet_once"] == m)
    out.check("one tree computation", res["tree_computations_at_A"] == 1)
    out.check("links carry the tree only", passed(res))
    out.detail = f"{m} members in 3 domains; inter-domain frames {res['link_frames']}"


if __name__ == "__main__":
    sys.exit(main(sys.modules[__name__]))
