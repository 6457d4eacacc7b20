"""Packet API pieces the examples asked for: per-target payloads in ``replicate``, the
Ed25519 verify building block and the node identity (``site_id``/``node_id``)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from scapy.layers.inet import IP

from pcsite_lite.circuits import OutHopEntry
from pcsite_lite.sandbox import tick_budget
from pcsite_lite.sim import ServiceBench
from pcsite_lite.verdicts import Drop
from pcsock.wire import HopKey, build_service_packet, parse
from tests.support.site_topo import (
    DEST,
    NEXT_IP,
    OUT_KEY,
    PSP,
    SENDER,
    circuit,
    circuit_packet,
    one_site,
)

OTHER_IP = "198.18.6.2"
OTHER_KEY = HopKey(b"other-key-0123456")
SIGNER = Ed25519PrivateKey.generate()
PUB = SIGNER.public_key().public_bytes_raw()
SIG = SIGNER.sign(b"rule 7")


def _two_hops(src: str, **site_kw):
    site, pipe, lines = one_site(**site_kw)
    site.deploy(PSP, "s", src)
    label = circuit(
        site, "s", out=[OutHopEntry(77, NEXT_IP, OUT_KEY), OutHopEntry(78, OTHER_IP, OTHER_KEY)]
    )
    return site, pipe, lines, label


# ---- replicate with a payload per target ----------------------------------------------------
def test_form1_copies_carry_their_own_payloads_are_well_formed_and_metered() -> None:
    src = "def process(pkt):\n    pkt.replicate([77, 78], [b'to-77:' + pkt.read(), None])\n"
    site, pipe, _, label = _two_hops(src)
    out = pipe.process(circuit_packet(label, b"body"), 1.0)
    assert [v.next_hop for v in out] == [NEXT_IP, OTHER_IP]
    first, second = (parse(v.data) for v in out)  # IP checksums
    assert bytes(first.payload) == b"to-77:body" and bytes(second.payload) == b"body"
    assert first.label == 77 and first.verify_mac(OUT_KEY)
    assert second.label == 78 and second.verify_mac(OTHER_KEY)
    assert IP(out[0].data).len == len(out[0].data)
    c = site.runtime.counters(PSP, "s")
    assert c.bytes_out == sum(len(v.data) for v in out) == 2 * len(out[1].data) + 6


def test_form2_tunnel_copies_carry_their_own_inner_payloads() -> None:
    site, pipe, _ = one_site()
    site.deploy(
        PSP,
        "s",
        "def process(pkt):\n    pkt.replicate(['198.18.7.1', '198.18.7.2'], [None, b'short'])\n",
    )
    site.register_service_id(9, PSP, "s", redirect_prefixes=["198.18.7.0/24"])
    data = build_service_packet(src=SENDER, dst=DEST, service_id=9, payload=b"original")
    out = pipe.process(data, 1.0)
    assert [v.next_hop for v in out] == ["198.18.7.1", "198.18.7.2"]
    inner = [parse(bytes(IP(v.data).payload)) for v in out]
    assert [bytes(p.payload) for p in inner] == [b"original", b"short"]
    assert all(p.service_id == 9 and p.verify_check() and p.ttl == 63 for p in inner)
    assert site.runtime.counters(PSP, "s").bytes_out == sum(len(v.data) for v in out)


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        ("pkt.replicate([77, 78], [b'a'])", "api_misuse"),  # one payload for two targets
        ("pkt.replicate([77, 78], b'ab')", "api_misuse"),  # not a list
        ("pkt.replicate([77, 78], [b'a', 'text'])", "api_misuse"),  # not bytes
        ("pkt.replicate([77, 78], [b'a' * 40000, b'b' * 40000])", "api_misuse"),  # > 64 KiB
        ("pkt.replicate([77, 79], [b'a', b'b'])", "spoof_attempt"),  # still anti-spoof checked
        ("pkt.replicate([77, 77], [b'a', b'b'])", "api_misuse"),  # the same target twice
    ],
)
def test_per_target_payloads_are_checked(call: str, reason: str) -> None:
    site, pipe, _, label = _two_hops(f"def process(pkt):\n    {call}\n")
    [v] = pipe.process(circuit_packet(label), 1.0)
    assert isinstance(v, Drop) and v.reason == reason, v
    assert site.runtime.counters(PSP, "s").bytes_out == 0


def test_per_target_payload_copies_count_against_the_rate_cap() -> None:
    src = "def process(pkt):\n    pkt.replicate([77, 78], [b'x', b'y'])\n"
    _, pipe, _, label = _two_hops(src, replicate_caps=(16, 3))
    assert len(pipe.process(circuit_packet(label), 5.0)) == 2
    [v] = pipe.process(circuit_packet(label), 5.0)  # 1 token left, 2 copies asked
    assert isinstance(v, Drop) and "per second" in v.detail


# ---- ed25519_verify ---------------------------------------------------------------------------
def test_ed25519_verify_answers_true_only_for_the_signed_message() -> None:
    src = f"""
