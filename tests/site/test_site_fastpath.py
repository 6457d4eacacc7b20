"""The form-1 fast path of ``Pipeline.process`` against the general path (codec parse,
``verify_mac``, setters): the same verdicts, bytes, drops and counters for every service
decision and every malformed or refused packet."""

from __future__ import annotations

from typing import Any

import pytest

from pcsite_lite.circuits import OutHopEntry
from pcsite_lite.pipeline import Pipeline
from pcsite_lite.services import source
from pcsite_lite.site import Site
from pcsite_lite.verdicts import Drop
from pcsock import wire
from pcsock.wire import HopKey, parse
from tests.support import FakeClock
from tests.support.site_topo import DEST, NEXT_IP, OUT_KEY, PSP, circuit, circuit_packet, one_site

#: the fast path runs on the C accelerator (pcsock._accel) when it is built, and on the
#: pure-Python reference: every test here runs on both
ACCEL = [False, True] if wire.accelerator() is not None else [False]

SERVICES = {
    "noop": source("noop"),
    "srcroute": source("source_routing"),
    "grow": "def process(pkt):\n    pkt.set_payload(pkt.read() + b'-and-more')\n",
    "write": "def process(pkt):\n    pkt.write(0, b'XY')\n",
    "meta": "def process(pkt):\n    pkt.shim.update(metadata=7)\n",
    "drop": "def process(pkt):\n    pkt.drop('no')\n",
    "both": "def process(pkt):\n    pkt.replicate([77, 78])\n",
    "second": "def process(pkt):\n    pkt.shim.update(label=78)\n"
    "    pkt.forward_to('198.18.6.2')\n",
    "spoof": "def process(pkt):\n    try:\n        pkt.shim.update(label=999)\n"
    "    except Exception:\n        pass\n",
    "spoof_src": "def process(pkt):\n    pkt.src = '198.18.0.99'\n",
    "error": "def process(pkt):\n    return 1 // 0\n",
    "loop": "def process(pkt):\n    while True:\n        pass\n",
    "read": "def process(pkt):\n    s = pkt.shim.read()\n"
    "    pkt.log('%d %d %s' % (s.label, s.hop_limit, s.orig_src))\n",
}
TWO_HOPS = [
    OutHopEntry(77, NEXT_IP, OUT_KEY),
    OutHopEntry(78, "198.18.6.2", HopKey(b"other-key-0123456")),
]


def _pipeline(site: Site, verify: bool, accel: bool) -> Pipeline:
    """A pipeline whose CPU clock ticks 100 ns per read (exact, comparable counters)."""
    return Pipeline(site, verify_ip_checksum=verify, cpu_clock=FakeClock(step=100), accel=accel)


def _site() -> tuple[Site, dict[str, int]]:
    site, _, _ = one_site()
    labels = {}
    for name, src in SERVICES.items():
        site.deploy(PSP, name, src)
        out = TWO_HOPS if name in ("both", "second") else None
        labels[name] = circuit(site, name, out=out, destination=None)
        if name == "srcroute":
            site.fis.put(
                f"{PSP}/{name}",
                str(labels[name]),
                {"label": 77, "next_hop": NEXT_IP},
                writer=PSP,
            )
    for name, out in {
        "final_strip": [OutHopEntry(9, DEST, OUT_KEY, final=True, strip=True)],
        "final_keep": [OutHopEntry(9, DEST, None, final=True)],
    }.items():
        site.deploy(PSP, name, source("noop"))
        labels[name] = circuit(site, name, out=out)
    site.deploy(PSP, "dead", "def process(pkt):\n    pass\n")
    labels["dead"] = circuit(site, "dead", destination=None)
    site.runtime.remove(PSP, "dead")
    return site, labels


def _packets(labels: dict[str, int]) -> list[tuple[str, bytes, float]]:
    def pkt(label: int, **kw: Any) -> bytes:
        return bytes(circuit_packet(label, b"0123456789", **kw))

    out = [(name, pkt(label, metadata=3), 1.0) for name, label in labels.items()]
    # the same behaviours in UDP mode (shim after UDP port 6253), which has its own fast path
    out += [
        (f"{name}_udp", pkt(label, metadata=3, udp=True), 1.0) for name, label in labels.items()
    ]
    noop = labels["noop"]
    good = bytearray(pkt(noop))
    bad_csum = bytes(good[:10] + bytes([good[10] ^ 1]) + good[11:])
    out += [
        ("bad_mac", pkt(noop, key=HopKey(b"wrong-key-0123456")), 1.0),
        ("hop_limit_0", pkt(noop, hop_limit=0), 1.0),
        ("hop_limit_1", pkt(noop, hop_limit=1), 1.0),
        ("unknown_label", pkt(12345), 1.0),
        ("expired", pkt(noop), 1000.0),
        ("not_for_site", pkt(noop, dst="198.18.5.2"), 1.0),
        ("bad_ip_checksum", bad_csum, 1.0),
        ("udp_bad_mac", pkt(noop, udp=True, key=HopKey(b"wrong-key-0123456")), 1.0),
        ("udp_other_port", pkt(noop, udp=True, dport=6254), 1.0),
        ("truncated", bytes(good[:30]), 1.0),
    ]
    return out


