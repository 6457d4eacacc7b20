"""A service can never set the IP source, the shim's original source, or a label/next hop
it does not own; forged labels and bad MACs are dropped and counted (paper §2.4)."""

from __future__ import annotations

import random

import pytest

from pcsite_lite.circuits import OutHopEntry
from pcsite_lite.services import source
from pcsite_lite.sim import install_circuit
from pcsite_lite.verdicts import Deliver, Drop, Forward
from pcsock.wire import (
    HopKey,
    build_circuit_packet,
    build_ipv4,
    build_service_packet,
    int2ip,
    parse,
)
from tests.support.site_topo import (
    DEST,
    IN_KEY,
    NEXT_IP,
    OUT_KEY,
    PSP,
    SENDER,
    SITE_IP,
    SRCROUTE,
    circuit,
    circuit_packet,
    make_fig2,
    one_site,
)

ATTEMPTS = {
    "unowned label": "pkt.shim.update(label=4242)",
    "unowned next hop": "pkt.forward_to('198.19.66.66')",
    "owned label, other next hop": "pkt.shim.update(label=77); pkt.forward_to('198.19.66.66')",
    "original source": "pkt.shim.update(orig_src='198.19.66.66')",
    "hop limit": "pkt.shim.update(hop_limit=255)",
    "ip source": "pkt.src = '198.19.66.66'",
    "ip destination": "pkt.dst = '198.19.66.66'",
    "replicate to unowned": "pkt.replicate(['198.19.66.66'])",
    "tunnel from a circuit": "pkt.encapsulate('198.19.66.66')",
}


@pytest.mark.parametrize("attempt", list(ATTEMPTS))
def test_refused_even_when_the_service_catches_the_error(attempt: str) -> None:
    src = f"""
def process(pkt):
    try:
        {ATTEMPTS[attempt]}
    except Exception:
        pass
"""
    site, pipe, _ = one_site()
    site.deploy("evil", "x", src)
    label = circuit(site, "x", psp="evil")
    [v] = pipe.process(circuit_packet(label), 1.0)
    assert isinstance(v, Drop) and v.reason == "spoof_attempt" and v.service == "evil/x"
    assert site.drops == {"spoof_attempt": 1}
    assert site.runtime.events[-1].kind == "spoof_attempt"


def test_uncaught_refusal_is_also_a_spoof_attempt() -> None:
    site, pipe, _ = one_site()
    site.deploy("evil", "x", "def process(pkt):\n    pkt.forward_to('198.19.66.66')\n")
    label = circuit(site, "x", psp="evil")
    [v] = pipe.process(circuit_packet(label), 1.0)
    assert isinstance(v, Drop) and v.reason == "spoof_attempt"


def test_payload_write_cannot_reach_the_headers_and_the_site_sets_source_and_mac() -> None:
    src = """
def process(pkt):
    pkt.write(0, b"XXXX")
    try:
        pkt.write(-20, b"\\x00" * 20)
    except Exception:
        pkt.log("refused")
"""
    site, pipe, lines = one_site()
    site.deploy("p", "w", src)
    label = circuit(site, "w", psp="p")
    [v] = pipe.process(circuit_packet(label, b"data"), 1.0)
    assert isinstance(v, Forward) and lines == ["refused"]
    out = parse(v.data)
    assert bytes(out.payload) == b"XXXX"
    assert int2ip(out.src) == SITE_IP and int2ip(out.orig_src) == SENDER
    assert int2ip(out.dst) == NEXT_IP and out.label == 77
    assert out.verify_mac(OUT_KEY) and not out.verify_mac(IN_KEY)


def test_replacing_the_shim_object_is_refused_and_other_services_are_unaffected() -> None:
    site, pipe, _ = one_site()
    site.deploy("evil", "x", "def process(pkt):\n    pkt.shim = None\n")
    site.deploy("good", "sr", source("source_routing"))
    bad = circuit(site, "x", psp="evil")
    good = circuit(site, "sr", psp="good")
    site.fis.put("good/sr", str(good), {"label": 77, "next_hop": NEXT_IP}, writer="good")
    [v] = pipe.process(circuit_packet(bad), 1.0)
    assert isinstance(v, Drop) and v.reason == "service_error"
    [ok] = pipe.process(circuit_packet(good), 1.0)
    assert isinstance(ok, Forward) and parse(ok.data).label == 77


def test_form2_service_cannot_send_elsewhere() -> None:
    site, pipe, _ = one_site()
    site.deploy("evil", "x", "def process(pkt):\n    pkt.forward_to('198.19.66.66')\n")
    site.register_service_id(7, "evil", "x")
    [v] = pipe.process(build_service_packet(src=SENDER, dst=DEST, service_id=7), 1.0)
    assert isinstance(v, Drop) and v.reason == "spoof_attempt"


def test_service_may_choose_among_its_own_out_hops_and_replicate_to_them() -> None:
    src = """
def process(pkt):
    if pkt.read(0, 1) == b"m":
        pkt.replicate([77, "198.18.6.2"])
    else:
        pkt.shim.update(label=78)
        pkt.forward_to("198.18.6.2")
"""
    site, pipe, _ = one_site()
    site.deploy("p", "mc", src)
    k2 = HopKey(b"second-key-012345")
    label = circuit(
        site,
        "mc",
        psp="p",
        out=[OutHopEntry(77, NEXT_IP, OUT_KEY), OutHopEntry(78, "198.18.6.2", k2)],
    )
    [one] = pipe.process(circuit_packet(label, b"u"), 1.0)
    assert isinstance(one, Forward) and one.next_hop == "198.18.6.2"
    assert parse(one.data).verify_mac(k2) and parse(one.data).label == 78
    copies = pipe.process(circuit_packet(label, b"m"), 1.0)
    assert [(c.next_hop, parse(c.data).label) for c in copies] == [
        (NEXT_IP, 77),
        ("198.18.6.2", 78),
    ]
    assert parse(copies[0].data).verify_mac(OUT_KEY) and parse(copies[1].data).verify_mac(k2)


