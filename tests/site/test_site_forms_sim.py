"""Forms 2 and 3 through legacy routers and sites in the simulator (paper §2.2)."""

from __future__ import annotations

from scapy.layers.inet import IP, UDP  # independent dissector for the tunnel check

from pcsock.wire import TOS_SERVICE, build_ipv4, build_service_packet, int2ip, parse
from tests.support.site_topo import Fig2

COUNT_SERVICE = """
def process(pkt):
    pkt.log("served " + pkt.dst)
"""

FIREWALL = """
import struct

def process(pkt):
    if pkt.proto != 17 or pkt.length < 4:
        return pkt.drop("not udp")
    sport, dport = struct.unpack("!HH", pkt.read(0, 4))
    if dport not in (53, 443):
        pkt.drop("port %d closed" % dport)
"""

MOBILITY = """
def process(pkt):
    where = pkt.fetch("care-of")
    if where is not None:
        pkt.encapsulate(where)
"""


def _udp(sport: int, dport: int, body: bytes) -> bytes:
    import struct

    return struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body


def test_form2_is_served_once_by_the_first_site_and_never_diverted_again(fig2: Fig2) -> None:
    lines: list[str] = []
    for c in (fig2.c1, fig2.c2, fig2.c3):
        c.site.runtime.log_sinks = lambda psp, svc: lines.append
        c.site.deploy("acme", "count", COUNT_SERVICE)
        c.site.register_service_id(0x0000AA, "acme", "count")
    data = build_service_packet(
        src=fig2.s.ip, dst=fig2.d.ip, service_id=0xAA, payload=b"hi", metadata=3
    )
    fig2.s.send(data)
    fig2.net.run()
    [got] = fig2.d.inbox
    pkt = got.packet
    assert got.payload == b"hi" and pkt.service_id == 0xAA and pkt.metadata == 3
    assert pkt.tos == 0  # the flag was cleared by the serving site
    assert int2ip(pkt.src) == fig2.s.ip  # forms 2/3 keep the sender's address
    assert pkt.ttl == 64 - 5 - 1  # R1 twice (to and from its site), R2-R4, and the site
    served = [
        c.name
        for c in (fig2.c1, fig2.c2, fig2.c3)
        if c.site.runtime.counters("acme", "count").packets
    ]
    assert served == ["C1"]
    assert lines == ["served 198.18.9.10"]
    diverts = [e for e in fig2.net.trace or () if e.event == "divert"]
    assert [e.node for e in diverts] == ["R1"]


def test_form2_with_unknown_service_id_is_dropped_and_counted(fig2: Fig2) -> None:
    fig2.s.send(build_service_packet(src=fig2.s.ip, dst=fig2.d.ip, service_id=0x123456))
    fig2.net.run()
    assert fig2.d.inbox == []
    assert fig2.c1.site.drops["no_service"] == 1


def test_form3_firewall_runs_at_the_diverting_site_without_a_loop(fig2: Fig2) -> None:
    c3 = fig2.c3.site
    c3.deploy("dnet", "fw", FIREWALL)
    c3.register_destination("198.18.9.0/24", "dnet", "fw")
    fig2.routers[2].divert_prefix("198.18.9.0/24")
    fig2.s.send(build_ipv4(src=fig2.s.ip, dst=fig2.d.ip, proto=17, payload=_udp(1000, 443, b"ok")))
    fig2.s.send(build_ipv4(src=fig2.s.ip, dst=fig2.d.ip, proto=17, payload=_udp(1000, 22, b"no")))
    fig2.net.run()
    assert [bytes(r.packet.payload)[8:] for r in fig2.d.inbox] == [b"ok"]
    counters = c3.runtime.counters("dnet", "fw")
    assert counters.packets == 2 and counters.drops == 1  # each packet served exactly once
    assert c3.drops["service_drop"] == 1
    assert [e.node for e in fig2.net.trace or () if e.event == "divert"] == ["R3", "R3"]


def test_form3_mobility_tunnels_to_the_care_of_address_rfc2003(fig2: Fig2) -> None:
    mobile = fig2.net.host("M", "198.18.7.10")
    fig2.net.link(fig2.routers[3], mobile)
    fig2.net.compute_routes()
    c2 = fig2.c2.site
    c2.deploy("dnet", "mobility", MOBILITY)
    c2.register_destination(
        "198.18.9.0/24", "dnet", "mobility", redirect_prefixes=["198.18.7.0/24"]
    )
    c2.fis.put("dnet/mobility", "care-of", mobile.ip, writer="dnet")
    fig2.routers[1].divert_prefix("198.18.9.0/24")
    inner = build_ipv4(src=fig2.s.ip, dst=fig2.d.ip, proto=17, payload=_udp(5, 6, b"roam"))
    fig2.s.send(inner)
    fig2.net.run()
    assert fig2.d.inbox == []
    [got] = mobile.inbox
    outer = IP(got.data)
    assert outer.proto == 4 and outer.src == fig2.c2.ip and outer.dst == mobile.ip
    assert outer.chksum == IP(bytes(outer)).chksum  # scapy agrees with the header checksum
    tunnelled = outer.payload
    assert isinstance(tunnelled, IP)
    assert tunnelled.src == fig2.s.ip and tunnelled.dst == fig2.d.ip
    assert bytes(tunnelled[UDP].payload) == b"roam"
    # the inner TTL went down once at R1, once at R2 (diverted) and once in the site
    assert tunnelled.ttl == 61


def test_form3_tunnel_outside_the_allowed_prefixes_is_refused(fig2: Fig2) -> None:
    c2 = fig2.c2.site
    c2.deploy("dnet", "mobility", MOBILITY)
    c2.register_destination("198.18.9.0/24", "dnet", "mobility")  # no redirect prefixes
    c2.fis.put("dnet/mobility", "care-of", "198.18.7.10", writer="dnet")
    fig2.routers[1].divert_prefix("198.18.9.0/24")
    fig2.s.send(build_ipv4(src=fig2.s.ip, dst=fig2.d.ip, proto=17, payload=b"x"))
    fig2.net.run()
    assert fig2.d.inbox == [] and c2.drops["spoof_attempt"] == 1


def test_packet_without_any_registration_diverted_by_dscp_is_dropped_not_looped(
    fig2: Fig2,
) -> None:
    # a plain packet that merely carries the DSCP flag: no shim, no registration
    data = build_ipv4(src=fig2.s.ip, dst=fig2.d.ip, proto=17, payload=b"x", tos=TOS_SERVICE)
    fig2.s.send(data)
    fig2.net.run()
    assert fig2.d.inbox == []
    assert fig2.c1.site.drops["no_service"] == 1
    assert parse(data).tos == TOS_SERVICE
