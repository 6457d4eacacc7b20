"""The firewall demo with real packets in a namespace testbed (and its simulator twin).

:func:`run_testbed` builds ``firewall.toml`` (or the user's ``--topology FILE``; prefix ``pce``
+ a run id; always torn down), runs the real site daemon (``pcsite run``) in site CA, signs up
the server's prefix through the daemon's control API (a DNSSEC ownership proof the daemon
validates against its trust anchor; the service goes through the signed repository), has RA
divert the prefix to CA, and sends a seeded mix of packets from the attacker A and the client G
to the web server S. It counts the packets crossing the core link RA -> RC (captured on RC's
interface, plus the kernel's interface counter) and what reaches S, then changes the whitelist
on line and installs a StopIt filter (FIS writes through the control API).

``python -m examples.firewall.demo [--topology FILE]`` runs it as root (else the simulator)
and prints the figures as JSON."""

from __future__ import annotations

import random
import socket
import sys
import time
from pathlib import Path
from typing import Any

from pcdemo.example_testbed import ExampleTestbed, Needs, iface, main, probe_until, tx_packets

from .control import SERVICE, FirewallPSP

PREFIX = "pce"  #: its testbed's name prefix
TOPOLOGY = Path(__file__).with_name("firewall.toml")
#: attacker A and client G behind RA (site CA), core RC, the web server S (its prefix) behind RD
NEEDS = Needs(
    hosts=("A", "G", "S"),
    routers=("RA", "RC", "RD"),
    sites=("CA",),
    links=(("RA", "RC"), ("RD", "S")),
)
#: the simulator also runs the firewall at a second site, CB, for the partner network W
SIM_NEEDS = Needs(
    hosts=(*NEEDS.hosts, "W"),
    routers=(*NEEDS.routers, "RB"),
    sites=(*NEEDS.sites, "CB"),
    links=(*NEEDS.links, ("RB", "RC")),
)
OWNER = "webco"
SIGNUP_TIME = 1_795_000_000.0

__all__ = ["SCENARIO", "on_simulator", "on_testbed", "outcome", "passed"]


def _proof(prefix: str, now: float = SIGNUP_TIME) -> tuple[str, str]:
    from pcsock.ownership import OwnershipClaim, ZoneKey, build_proof, reverse_zone

    root = ZoneKey.generate("in-addr.arpa.")
    own = ZoneKey.generate(reverse_zone(prefix))
    claim = OwnershipClaim(prefix, OWNER, SERVICE, now - 3600, now + 86400)
    proof = build_proof([claim], own, chain=[root], inception=now - 60, expiration=now + 3600)
    return proof.text, root.ds_text()


def _mix(n: int, a: str, g: str, server: str, seed: int = 7) -> list[tuple[bytes, bool]]:
    """(packet, wanted) pairs: 3/4 unwanted from ``a``, 1/4 web from ``g``."""
    from scapy.layers.inet import IP, TCP, UDP

    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 4 == 0:
            p = IP(src=g, dst=server) / TCP(sport=40000 + i, dport=rng.choice([80, 443]))
            out.append((bytes(p), True))
        else:
            l4 = rng.choice(
                [
                    UDP(sport=40000 + i, dport=rng.randrange(1, 65535)),
                    TCP(sport=40000 + i, dport=rng.choice([22, 25, 3389, 8080])),
                ]
            )
            out.append((bytes(IP(src=a, dst=server) / l4), False))
    return out