def test_forged_and_guessed_labels_are_dropped_and_counted() -> None:
    site, pipe, _ = one_site()
    site.deploy(PSP, SRCROUTE, source("source_routing"))
    real = circuit(site, SRCROUTE)
    rng = random.Random(5)
    guesses = [rng.getrandbits(32) for _ in range(500)]
    guesses = [g for g in guesses if g != real]
    for g in guesses:
        [v] = pipe.process(circuit_packet(g, key=HopKey(b"attacker-key-0123")), 1.0)
        assert isinstance(v, Drop) and v.reason == "unknown_label"
    # the right label with a made-up key
    [v] = pipe.process(circuit_packet(real, key=HopKey(b"attacker-key-0123")), 1.0)
    assert isinstance(v, Drop) and v.reason == "bad_mac"
    # the right label and key, but the MAC'd destination was another site
    pkt = circuit_packet(real)
    p = parse(pkt)
    p.set_dst("198.18.5.2")
    p.sign(IN_KEY)
    p.set_dst(SITE_IP)
    [v] = pipe.process(p.buf, 1.0)
    assert isinstance(v, Drop) and v.reason == "bad_mac"
    assert site.drops == {"unknown_label": len(guesses), "bad_mac": 2}
    assert site.runtime.counters(PSP, SRCROUTE).packets == 0  # the service never ran


def test_labels_are_random_unique_and_never_zero() -> None:
    site, _, _ = one_site()
    labels = [site.circuits.allocate("p", now=0.0) for _ in range(2000)]
    assert 0 not in labels and len(set(labels)) == len(labels)
    assert max(labels) > 2**31 // 2  # spread over 32 bits, not a counter
    zeros = iter([0, 0, 5])
    from pcsite_lite.circuits import CircuitTable

    t = CircuitTable(randbits=lambda n: next(zeros))
    assert t.allocate("p", now=0.0) == 5


def test_expired_circuit_is_dropped() -> None:
    site, pipe, _ = one_site()
    site.deploy(PSP, SRCROUTE, source("noop"))
    label = circuit(site, SRCROUTE, expires=10.0)
    [ok] = pipe.process(circuit_packet(label), 9.0)
    [v] = pipe.process(circuit_packet(label), 10.0)
    assert isinstance(ok, Forward) and isinstance(v, Drop) and v.reason == "circuit_expired"


def test_circuit_packet_for_another_address_is_dropped() -> None:
    _site, pipe, _ = one_site()
    pkt = parse(circuit_packet(1))
    pkt.set_dst("198.18.5.99")
    [v] = pipe.process(pkt.buf, 1.0)
    assert isinstance(v, Drop) and v.reason == "not_for_site"


def test_hop_limit_kills_a_circuit_loop_between_two_sites() -> None:
    fig2 = make_fig2()
    c2, c3 = fig2.c2.site, fig2.c3.site
    for c in (c2, c3):
        c.deploy(PSP, "noop", source("noop"))
    l2, l3 = c2.circuits.allocate(PSP, now=0), c3.circuits.allocate(PSP, now=0)
    k2, k3 = HopKey(b"k2" * 8), HopKey(b"k3" * 8)
    # a misconfigured PSP: C2 -> C3 -> C2 -> ...
    for site, label, key, nxt, out_label, out_key in ((c2, l2, k2, c3, l3, k3),
                                                      (c3, l3, k3, c2, l2, k2)):  # fmt: skip
        hop = OutHopEntry(out_label, nxt.public_ip, out_key)
        site.circuits.install(
            label, psp=PSP, service="noop", in_key=key, out_hops=[hop], expires=1e9
        )
    fig2.s.send(build_circuit_packet(src=fig2.s.ip, dst=c2.public_ip, label=l2, key=k2))
    fig2.net.run()
    forwards = [e for e in fig2.net.trace or () if e.event == "forward"]
    assert len(forwards) == 16
    assert c2.drops["hop_limit_exceeded"] + c3.drops["hop_limit_exceeded"] == 1
    assert fig2.d.inbox == []


def test_end_to_end_circuit_source_is_the_last_site_not_the_sender() -> None:
    fig2 = make_fig2()
    circ = install_circuit([fig2.c2], fig2.d.ip, psp=PSP, service=SRCROUTE)
    fig2.s.send(circ.packet(fig2.s.ip, b"x"))
    fig2.net.run()
    [got] = fig2.d.inbox
    assert int2ip(got.packet.src) == fig2.c2.ip


def test_plain_packet_to_the_site_without_registration_is_dropped() -> None:
    _site, pipe, _ = one_site()
    [v] = pipe.process(build_ipv4(src=SENDER, dst=SITE_IP, proto=17, payload=b"x"), 1.0)
    assert isinstance(v, Drop) and v.reason == "no_service"
    assert not isinstance(v, Deliver)
