"""The multicast service running in real sites (pipeline, sandbox, Packet API, FIS, circuits)."""

from __future__ import annotations

from collections import Counter

import pytest

from examples.multicast.control import MulticastPSP, receive_payload
from examples.multicast.netwalk import GRAPH, NetWalk
from pcdemo.example_testbed import SimSite

ADJ = GRAPH  #: a ring of four with stubs (:data:`examples.multicast.netwalk.GRAPH`)
SENDER = "198.18.1.100"


def _setup() -> tuple[NetWalk, MulticastPSP, list[str]]:
    net = NetWalk()
    logs: list[str] = []
    handles = {}
    for a in ADJ:
        site = net.add_site(
            f"as{a}", f"198.18.{a - 64500}.1", log_sinks=lambda psp, svc: logs.append
        )
        handles[a] = SimSite(site, "mcpsp")
    psp = MulticastPSP(ADJ, handles)
    psp.deploy()
    return net, psp, logs


def _send(net: NetWalk, psp: MulticastPSP, group: int, data: bytes, asn: int = 64501) -> None:
    pkt = psp.sender_packet(asn, group, src=SENDER, payload=data)
    net.send(SENDER, pkt, psp.sites[asn].public_ip)


def _copies(net: NetWalk, data: bytes) -> Counter[str]:
    out: Counter[str] = Counter()
    for host, pkts in net.received.items():
        for p in pkts:
            r = receive_payload(p)
            if r is not None and r[1] == data:
                out[host] += 1
    return out


def test_receivers_in_four_domains_get_exactly_one_copy_each() -> None:
    net, psp, logs = _setup()
    hosts = {
        64505: "198.18.5.10",
        64506: "198.18.6.10",
        64507: "198.18.7.10",
        64504: "198.18.4.10",
    }
    for a, h in hosts.items():
        psp.join(a, 1, h)
    psp.join(64505, 1, "198.18.5.11")
    for i in range(10):
        _send(net, psp, 1, b"frame %d" % i)
        assert _copies(net, b"frame %d" % i) == Counter(
            {h: 1 for h in [*hosts.values(), "198.18.5.11"]}
        )
    assert not net.drops, net.drops
    site_links = {(a, b): n for (a, b), n in net.links.items() if a in net.sites and b in net.sites}
    # 10 packets, each directed inter-site link used at most once per packet, never both ways
    assert all(n == 10 for n in site_links.values())
    assert not any((b, a) in site_links for a, b in site_links)
    # the sender's site never gets a copy back
    assert all(b != psp.sites[64501].public_ip for _, b in site_links)
    # one tree computation for 10 packets
    assert sum("mc tree computed group=1" in line for line in logs) == 1


def test_join_and_leave_apply_to_the_next_packet() -> None:
    net, psp, logs = _setup()
    psp.join(64505, 9, "198.18.5.10")
    psp.join(64507, 9, "198.18.7.10")
    _send(net, psp, 9, b"a", asn=64506)
    assert set(_copies(net, b"a")) == {"198.18.5.10", "198.18.7.10"}
    psp.join(64501, 9, "198.18.1.10")
    psp.leave(64507, 9, "198.18.7.10")
    _send(net, psp, 9, b"b", asn=64506)
    assert _copies(net, b"b") == Counter({"198.18.5.10": 1, "198.18.1.10": 1})
    assert not net.drops, net.drops
    computed = [line for line in logs if "group=9" in line]
    assert len(computed) == 2  # one per table version actually used by a packet


def test_a_forged_group_label_is_dropped_by_the_site() -> None:
    net, psp, _ = _setup()
    psp.join(64505, 1, "198.18.5.10")
    pkt = bytearray(psp.sender_packet(64501, 1, src=SENDER, payload=b"x"))
    pkt[-3] ^= 0xFF  # payload change does not matter; corrupt the label instead
    label_off = 20 + 4
    pkt[label_off] ^= 0x55
    net.send(SENDER, bytes(pkt), psp.sites[64501].public_ip)
    assert not net.received
    assert net.drops and net.drops[0][1].reason in {"unknown_label", "bad_mac"}


@pytest.mark.parametrize("group", [3, 4])
def test_groups_are_independent(group: int) -> None:
    net, psp, _ = _setup()
    psp.join(64507, 3, "198.18.7.30")
    psp.join(64505, 4, "198.18.5.40")
    _send(net, psp, group, b"g")
    want = {3: "198.18.7.30", 4: "198.18.5.40"}[group]
    assert _copies(net, b"g") == Counter({want: 1})


def test_a_sender_cannot_inject_its_own_tree() -> None:
    """A sender that sets the tree bit and an all-ones zFilter is dropped at its first site."""
    from examples.multicast.header import MD_TREE, MulticastHeader
    from pcsock.wire import build_circuit_packet

    net, psp, _ = _setup()
    psp.join(64505, 1, "198.18.5.10")
    forged = MulticastHeader(seed=0, group=1, upstream=64502, zfilter=b"\xff" * 32)
    pkt = build_circuit_packet(
        src=SENDER,
        dst=psp.sites[64501].public_ip,
        label=psp.labels[64501, 1],
        key=psp.keys[64501, 1],
        payload=forged.encode() + b"flood",
        metadata=MD_TREE,
    )
    net.send(SENDER, bytes(pkt), psp.sites[64501].public_ip)
    assert not net.received
    assert [(d.reason, d.detail) for _, d in net.drops] == [("service_drop", "mc_forged_header")]
