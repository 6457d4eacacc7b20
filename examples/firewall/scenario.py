"""The firewall example's simulated network (``pcsite_lite.sim``), for tests and the demo.

Attacker A and client G behind access router Ra (site Ca), a partner network behind Rb (site
Cb), both 10 ms from the core router, and the web server ``198.19.0.80`` (prefix
``198.19.0.0/24``) 5 ms further. :func:`build_world` signs the prefix up (a DNSSEC proof built
offline) so the firewall runs at Ca and Cb; :func:`traffic_mix` sends a seeded mix of wanted
and unwanted packets and counts what crossed the core.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Packet

from pcdemo.example_testbed import SimSite
from pcsite_lite.sim import Host, Link, Network, SiteNode
from pcsock.ownership import OwnershipClaim, ZoneKey, build_proof, reverse_zone

from .control import FirewallPSP

__all__ = ["NOW", "OWNER", "PREFIX", "SERVER", "World", "build_world", "proof", "traffic_mix"]

NOW = 1_795_000_000.0  # wall-clock time of the sign-up (the proof's validity window)
PREFIX = "198.19.0.0/24"
SERVER = "198.19.0.80"
OWNER = "webco"


@dataclass
class World:
    net: Network
    psp: FirewallPSP
    hosts: dict[str, Host]
    sites: dict[str, SiteNode]
    core: dict[str, Link]  #: the links into the core, per access router


def proof(owner: str = OWNER) -> tuple[str, str]:
    """(proof text, trust anchor) of ``owner``'s right to run the firewall for PREFIX."""
    root = ZoneKey.generate("in-addr.arpa.")
    own = ZoneKey.generate(reverse_zone(PREFIX))
    claim = OwnershipClaim(PREFIX, owner, "firewall", NOW - 3600, NOW + 86400)
    proof = build_proof([claim], own, chain=[root], inception=NOW - 60, expiration=NOW + 3600)
    return proof.text, root.ds_text()


def build_world(*, sign_up: bool = True) -> World:
    """The network, with the firewall signed up and deployed unless ``sign_up`` is False."""
    net = Network(trace=False)
    ra = net.router("Ra", "198.18.60.1")
    rb = net.router("Rb", "198.18.50.1")
    rcore = net.router("Rcore", "198.18.0.1")
    rd = net.router("Rd", "198.18.70.1")
    hosts = {
        "attacker": net.host("A", "198.18.60.10"),
        "client": net.host("G", "198.18.60.20"),
        "partner": net.host("W", "198.18.50.7"),
        "server": net.host("S", SERVER, prefix=PREFIX),
    }
    net.link(hosts["attacker"], ra)
    net.link(hosts["client"], ra)
    net.link(hosts["partner"], rb)
    core = {"Ra": net.link(ra, rcore, delay=0.010), "Rb": net.link(rb, rcore, delay=0.010)}
    net.link(rcore, rd, delay=0.005)
    net.link(hosts["server"], rd)
    sites = {
        "Ca": net.site("Ca", "198.18.254.1", router=ra),
        "Cb": net.site("Cb", "198.18.254.2", router=rb),
    }
    net.compute_routes()
    psp = FirewallPSP(
        OWNER,
        [SimSite(sites["Ca"], OWNER, router=ra), SimSite(sites["Cb"], OWNER, router=rb)],
        quota=2,
    )
    if sign_up:
        text, anchor = proof()
        psp.sign_up(PREFIX, text, anchor, now=NOW)
    return World(net, psp, hosts, sites, core)


def traffic_mix(w: World, n: int = 1000) -> tuple[int, int, int]:
    """n packets, 3/4 unwanted from the attacker, 1/4 web from the client (seeded).

    Returns (wanted packets sent, frames on the attacker side's core link, server receptions).
    """
    rng = random.Random(7)
    core0, got0, wanted = w.core["Ra"].sent, len(w.hosts["server"].inbox), 0
    for i in range(n):
        l4: Packet
        if i % 4 == 0:
            who, l4 = "client", TCP(dport=rng.choice([80, 443]))
            wanted += 1
        else:
            who = "attacker"
            l4 = rng.choice(
                [UDP(dport=rng.randrange(1, 65535)), TCP(dport=rng.choice([22, 25, 3389, 8080]))]
            )
        h = w.hosts[who]
        h.send(bytes(IP(src=h.ip, dst=SERVER) / l4))
    w.net.run()
    return wanted, w.core["Ra"].sent - core0, len(w.hosts["server"].inbox) - got0
