"""The multicast example's simulated network (``pcsite_lite.sim``), for tests and the demo.

Five domains: a ring 64501-64502-64503-64504 and a stub 64505 behind 64503. Each domain has a
border router ``R<n>`` with a co-located site ``C<n>`` (``198.18.254.<n>``) and two receiver
hosts ``198.18.<n>.11`` and ``.12``; inter-domain links have 2 ms one-way delay.
"""

from __future__ import annotations

from collections import Counter

from pcdemo.example_testbed import SimSite
from pcsite_lite.sim import Host, Link, Network, Router

from .control import MulticastPSP, receive_payload
from .tree import adjacency_from_links

__all__ = ["AS_LINKS", "DOMAINS", "build_world", "copies"]

DOMAINS = [64501, 64502, 64503, 64504, 64505]
AS_LINKS = [(64501, 64502), (64502, 64503), (64503, 64504), (64504, 64501), (64503, 64505)]


def _n(a: int) -> int:
    return a - 64500


def build_world() -> tuple[
    Network, MulticastPSP, dict[tuple[int, int], Link], dict[str, Host], list[str]
]:
    """(network, PSP with the service deployed, inter-domain links, hosts by address, log)."""
    net = Network(trace=False)
    routers: dict[int, Router] = {}
    handles = {}
    logs: list[str] = []
    hosts: dict[str, Host] = {}
    for a in DOMAINS:
        r = routers[a] = net.router(f"R{_n(a)}", f"198.18.{_n(a)}.1")
        node = net.site(
            f"C{_n(a)}",
            f"198.18.254.{_n(a)}",
            router=r,
            log_sinks=lambda psp, svc: logs.append,
        )
        handles[a] = SimSite(node.site, "mcpsp")
        for i in (1, 2):
            h = net.host(f"H{_n(a)}{i}", f"198.18.{_n(a)}.{10 + i}")
            net.link(h, r, delay=0.0002)
            hosts[h.ip] = h
    links = {}
    for a, b in AS_LINKS:
        links[a, b] = net.link(routers[a], routers[b], delay=0.002)
    net.compute_routes()
    psp = MulticastPSP(adjacency_from_links(AS_LINKS), handles)
    psp.deploy()
    return net, psp, links, hosts, logs


def copies(hosts: dict[str, Host], data: bytes) -> Counter[str]:
    """Copies of the application payload ``data`` each host received."""
    out: Counter[str] = Counter()
    for ip, h in hosts.items():
        for r in h.inbox:
            got = receive_payload(r.data)
            if got is not None and got[1] == data:
                out[ip] += 1
    return out