def process(pkt):
    pkt.log(repr([pkt.ed25519_verify({PUB!r}, {SIG!r}, pkt.read()),
                  pkt.ed25519_verify({PUB!r}, {SIG!r}, b"rule 8"),
                  pkt.ed25519_verify(b"\\xff" * 32, {SIG!r}, pkt.read()),
                  pkt.ed25519_verify(bytearray({PUB!r}), bytes(64), pkt.read())]))
"""
    _, pipe, lines, label = _two_hops(src)
    pipe.process(circuit_packet(label, b"rule 7"), 1.0)
    assert lines == ["[True, False, False, False]"]


@pytest.mark.parametrize(
    "args",
    [
        f"{PUB[:31]!r}, {SIG!r}, b''",  # short key
        f"{PUB!r}, {SIG[:63]!r}, b''",  # short signature
        f"{PUB!r}, {SIG!r}, 'text'",  # not bytes
        f"{PUB!r}, {SIG!r}, b'x' * 65536",  # longer than any packet
    ],
)
def test_ed25519_verify_refuses_bad_arguments(args: str) -> None:
    _, pipe, _, label = _two_hops(f"def process(pkt):\n    pkt.ed25519_verify({args})\n")
    [v] = pipe.process(circuit_packet(label), 1.0)
    assert isinstance(v, Drop) and v.reason == "api_misuse"


def test_ed25519_verify_is_charged_to_the_per_packet_budget() -> None:
    def run(n: int) -> Drop:
        src = (
            f"def process(pkt):\n    for _ in range({n}):\n"
            f"        pkt.ed25519_verify({PUB!r}, {SIG!r}, b'rule 7')\n    pkt.drop('done')\n"
        )
        _, pipe, _, label = _two_hops(src, budget=tick_budget())  # 100 000 ticks
        [v] = pipe.process(circuit_packet(label), 1.0)
        assert isinstance(v, Drop)
        return v

    assert run(50).reason == "service_drop"
    assert run(120).reason == "service_timeout"  # 1000 ticks each: out at the 100th


# ---- node identity ------------------------------------------------------------------------------
IDENTITY = "def process(pkt):\n    pkt.set_payload((pkt.site_id + ' ' + pkt.node_id).encode())\n"


def test_a_service_learns_its_site_and_node() -> None:
    site, pipe, _ = one_site(node_id="n2/1")
    site.deploy(PSP, "s", IDENTITY)
    [v] = pipe.process(circuit_packet(circuit(site, "s")), 1.0)
    assert bytes(parse(v.data).payload) == b"c n2/1"
    bench = ServiceBench(IDENTITY)  # the simulator: the site's name, node "0"
    [out] = bench.send(b"", form=1)
    assert out.split()[1] == b"0" and out.split()[0].decode() == bench.site.name


def test_daemon_workers_have_distinct_node_ids() -> None:
    from types import SimpleNamespace

    from pcsite_lite.daemon.state import node_id

    one = SimpleNamespace(cluster=None)
    node = SimpleNamespace(cluster=SimpleNamespace(node="n3"))
    assert [node_id(one, i) for i in (0, 1)] == ["0", "1"]
    assert [node_id(node, i) for i in (0, 1)] == ["n3/0", "n3/1"]
