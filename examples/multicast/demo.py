"""The multicast demo with real packets in the multi-domain namespace testbed.

:func:`run_testbed` builds ``testbed/topologies/multidomain.toml`` (three domains in a ring,
each a border router with a co-located site and two receivers, a sender SA in domain A; prefix
``pce`` + a run id; always torn down), runs the multicast service in a site process per domain
(:mod:`examples.firewall.netsite`: the real pipeline and sandboxed service, FIS files the PSP
writes on line), joins receivers in all three domains and sends ``n`` packets from SA:

* every member receives exactly one copy of every packet (captured at the hosts);
* the inter-domain links carry the tree only: one copy per packet on A-B and on A-C, none on
  B-C (no copy goes back upstream or around the ring) — captured on the routers' interfaces;
* the first site computed the tree once (its service logged one computation);
* a leave and a join (FIS updates) change the very next packet.

``python -m examples.multicast.demo`` runs it as root (else the simulator) and prints JSON.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .control import MulticastPSP, receive_payload
from .tree import adjacency_from_links

TOPOLOGY = Path(__file__).resolve().parents[2] / "testbed" / "topologies" / "multidomain.toml"
DOMAINS = {"A": 64501, "B": 64502, "C": 64503}
GROUP = 7
ETH_P_IP = 0x0800

__all__ = ["register", "run_simulator", "run_testbed"]


class Tap:
    """PacketCloud (proto 253) frames arriving on an interface, via AF_PACKET in its netns."""

    def __init__(self, node: Any, iface: str) -> None:
        def mk() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
            s.bind((iface, ETH_P_IP))
            s.settimeout(0.05)
            return s

        self.sock = node.call(mk)

    def drain(self, quiet: float = 0.3) -> list[bytes]:
        out = []
        deadline = time.monotonic() + quiet
        while time.monotonic() < deadline:
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            if addr[2] != 4 and len(data) >= 20 and data[9] == 253:  # incoming, PacketCloud
                out.append(data)
                deadline = time.monotonic() + quiet
        return out


def run_testbed(
    *, prefix: str = "pce", n: int = 20, progress: Any = None, site: str = "daemon"
) -> dict[str, Any]:
    """Build the multi-domain testbed and run the multicast demo with real packets.

    ``site``: ``"daemon"`` runs the real site daemon in each domain (signed service upload,
    circuits, FIS through the control API); ``"netsite"`` the in-namespace stand-in.
    """
    from examples.firewall.demo import DaemonSite, NetSite, iface
    from testbed.net import Testbed

    res: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="pce-mc-") as tmp,
        Testbed.from_file(TOPOLOGY, prefix=prefix, progress=progress) as tb,
    ):
        work = Path(tmp)
        handles: dict[int, Any] = {
            DOMAINS[d]: (
                DaemonSite(tb, f"C{d}", "mcpsp", work)
                if site == "daemon"
                else NetSite(tb, f"C{d}", "mcpsp", work)
            )
            for d in DOMAINS
        }
        res["site"] = site
        try:
            hosts = {DOMAINS[d]: [str(tb.node(f"{d}{i}").address) for i in (1, 2)] for d in DOMAINS}
            routers = {DOMAINS[d]: f"R{d}" for d in DOMAINS}
            links = [(64501, 64502), (64502, 64503), (64503, 64501)]
            psp = MulticastPSP(adjacency_from_links(links), handles, allowed=hosts)
            psp.deploy()
            psp.add_group(GROUP)
            members = [hosts[64501][0], hosts[64502][0], hosts[64502][1], hosts[64503][0]]
            for h in members:
                psp.join(next(a for a, hs in hosts.items() if h in hs), GROUP, h)
            for handle in handles.values():
                handle.start()
            taps = {
                h: Tap(tb.node(name), iface(tb, name, routers[a]))
                for a, hs in hosts.items()
                for h in hs
                for name in [next(nm for nm, nd in tb.nodes.items() if nd.address == h)]
            }
            link_taps = {
                ("RA", "RB"): Tap(tb.node("RB"), iface(tb, "RB", "RA")),
                ("RA", "RC"): Tap(tb.node("RC"), iface(tb, "RC", "RA")),
                ("RB", "RC"): Tap(tb.node("RC"), iface(tb, "RC", "RB")),
                ("RC", "RB"): Tap(tb.node("RB"), iface(tb, "RB", "RC")),
                ("RB", "RA"): Tap(tb.node("RA"), iface(tb, "RA", "RB")),
                ("RC", "RA"): Tap(tb.node("RA"), iface(tb, "RA", "RC")),
            }
            sa = tb.node("SA")
            src = str(sa.address)
            raw = sa.call(
                lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            )
            time.sleep(0.1)  # > the FIS staleness bound
            site_a = handles[64501].info.public_ip
            for i in range(n):
                raw.sendto(psp.sender_packet(64501, GROUP, src=src, payload=b"frame%03d" % i),
                           (site_a, 0))  # fmt: skip
                time.sleep(0.002)

            def copies(data_prefix: bytes) -> dict[str, Counter[bytes]]:
                out: dict[str, Counter[bytes]] = {}
                for h, tap in taps.items():
                    c: Counter[bytes] = Counter()
                    for pkt in tap.drain():
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
            res["non_member_copies"] = sum(
                sum(first[h].values()) for h in first if h not in members
            )
            res["link_frames"] = {f"{a}->{b}": len(t.drain(0.1)) for (a, b), t in link_taps.items()}
            time.sleep(0.2)
            stats = (
                handles[64501].stats("multicast") if site == "daemon" else handles[64501].stats()
            )
            res["tree_computations_at_A"] = stats["services"]["mcpsp/multicast"]["log_lines"]
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
            time.sleep(0.2)
            stats = (
                handles[64501].stats("multicast") if site == "daemon" else handles[64501].stats()
            )
            res["tree_computations_at_A_after"] = stats["services"]["mcpsp/multicast"]["log_lines"]
            raw.close()
        finally:
            for handle in handles.values():
                handle.close()
    return res


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


def run_simulator() -> dict[str, Any]:
    """A summary of the simulator test's network (five domains), for machines without root."""
    from .scenario import build_world, copies

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


if __name__ == "__main__":
    import os

    result = run_testbed(progress=print) if os.geteuid() == 0 else run_simulator()
    print(json.dumps(result, indent=2))
    sys.exit(0 if os.geteuid() or passed(result) else 1)
