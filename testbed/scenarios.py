"""Connectivity and attachment scenarios with real packets (``testbed demo`` and the tests).

Each scenario sends packets between namespaces and reports what arrived where; none of them
needs PacketCloud code. A site without a daemon is turned into a plain forwarder
(:func:`site_forwarding`) so that diverted packets come back out of it — which is what shows
the routers' loop prevention: every packet reaches the destination exactly once.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass

from testbed.net import Node, Testbed

__all__ = [
    "Outcome",
    "SiteCounter",
    "dns_lookup",
    "form2_diversion",
    "form3_diversion",
    "ping_all",
    "run_all",
    "site_forwarding",
    "udp_exchange",
]

TOS_SERVICE = 0xAC  # DSCP 43 (pcsock.wire.TOS_SERVICE)
SO_RCVBUFFORCE = 33  # linux/socket.h (not exported by Python 3.11)


@dataclass
class Outcome:
    name: str
    ok: bool
    detail: str


def ping_all(tb: Testbed) -> Outcome:
    """Every host pings every node's data address (and every site's public IP) once."""
    targets = sorted({n.address for n in tb.nodes.values() if n.address})
    failures = []
    for host in (n for n in tb.nodes.values() if n.kind == "host"):
        script = " ".join(
            f"ping -c1 -W2 -q {a} >/dev/null 2>&1 || echo {a};"
            for a in targets
            if a != host.address
        )
        out = host.run(script, timeout=60)
        failures += [f"{host.name}->{a}" for a in out.stdout.split()]
    return Outcome(
        "ping between all hosts and nodes",
        not failures,
        f"{len(targets)} targets; unreachable: {failures or 'none'}",
    )


def udp_receiver(node: Node, port: int) -> socket.socket:
    """A UDP socket bound in ``node``'s namespace."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # room for a whole burst: udp_exchange sends everything before reading
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        s.bind(("0.0.0.0", port))
        s.settimeout(0.3)
        return s

    return node.call(make)


def udp_sender(node: Node, tos: int = 0) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if tos:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        return s

    return node.call(make)


