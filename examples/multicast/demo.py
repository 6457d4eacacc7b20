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

``python -m examples.multicast.demo [--topology FILE]`` runs it as root (else the simulator) and
prints JSON.
"""

from __future__ import annotations

import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pcdemo.example_testbed import Capture, ExampleTestbed, Needs, iface, load_topology, wait_until
from pcsock.wire import IPPROTO_PACKETCLOUD

from .control import MulticastPSP, receive_payload
from .tree import adjacency_from_links

TOPOLOGY = Path(__file__).resolve().parents[2] / "testbed" / "topologies" / "multidomain.toml"
DOMAINS = {"A": 64501, "B": 64502, "C": 64503}
GROUP = 7
#: three domains in a ring (border routers RA, RB, RC), a site per domain, two receivers each
#: (A1, A2, ...), the sender SA in domain A
NEEDS = Needs(
    hosts=("SA", "A1", "A2", "B1", "B2", "C1", "C2"),
    routers=("RA", "RB", "RC"),
    sites=("CA", "CB", "CC"),
    links=(("RA", "RB"), ("RA", "RC"), ("RB", "RC")),
)

__all__ = ["register", "run_simulator", "run_testbed"]


def run_testbed(
    *, prefix: str = "pce", n: int = 20, progress: Any = None, topology: Path = TOPOLOGY
) -> dict[str, Any]:
    """Build the multi-domain testbed and run the multicast demo with real packets on the
    site daemons (one per domain)."""
    topo = load_topology(topology, NEEDS)
    res: dict[str, Any] = {}
    with ExampleTestbed(topo, prefix=prefix, progress=progress) as etb:
        tb = etb.tb
        handles = {DOMAINS[d]: etb.site(f"C{d}", "mcpsp") for d in DOMAINS}
        hosts = {DOMAINS[d]: [etb.address(f"{d}{i}") for i in (1, 2)] for d in DOMAINS}
        routers = {DOMAINS[d]: f"R{d}" for d in DOMAINS}
        links = [(64501, 64502), (64502, 64503), (64503, 64501)]
        psp = MulticastPSP(adjacency_from_links(links), handles, allowed=hosts)
        psp.deploy()
        psp.add_group(GROUP)
        members = [hosts[64501][0], hosts[64502][0], hosts[64502][1], hosts[64503][0]]
        for h in members:
            psp.join(next(a for a, hs in hosts.items() if h in hs), GROUP, h)
        taps = {
            etb.address(name): Capture.open(tb.node(name), iface(tb, name, routers[DOMAINS[d]]))
            for d in DOMAINS
            for name in (f"{d}1", f"{d}2")
        }
        link_taps = {
            (a, b): Capture.open(tb.node(b), iface(tb, b, a))
            for a, b in (("RA", "RB"), ("RA", "RC"), ("RB", "RC"),
                         ("RC", "RB"), ("RB", "RA"), ("RC", "RA"))
        }  # fmt: skip
        sa = tb.node("SA")
        src = etb.address("SA")
        raw = sa.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW))
        time.sleep(0.1)  # > the FIS staleness bound
        site_a = handles[64501].public_ip
        for i in range(n):
            raw.sendto(psp.sender_packet(64501, GROUP, src=src, payload=b"frame%03d" % i),
                       (site_a, 0))  # fmt: skip
            time.sleep(0.002)
        for h in handles.values():  # every site has run the service on every packet
            wait_until(lambda h=h: h.counters(psp.service).get("packets", 0) >= n, timeout=10)

        def copies(data_prefix: bytes) -> dict[str, Counter[bytes]]:
            out: dict[str, Counter[bytes]] = {}
            for h, tap in taps.items():
                c: Counter[bytes] = Counter()
                for pkt in tap.take(proto=IPPROTO_PACKETCLOUD):
                    got = receive_payload(pkt)
                    if got is not None and got[1].startswith(data_prefix):
                        c[got[1]] += 1
                out[h] = c
            return out

        first = copies(b"frame")
        res["sent"] = n
        res["members"] = members
        res["copies_per_member"] = {h: sorted(set(first[h].values())) for h in members}
        res["members_with_every_packet_once"] = sum(
            1 for h in members if len(first[h]) == n and set(first[h].values()) == {1}
        )
        res["non_member_copies"] = sum(sum(first[h].values()) for h in first if h not in members)
        res["link_frames"] = {
            f"{a}->{b}": len(t.take(0.1, proto=IPPROTO_PACKETCLOUD))
            for (a, b), t in link_taps.items()
        }

        def computations() -> int:  # the service logs one line per tree computation
            return int(handles[64501].counters(psp.service).get("log_lines", 0))

        wait_until(lambda: computations() >= 1, timeout=5)  # the workers report usage
        res["tree_computations_at_A"] = computations()
        # a leave and a join, then the very next packet
        psp.leave(64503, GROUP, hosts[64503][0])
        psp.join(64503, GROUP, hosts[64503][1])
        time.sleep(0.05)  # > the 5 ms FIS staleness bound
        raw.sendto(psp.sender_packet(64501, GROUP, src=src, payload=b"after"), (site_a, 0))
        after = copies(b"after")
        res["after_change_receivers"] = sorted(h for h, c in after.items() if c)
        res["expected_after_change"] = sorted(
            [hosts[64501][0], hosts[64502][0], hosts[64502][1], hosts[64503][1]]
        )
        wait_until(lambda: computations() >= 2, timeout=5)
        res["tree_computations_at_A_after"] = computations()
        for sock in (raw, *taps.values(), *link_taps.values()):
            sock.close()
    return res


def passed(res: dict[str, Any]) -> bool:
    if "non_member_copies" not in res:  # the simulator's summary
        return bool(
            res["members_with_every_packet_once"] == len(res["members"])
            and res["tree_computations_at_A"] == 1
        )
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


def run_simulator(topology: Path = TOPOLOGY) -> dict[str, Any]:
    """A summary of the simulator test's network (five domains), for machines without root."""
    from pcdemo.example_testbed import TopologyLacks

    from .scenario import build_world, copies

    if Path(topology).resolve() != TOPOLOGY.resolve():
        raise TopologyLacks(
            f"{topology}: the multicast simulator runs its own five-domain network "
            "(examples/multicast/scenario.py), not a topology file; use --world testbed"
        )
    net, psp, links, hosts, logs = build_world()
    members = ["198.18.2.11", "198.18.4.11", "198.18.5.11"]
    for ip in members:
        psp.join(64500 + int(ip.split(".")[2]), 1, ip)
    sender = hosts["198.18.1.11"]
    n = 20
    for i in range(n):
        sender.send(psp.sender_packet(64501, 1, src=sender.ip, payload=b"seq%03d" % i))
        net.run()
    per = [copies(hosts, b"seq%03d" % i) for i in range(n)]
    return {
        "sent": n,
        "members": members,
        "members_with_every_packet_once": sum(
            1 for m in members if all(c.get(m) == 1 for c in per)
        ),
        "tree_computations_at_A": sum("group=1" in line for line in logs),
        "link_frames": {f"{a}->{b}": lk.sent for (a, b), lk in links.items()},
    }


def register() -> None:
    """Add the multicast demo to ``pcdemo``'s scenarios."""
    from pcdemo.scenarios import Outcome, World, scenario

    @scenario("multicast", "inter-domain multicast over three domains (§2.6.2)")
    def multicast_scenario(world: World) -> Outcome:
        out = Outcome("multicast")
        res = run_testbed() if world.kind == "testbed" else run_simulator()
        m = len(res["members"])
        out.sent = res["sent"]
        out.received = res["members_with_every_packet_once"] * res["sent"]
        out.check("every member got every packet once", res["members_with_every_packet_once"] == m)
        out.check("one tree computation", res["tree_computations_at_A"] == 1)
        if world.kind == "testbed":
            out.check("links carry the tree only", passed(res))
        out.detail = f"{m} members in 3 domains; inter-domain frames {res['link_frames']}"
        return out


def main(argv: list[str] | None = None) -> int:
    from pcdemo.example_testbed import main as example_main

    return example_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
