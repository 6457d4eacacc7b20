"""Paper §2.1 end to end: loose source routing S -> C2 -> C3 -> D in the simulator."""

from __future__ import annotations

from pcsite_lite.sim import Host, Received, install_circuit
from pcsock.wire import FORM_CIRCUIT, build_ipv4, int2ip, parse
from tests.support.site_topo import PSP, SRCROUTE, Fig2, make_fig2


def test_packet_follows_the_source_route_and_d_replies_to_the_original_source(
    fig2: Fig2,
) -> None:
    circ = install_circuit([fig2.c2, fig2.c3], fig2.d.ip, psp=PSP, service=SRCROUTE)
    assert circ.first_hop == fig2.c2.ip and circ.labels[0] != circ.labels[1]

    def reply(host: Host, got: Received) -> None:
        # a pcsock receiver answers to the shim's original source, not the IP source (C3)
        if got.packet.form == FORM_CIRCUIT:
            host.send(
                build_ipv4(
                    src=host.ip,
                    dst=int2ip(got.packet.orig_src),
                    proto=17,
                    payload=b"ack:" + got.payload,
                )
            )

    fig2.d.on_receive = reply
    fig2.s.send(circ.packet(fig2.s.ip, b"hello D", metadata=5))
    fig2.net.run()

    [got] = fig2.d.inbox
    assert got.payload == b"hello D"
    pkt = got.packet
    assert pkt.form == FORM_CIRCUIT
    assert int2ip(pkt.src) == fig2.c3.ip  # sent by the last site on the route
    assert int2ip(pkt.orig_src) == fig2.s.ip
    assert pkt.metadata == 5
    assert pkt.hop_limit == 14  # two sites each took one
    # the route went through C2 then C3 and never through C1's pipeline
    events = [(e.node, e.event) for e in fig2.net.trace or () if e.node.startswith("C")]
    assert events == [("C2", "forward"), ("C3", "deliver")]
    # D's answer reached S
    [ack] = fig2.s.inbox
    assert ack.payload == b"ack:hello D" and ack.src == fig2.d.ip
    for c in (fig2.c2, fig2.c3):
        counters = c.site.runtime.counters(PSP, SRCROUTE)
        assert (counters.packets, counters.fis_reads, counters.drops) == (1, 1, 0)
        assert sum(c.site.drops.values()) == 0


def test_legacy_receiver_gets_the_packet_without_shim_from_the_original_source() -> None:
    fig2 = make_fig2()
    circ = install_circuit([fig2.c2, fig2.c3], fig2.d.ip, psp=PSP, service=SRCROUTE, strip=True)
    fig2.s.send(circ.packet(fig2.s.ip, b"legacy"))
    fig2.net.run()
    [got] = fig2.d.inbox
    raw = parse(got.data)
    assert raw.form == 0 and raw.proto == 17  # the shim's next protocol restored
    assert bytes(raw.payload) == b"legacy"
    assert int2ip(raw.src) == fig2.s.ip and int2ip(raw.dst) == fig2.d.ip


def test_each_site_re_macs_so_a_packet_sent_straight_to_c3_with_c2s_key_is_refused() -> None:
    fig2 = make_fig2()
    circ = install_circuit([fig2.c2, fig2.c3], fig2.d.ip, psp=PSP, service=SRCROUTE)
    # a sender that skips C2: right label for C3, but only C2's key
    from pcsock.wire import build_circuit_packet

    bad = build_circuit_packet(
        src=fig2.s.ip, dst=fig2.c3.ip, label=circ.labels[1], key=circ.key, payload=b"x"
    )
    fig2.s.send(bad)
    fig2.net.run()
    assert fig2.d.inbox == []
    assert fig2.c3.site.drops["bad_mac"] == 1


def test_simulation_is_deterministic_with_lossy_links() -> None:
    def run(seed: int) -> list[float]:
        fig2 = make_fig2(seed)
        for link in fig2.net.links:
            link.loss = 0.2
        circ = install_circuit([fig2.c2, fig2.c3], fig2.d.ip, psp=PSP, service=SRCROUTE)
        for i in range(50):
            fig2.net.schedule(
                i * 0.001, lambda i=i: fig2.s.send(circ.packet(fig2.s.ip, bytes([i])))
            )
        fig2.net.run()
        return [r.time for r in fig2.d.inbox]

    a, b = run(7), run(7)
    assert a == b
    assert 0 < len(a) < 50  # some were lost, not all
    assert run(8) != a