def drain(sock: socket.socket, want: int, timeout: float = 2.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        try:
            got.append(sock.recv(65535))
        except TimeoutError:
            continue
    # late duplicates would show a loop: listen a little longer
    sock.settimeout(0.2)
    try:
        while True:
            got.append(sock.recv(65535))
    except TimeoutError:
        pass
    return got


def udp_exchange(
    tb: Testbed, src: str, dst: str, n: int = 20, tos: int = 0, port: int = 5555
) -> int:
    """Send ``n`` UDP datagrams ``src`` -> ``dst``; return how many arrived."""
    rx = udp_receiver(tb.node(dst), port)
    tx = udp_sender(tb.node(src), tos)
    addr = tb.node(dst).address
    assert addr
    try:
        for i in range(n):
            tx.sendto(f"pct {i}".encode(), (addr, port))
        return len(drain(rx, n))
    finally:
        rx.close()
        tx.close()


class SiteCounter:
    """An nftables counter in a site's namespace: UDP packets to ``port`` arriving there."""

    def __init__(self, node: Node, port: int) -> None:
        self.node = node
        node.run(
            ["nft", "-f", "-"],
            check=True,
            input=f"""\
table ip pctcount {{
    chain pre {{
        type filter hook prerouting priority -300; policy accept;
        udp dport {port} counter
    }}
}}
""",
        )

    def packets(self) -> int:
        out = self.node.run(["nft", "-j", "list", "table", "ip", "pctcount"], check=True)
        for item in json.loads(out.stdout)["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
        return 0

    def remove(self) -> None:
        self.node.run(["nft", "delete", "table", "ip", "pctcount"])


def site_forwarding(tb: Testbed, site: str, on: bool = True) -> None:
    """Let a daemon-less site forward what it receives (stands in for a site daemon)."""
    tb.node(site).run(["sysctl", "-qw", f"net.ipv4.ip_forward={int(on)}"], check=True)


def form2_diversion(tb: Testbed, src: str, dst: str, site: str, n: int = 20) -> Outcome:
    """DSCP-43 packets go through ``site`` once; unflagged packets do not."""
    counter = SiteCounter(tb.node(site), 5601)
    # every site on the path diverts flagged packets (a network-wide service): all forward
    sites = [s.name for s in tb.topo.of_kind("site")]
    for name in sites:
        site_forwarding(tb, name)
    try:
        plain = udp_exchange(tb, src, dst, n, tos=0, port=5601)
        after_plain = counter.packets()
        flagged = udp_exchange(tb, src, dst, n, tos=TOS_SERVICE, port=5601)
        after_flagged = counter.packets() - after_plain
    finally:
        for name in sites:
            site_forwarding(tb, name, False)
        counter.remove()
    ok = plain == n and after_plain == 0 and flagged == n and after_flagged == n
    return Outcome(
        f"form 2: DSCP 43 diverted through {site}",
        ok,
        f"unflagged: {plain}/{n} delivered, {after_plain} seen at {site}; "
        f"flagged: {flagged}/{n} delivered (no duplicates), {after_flagged} seen at {site}",
    )


def form3_diversion(
    tb: Testbed, src: str, dst: str, router: str, site: str, n: int = 20
) -> Outcome:
    """Traffic to a registered prefix goes through ``site`` once, only while registered."""
    prefix = next(str(lp.subnet) for lp in tb.plan.links if dst in (lp.spec.a, lp.spec.b))
    counter = SiteCounter(tb.node(site), 5602)
    site_forwarding(tb, site)
    try:
        tb.divert(router, prefix)
        diverted = udp_exchange(tb, src, dst, n, port=5602)
        seen = counter.packets()
        tb.divert(router, prefix, remove=True)
        plain = udp_exchange(tb, src, dst, n, port=5602)
        seen_after = counter.packets() - seen
    finally:
        site_forwarding(tb, site, False)
        counter.remove()
    ok = diverted == n and seen == n and plain == n and seen_after == 0
    return Outcome(
        f"form 3: {prefix} diverted at {router} through {site}",
        ok,
        f"registered: {diverted}/{n} delivered (no duplicates), {seen} seen at {site}; "
        f"removed: {plain}/{n} delivered, {seen_after} seen at {site}",
    )


def dns_lookup(tb: Testbed, host: str) -> Outcome:
    """A host resolves a site's A record from the testbed's knot server."""
    if tb.dns is None:
        return Outcome("DNS", False, "the topology has no dns node")
    site = next((s.name for s in tb.topo.of_kind("site")), None)
    if site is None:
        return Outcome("DNS", False, "no site to look up")
    zone = next(s.zone for s in tb.topo.of_kind("dns"))
    ans = tb.dns.query(f"{site.lower()}.sites.{zone}", "A", node=tb.node(host))
    got = [r.address for rr in ans.answer for r in rr]
    want = tb.site(site).public_ip
    return Outcome(f"DNS from {host}", got == [want], f"{site.lower()}.sites.{zone} -> {got}")


def run_all(tb: Testbed) -> list[Outcome]:
    """Every scenario the topology supports."""
    out = [ping_all(tb)]
    hosts = [n.name for n in tb.nodes.values() if n.kind == "host"]
    sites = tb.topo.of_kind("site")
    if len(hosts) >= 2 and sites:
        src, dst = hosts[0], hosts[-1]
        # the site co-located with the sender's router
        first_router = tb.topo.neighbours(src)[0]
        site = next((s for s in sites if s.router == first_router), None)
        if site is not None:
            out.append(form2_diversion(tb, src, dst, site.name))
            out.append(form3_diversion(tb, src, dst, first_router, site.name))
    if tb.dns is not None and hosts:
        out.append(dns_lookup(tb, hosts[0]))
    return out
