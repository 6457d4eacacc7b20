"""The Packet API pieces added for the examples (per-target ``replicate`` payloads,
``ed25519_verify``, ``site_id``/``node_id``) do the same in a confined process -- one round
trip or batched -- as in the worker (the trusted lane)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pcsite_lite.circuits import OutHopEntry
from pcsite_lite.confine import ConfinedService, IsolationPolicy, Prefetcher
from pcsite_lite.pipeline import Pipeline
from pcsite_lite.site import Site
from pcsite_lite.verdicts import Drop, Forward
from pcsock.wire import HopKey, build_circuit_packet, parse
from tests.isolation.test_confinement import _answer, _played

SITE_IP = "198.18.9.1"
KEY = bytes(range(16))
HOPS = ("198.18.6.1", "198.18.6.2")
SIGNER = Ed25519PrivateKey.generate()
PUB = SIGNER.public_key().public_bytes_raw()
SIG = SIGNER.sign(b"rule")
EXTRAS = f"""
def process(pkt):
    ok = pkt.ed25519_verify({PUB!r}, {SIG!r}, b"rule")
    bad = pkt.ed25519_verify({PUB!r}, {SIG!r}, b"rulf")
    tag = (pkt.site_id + "|" + pkt.node_id + "|" + str(ok) + str(bad)).encode()
    pkt.replicate([7, 8], [tag + b":" + pkt.read(), None])
"""

_SITES: list[Site] = []


@pytest.fixture(autouse=True)
def _close_sites() -> Iterator[None]:
    yield
    while _SITES:
        _SITES.pop().runtime.close()


def test_the_new_calls_do_the_same_in_every_lane() -> None:
    confined = IsolationPolicy(deadline_ms=2000)
    outs = []
    for isolation, batched in ((None, False), (confined, False), (confined, True)):
        site = Site("c9", SITE_IP, isolation=isolation, node_id="n1/0")
        _SITES.append(site)
        slot = site.deploy("p", "x", EXTRAS)
        if isolation is not None:
            assert isinstance(slot.process, ConfinedService) and slot.process.wait_ready(20)
        label = site.circuits.allocate("p", now=0.0)
        hops = [OutHopEntry(label=7 + i, next_hop=h, key=HopKey(KEY)) for i, h in enumerate(HOPS)]
        site.circuits.install(label, psp="p", service="x", in_key=KEY, out_hops=hops,
                              expires=1e12)  # fmt: skip
        data = bytes(build_circuit_packet(src="198.18.5.1", dst=SITE_IP, label=label,
                                          key=HopKey(KEY), payload=b"hello"))  # fmt: skip
        if batched:
            assert Prefetcher(site)([data], 2.0) == 1
        out = Pipeline(site).process(data, 2.0)
        if batched:
            assert isinstance(slot.process, ConfinedService) and slot.process.batch_hits == 1
        assert all(isinstance(v, Forward) for v in out), out
        assert site.runtime.counters("p", "x").bytes_out == sum(len(v.data) for v in out)
        outs.append(out)
    assert outs[0] == outs[1] == outs[2]
    payloads = [bytes(parse(v.data).payload) for v in outs[0]]
    assert payloads == [b"c9|n1/0|TrueFalse:hello", b"hello"]


@pytest.mark.parametrize(
    "payloads",
    [
        b'["%%%"]',  # not base64
        b"[1]",  # not bytes
        b'"YQ=="',  # not a list
        b'["YQ==","Yg=="]',  # two payloads for one target
    ],
)
def test_garbled_replica_payloads_from_a_confined_process_are_refused(payloads: bytes) -> None:
    # we play the confined process: the circuit's one out hop (label 7), a bad payload list
    acts = b'[[["rep",[7],' + payloads + b"]]]"
    site, v, theirs = _played(_answer([(1, 0, 0, 0)], acts))
    _SITES.append(site)
    assert isinstance(v, Drop) and v.reason == "api_misuse", v
    assert site.runtime.counters("p", "s").bytes_out == 0
    theirs.close()


def test_well_formed_replica_payloads_from_a_confined_process_go_out() -> None:
    site, v, theirs = _played(_answer([(1, 0, 0, 0)], b'[[["rep",[7],["YWJj"]]]]'))
    _SITES.append(site)
    assert isinstance(v, Forward) and bytes(parse(v.data).payload) == b"abc"
    theirs.close()


def test_a_batch_answer_past_its_bound_fails_only_the_packets_beyond_it() -> None:
    # 40 000-byte copies travel as ~53 KB of base64 each: three fit one answer, the fourth not
    big = "def process(pkt):\n    pkt.replicate([7], [bytes(40000)])\n"
    site = Site("c9", SITE_IP, isolation=IsolationPolicy(deadline_ms=2000))
    _SITES.append(site)
    slot = site.deploy("p", "x", big)
    assert isinstance(slot.process, ConfinedService) and slot.process.wait_ready(20)
    label = site.circuits.allocate("p", now=0.0)
    hop = OutHopEntry(label=7, next_hop=HOPS[0], key=HopKey(KEY))
    site.circuits.install(label, psp="p", service="x", in_key=KEY, out_hops=[hop], expires=1e12)
    packets = [
        bytes(build_circuit_packet(src="198.18.5.1", dst=SITE_IP, label=label, key=HopKey(KEY),
                                   payload=bytes([i])))
        for i in range(4)
    ]  # fmt: skip
    assert Prefetcher(site)(packets, 2.0) == 4
    pipe = Pipeline(site)
    out = [pipe.process(p, 2.0) for p in packets]
    assert slot.process.batch_hits == 4  # all four answered in the one message
    assert [type(v) for [v] in out] == [Forward, Forward, Forward, Drop]
    assert len(parse(out[0][0].data).payload) == 40000  # type: ignore[union-attr]
    assert "too large" in out[3][0].detail  # type: ignore[union-attr]