def on_testbed(etb: ExampleTestbed, topo: Any, *, n: int = 200) -> dict[str, Any]:
    """Build the testbed, run the firewall demo with real packets on the site daemon, return
    the figures (raises :class:`pcdemo.example_testbed.TopologyLacks` for a topology without
    the nodes the demo needs)."""
    res: dict[str, Any] = {}
    tb = etb.tb
    server = etb.address("S")
    server_prefix = str(topo.nodes["S"].prefix)
    now = time.time()
    proof, anchor = _proof(server_prefix, now)
    ca = etb.site("CA", OWNER, trust_anchor=anchor)
    psp = FirewallPSP(OWNER, [ca], quota=4)
    psp.sign_up(server_prefix, proof, anchor, now=now)  # the site validates it again
    etb.divert("CA", server_prefix)  # the ISP's part: RA diverts the prefix to CA
    a, g = etb.address("A"), etb.address("G")
    ra_out = iface(tb, "RA", "RC")
    core = etb.capture("RC", "RA")
    at_s = etb.capture("S", "RD")
    senders = {a: etb.raw_sender("A"), g: etb.raw_sender("G")}
    mix = _mix(n, a, g, server)
    tx0 = tx_packets(tb.node("RA"), ra_out)
    for pkt, _wanted in mix:  # 2000 packets/s: see the README on bursts and service_busy
        senders[socket.inet_ntoa(pkt[12:16])].sendto(pkt, (server, 0))
        time.sleep(0.0005)  # pacing (the sending rate), not a wait for state
    wanted = sum(w for _, w in mix)
    res["sent"] = n
    res["wanted"] = wanted
    # CA has run the firewall on every packet before the captures are read (the workers
    # report usage; a loaded site can outlast a capture's quiet period)
    etb.wait_served(ca, SERVICE, n)
    res["core_link_packets"] = core.count(dst=server, srcs={a, g})
    res["server_packets"] = at_s.count(dst=server, srcs={a, g})
    res["core_iface_tx_delta"] = tx_packets(tb.node("RA"), ra_out) - tx0
    res["site_drops"] = {"service_drop": int(ca.counters(SERVICE).get("drops", 0))}
    # on line: whitelist the attacker's host, then stop it with a StopIt filter
    from scapy.layers.inet import IP, UDP

    def probe(i: int) -> None:
        pkt = IP(src=a, dst=server) / UDP(sport=999, dport=5000) / (b"fw-probe %d" % i)
        senders[a].sendto(bytes(pkt), (server, 0))

    def drops() -> int:
        return int(ca.counters(SERVICE).get("drops", 0))

    psp.allow_source(f"{a}/32")
    # the whitelist entry takes effect where A's flow is served once the worker polls the
    # FIS (5 ms, if it gets a CPU; on a multi-machine site, on that flow's compute node): a
    # probe that the firewall dropped before is let through
    try:
        res["whitelist_probes"] = probe_until(probe, lambda i: at_s.saw(b"fw-probe %d" % i),
                                              timeout=10)  # fmt: skip
        res["whitelisted_probe_at_server"] = 1
    except TimeoutError:
        res["whitelisted_probe_at_server"] = 0
    at_s.forget()
    drops0 = drops()
    psp.stopit(a, server, duration=60, now=time.time())  # sites' clock: wall time
    # the filter is in effect once a probe is dropped again (the service counts it; the
    # workers report every 0.25 s); then one more must not get through either
    try:
        res["stopit_probes"] = probe_until(probe, lambda _i: drops() > drops0, timeout=10,
                                           every=1.0)  # fmt: skip
    except TimeoutError:
        res["stopit_probes"] = None
    at_s.forget()
    probe(-1)
    res["stopped_probe_at_server"] = at_s.count(dst=server, srcs={a})
    for sock in (*senders.values(), core, at_s):
        sock.close()
    return res


def passed(res: dict[str, Any]) -> bool:
    ok = res["core_link_packets"] == res["wanted"] and res["server_packets"] == res["wanted"]
    if "site_drops" not in res:  # the simulator's figures
        return ok
    return bool(
        ok
        and res["site_drops"].get("service_drop", 0) == res["sent"] - res["wanted"]
        and res["whitelisted_probe_at_server"] == 1
        and res["stopped_probe_at_server"] == 0
    )


#: the demo's row in ``python -m pcdemo`` (:func:`pcdemo.scenarios.example_scenario`)
SCENARIO = ("firewall", "destination-controlled firewall near the sources (§2.6.2)")


def outcome(out: Any, res: dict[str, Any]) -> None:
    out.sent, out.received = res["sent"], res["server_packets"]
    out.dropped = res["sent"] - res["server_packets"]
    out.check("only wanted traffic crossed the core", res["core_link_packets"] == res["wanted"])
    out.check("the server got exactly the wanted traffic", res["server_packets"] == res["wanted"])
    out.detail = f"{res['core_link_packets']}/{res['sent']} packets crossed the core"


def on_simulator(topology: Path, *, n: int = 200) -> dict[str, Any]:
    """The same mix in the simulator (``pcsite_lite.sim``), for machines without root."""
    from .scenario import build_world, traffic_mix

    wanted, core, got = traffic_mix(build_world(topology=topology), n)
    return {"sent": n, "wanted": wanted, "core_link_packets": core, "server_packets": got}


if __name__ == "__main__":
    sys.exit(main(sys.modules[__name__]))
