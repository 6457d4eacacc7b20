"""Inter-domain multicast in the simulator: domains with routers, sites and receivers.

Five domains: a ring 64501-64502-64503-64504 and a stub 64505 behind 64503. Each domain has a
border router with a co-located site and receiver hosts; the sender is in 64501. Link counters
on the inter-domain links show the tree: one copy per tree link per packet, none elsewhere (so
none back upstream).
"""

from __future__ import annotations

import functools
from collections import Counter

from examples.multicast.scenario import build_world, copies
from pcsite_lite.sim import Network


def test_receivers_in_three_domains_get_one_copy_and_links_carry_only_the_tree() -> None:
    net, psp, links, hosts, logs = build_world()
    members = ["198.18.2.11", "198.18.4.11", "198.18.4.12", "198.18.5.11"]
    for ip in members:
        psp.join(64500 + int(ip.split(".")[2]), 1, ip)
    sender = hosts["198.18.1.11"]
    n = 20
    for i in range(n):
        pkt = psp.sender_packet(64501, 1, src=sender.ip, payload=b"seq%03d" % i)
        net.schedule(i * 0.001, functools.partial(sender.send, pkt))
    net.run()
    for i in range(n):
        assert copies(hosts, b"seq%03d" % i) == Counter({m: 1 for m in members})
    # the tree from 64501: 64502 (member), 64504 (member), 64503 (on the way to 64505), 64505
    used = {k: v.sent for k, v in links.items() if v.sent}
    assert used == {(64501, 64502): n, (64504, 64501): n, (64502, 64503): n, (64503, 64505): n}
    assert links[64503, 64504].sent == 0  # the ring's far link: no duplicate, nothing upstream
    assert sum("group=1" in line for line in logs) == 1  # one tree computation for 20 packets
    assert not any(node_drops for node_drops in _site_drops(net))


def _site_drops(net: Network) -> list[list[object]]:
    return [
        list(getattr(node, "drops", [])) for node in net.nodes.values() if hasattr(node, "site")
    ]


def test_join_and_leave_take_effect_on_the_next_packet_in_the_network() -> None:
    net, psp, links, hosts, _ = build_world()
    psp.join(64502, 5, "198.18.2.11")
    psp.join(64503, 5, "198.18.3.11")
    psp.join(64505, 5, "198.18.5.12")
    sender = hosts["198.18.1.12"]
    sender.send(psp.sender_packet(64501, 5, src=sender.ip, payload=b"before"))
    net.run()
    assert set(copies(hosts, b"before")) == {"198.18.2.11", "198.18.3.11", "198.18.5.12"}
    psp.leave(64505, 5, "198.18.5.12")
    psp.join(64504, 5, "198.18.4.12")
    before = {k: v.sent for k, v in links.items()}
    sender.send(psp.sender_packet(64501, 5, src=sender.ip, payload=b"after"))
    net.run()
    assert copies(hosts, b"after") == Counter(
        {"198.18.2.11": 1, "198.18.3.11": 1, "198.18.4.12": 1}
    )
    delta = {k: v.sent - before[k] for k, v in links.items() if v.sent - before[k]}
    assert (64503, 64505) not in delta  # the stub left: no copy goes there any more
    assert delta[64504, 64501] == 1