def _counting(inner: Any, by_data: dict[bytes, str], seen: list[str]) -> Any:
    def counting(data: Any, now: float) -> Any:
        seen.append(by_data[bytes(data)])
        return inner(data, now)

    return counting


@pytest.mark.parametrize("accel", ACCEL)
@pytest.mark.parametrize("verify", [False, True])
def test_fast_path_equals_general_path(verify: bool, accel: bool) -> None:
    results = []
    for general in (False, True):
        site, labels = _site()
        pipe = _pipeline(site, verify, accel)
        packets = _packets(labels)
        run = pipe._general if general else pipe.process
        to_general: list[str] = []
        if not general:
            by_data = {data: name for name, data, _ in packets}
            pipe._general = _counting(pipe._general, by_data, to_general)  # type: ignore[method-assign]
        verdicts = [(name, run(data, now)) for name, data, now in packets]
        if not general:
            # everything else took the fast path
            expected = {"dead", "dead_udp", "not_for_site", "udp_other_port", "truncated"}
            if verify:
                expected.add("bad_ip_checksum")
            assert set(to_general) == expected
        counters = {s.name: s.ctx.counters.as_dict() for s in site.runtime.slots()}
        status = {s.name: (s.status, s.failures) for s in site.runtime.slots()}
        results.append((verdicts, counters, dict(site.drops), status))
    fast, slow = results
    for (name, v_fast), (_, v_slow) in zip(fast[0], slow[0], strict=True):
        assert v_fast == v_slow, name
    assert fast[1:] == slow[1:]
    # the comparison covered real decisions, not only drops
    kinds = {type(v).__name__ for _, vs in fast[0] for v in vs}
    assert kinds == {"Forward", "Deliver", "Drop"}


@pytest.mark.parametrize("accel", ACCEL)
def test_fast_path_output_verifies_and_payload_change_keeps_the_checksum(accel: bool) -> None:
    site, labels = _site()
    pipe = Pipeline(site, accel=accel)
    data = bytes(circuit_packet(labels["grow"], b"abc"))
    [v] = pipe.process(data, 1.0)
    out = parse(v.data)  # verifies the IPv4 header checksum
    assert bytes(out.payload) == b"abc-and-more" and out.verify_mac(OUT_KEY)
    assert out.src == parse(data).dst  # the site's own address


@pytest.mark.parametrize("accel", ACCEL)
def test_a_bytearray_is_processed_in_place_and_a_drop_leaves_it_unchanged(accel: bool) -> None:
    site, labels = _site()
    pipe = Pipeline(site, accel=accel)
    bad = circuit_packet(labels["noop"], b"", key=HopKey(b"wrong-key-0123456"))
    before = bytes(bad)
    [v] = pipe.process(bad, 1.0)
    assert isinstance(v, Drop) and v.reason == "bad_mac" and bytes(bad) == before


@pytest.mark.skipif(len(ACCEL) < 2, reason=f"C accelerator not built: {wire.PURE_REASON}")
@pytest.mark.parametrize("verify", [False, True])
def test_accelerated_and_pure_pipelines_give_the_same_verdicts_drops_and_metering(
    verify: bool,
) -> None:
    """The same packets (every service decision, every refusal, plus bit flips of each) through
    a pipeline on the C accelerator and one on the pure-Python path: identical verdicts (bytes
    included), drop counters, service counters (packets, bytes, CPU with a step clock) and
    service states."""
    results = []
    for accel in (True, False):
        site, labels = _site()
        pipe = _pipeline(site, verify, accel)
        packets = _packets(labels)
        for name, data, now in list(packets):
            for i in range(0, min(len(data), 40)):
                bad = bytearray(data)
                bad[i] ^= 1 << (i % 8)
                packets.append((f"{name}^{i}", bytes(bad), now))
        verdicts = [(name, pipe.process(data, now)) for name, data, now in packets]
        verdicts += [(name, pipe.process(bytearray(data), now)) for name, data, now in packets[:40]]
        counters = {s.name: s.ctx.counters.as_dict() for s in site.runtime.slots()}
        status = {s.name: (s.status, s.failures) for s in site.runtime.slots()}
        results.append((verdicts, counters, dict(site.drops), status))
    fast, pure = results
    assert [v for _, v in fast[0]] == [v for _, v in pure[0]]
    assert fast[1:] == pure[1:]
    kinds = {type(v).__name__ for _, vs in fast[0] for v in vs}
    assert kinds == {"Forward", "Deliver", "Drop"}
    assert len(fast[2]) >= 8  # many different drop reasons were compared
