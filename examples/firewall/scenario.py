"""The firewall example's simulated network (``pcsite_lite.sim``), for tests and the demo.

The network is the namespace demo's, from the same file (``firewall.toml``): attacker A and
client G behind access router RA (site CA), a partner network W behind RB (site CB), both 2 ms
from the core router RC, and the web server S (its prefix) behind RD. :func:`build_world`
signs the prefix up (a DNSSEC proof built offline) so the firewall runs at CA and CB;
:func:`traffic_mix` sends a seeded mix of wanted and unwanted packets and counts what crossed
the core.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Packet

from pcdemo.example_testbed import SimSite, addresses, sim_network
from pcsite_lite.sim import Host, Link, Network, SiteNode
from pcsock.ownership import OwnershipClaim, ZoneKey, build_proof, reverse_zone

from .control import FirewallPSP

__all__ = [
    "ADDRESS",
    "NOW",
    "OWNER",
    "PREFIX",
    "SERVER",
    "TOPOLOGY",
    "World",
    "build_world",
    "proof",
    "traffic_mix",
]

TOPOLOGY = Path(__file__).with_name("firewall.toml")
ADDRESS = addresses(TOPOLOGY)  #: every node's address (a site's: its public IP)
NOW = 1_795_000_000.0  # wall-clock time of the sign-up (the proof's validity window)
SERVER = ADDRESS["S"]
PREFIX = SERVER.rsplit(".", 1)[0] + ".0/24"  #: the server's network (S's prefix in the file)
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


def build_world(*, sign_up: bool = True, topology: Path = TOPOLOGY) -> World:
    """The network, with the firewall signed up and deployed unless ``sign_up`` is False."""
    sn = sim_network(topology)
    n = sn.nodes
    hosts = {"attacker": n["A"], "client": n["G"], "partner": n["W"], "server": n["S"]}
    sites = {"CA": n["CA"], "CB": n["CB"]}
    core = {"RA": sn.links["RA", "RC"], "RB": sn.links["RB", "RC"]}
    psp = FirewallPSP(
        OWNER,
        [SimSite(sites["CA"], OWNER, router=n["RA"]), SimSite(sites["CB"], OWNER, router=n["RB"])],
        quota=2,
    )
    if sign_up:
        text, anchor = proof()
        psp.sign_up(PREFIX, text, anchor, now=NOW)
    return World(sn.net, psp, hosts, sites, core)


def traffic_mix(w: World, n: int = 1000) -> tuple[int, int, int]:
    """n packets, 3/4 unwanted from the attacker, 1/4 web from the client (seeded).

    Returns (wanted packets sent, frames on the attacker side's core link, server receptions).
    """
    rng = random.Random(7)
    core0, got0, wanted = w.core["RA"].sent, len(w.hosts["server"].inbox), 0
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
    return wanted, w.core["RA"].sent - core0, len(w.hosts["server"].inbox) - got0
