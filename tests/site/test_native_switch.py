"""The worker's native switch (``pcsite_lite.native``, C table + C hop) against the pipeline.

The same packets, in the same batches, go through a site whose worker switches natively and
through an identical site where every packet takes ``Pipeline.process`` (on the pure-Python
reference and on the C accelerator): the outputs must be byte-identical and in the same
order, and the drop counters, service counters (all but CPU time) and service states equal.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from site_topo import DEST, IN_KEY, NEXT_IP, OUT_KEY, PSP, SENDER, SITE_IP

from pcsite_lite import native
from pcsite_lite.circuits import OutHop
from pcsite_lite.pipeline import Pipeline
from pcsite_lite.services import source
from pcsite_lite.site import Site
from pcsite_lite.verdicts import Deliver, Forward
from pcsock import wire
from pcsock.wire import HopKey, build_circuit_packet, build_service_packet

pytestmark = pytest.mark.skipif(native._switch is None, reason=native._WHY_NOT)

#: the reference pipelines: the pure-Python path, and the C accelerator's when it is built
REFS = [False, True] if wire.accelerator() is not None else [False]
OTHER_IP = "198.18.6.2"
OTHER_KEY = HopKey(b"other-key-0123456")
SR = source("source_routing")
SERVICES: dict[str, str] = {
    "sr": SR,  # FIS: a good route
    "sr_noroute": SR,  # FIS: nothing -> service_drop
    "sr_spoof": SR,  # FIS: a label the circuit does not own -> spoof_attempt
    "sr_wronghop": SR,  # FIS: an owned label with another next hop -> spoof_attempt
    "sr_garbage": SR,  # FIS: a list -> service_error
    "sr_second": SR,  # FIS: the second of two out hops
    "noop": source("noop"),
    "noop_two": source("noop"),  # two out hops: no_decision
    "plain": "def process(pkt):\n    pass\n",  # not declared native: the pipeline runs it
    "drop": 'NATIVE = "nosuchkernel"\ndef process(pkt):\n    pkt.drop("no")\n',
    "final_keep": source("noop"),
    "final_strip": source("noop"),
}
TWO = [OutHop(77, NEXT_IP, OUT_KEY), OutHop(78, OTHER_IP, OTHER_KEY)]
FIS = {
    "sr": {"label": 77, "next_hop": NEXT_IP},
    "sr_spoof": {"label": 999, "next_hop": NEXT_IP},
    "sr_wronghop": {"label": 77, "next_hop": OTHER_IP},
    "sr_garbage": [1, 2],
    "sr_second": {"label": 78, "next_hop": OTHER_IP},
}


def make_site(max_failures: int = 10) -> tuple[Site, dict[str, int]]:
    rng = random.Random(7)
    site = Site(
        "c",
        SITE_IP,
        randbits=rng.getrandbits,
        local_prefixes=["198.18.6.0/31"],
        max_failures=max_failures,
    )
    labels = {}
    for name, src in SERVICES.items():
        site.deploy(PSP, name, src)
        out = [OutHop(77, NEXT_IP, OUT_KEY)]
        if name in ("sr_second", "noop_two", "sr_wronghop"):
            out = TWO
        elif name == "final_keep":
            out = [OutHop(9, DEST, None, final=True)]
        elif name == "final_strip":
            out = [OutHop(9, DEST, OUT_KEY, final=True, strip=True)]
        label = site.circuits.allocate(PSP, now=0.0)
        site.circuits.install(label, psp=PSP, service=name, in_key=IN_KEY, out_hops=out,
                              destination=None, expires=100.0)  # fmt: skip
        labels[name] = label
        if name in FIS:
            site.fis.put(f"{PSP}/{name}", str(label), FIS[name], writer=PSP)
    # a service ID (form 2) so that not every packet is form 1
    site.register_service_id(4242, PSP, "plain")
    return site, labels


def packet(label: int, payload: bytes = b"0123456789", **kw: Any) -> bytes:
    args: dict[str, Any] = dict(src=SENDER, dst=SITE_IP, label=label, key=IN_KEY,
                                payload=payload, metadata=3)  # fmt: skip
    args.update(kw)
    return bytes(build_circuit_packet(**args))


def base_packets(labels: dict[str, int]) -> list[bytes]:
    out = []
    for label in labels.values():
        out += [packet(label), packet(label, udp=True), packet(label, b"", hop_limit=1)]
    sr = labels["sr"]
    out += [
        packet(sr, key=HopKey(b"wrong-key-0123456")),  # bad_mac
        packet(sr, hop_limit=0),  # hop_limit_exceeded
        packet(12345),  # unknown_label
        packet(sr, dst="198.18.5.2"),  # not_for_site
        packet(sr, udp=True, dport=6254),  # plain UDP to the site: no_service
        packet(sr)[:30],  # truncated
        bytes(build_service_packet(src=SENDER, dst=DEST, service_id=4242, payload=b"s")),
    ]
    return out


class Side:
    """One site and how its packets are processed: natively or by the pipeline alone."""

    def __init__(self, how: str, *, verify: bool = False, max_failures: int = 10) -> None:
        self.site, self.labels = make_site(max_failures)
        accel = how == "accel"
        self.pipe = Pipeline(self.site, verify_ip_checksum=verify,
                             accel=accel if how != "native" else None)  # fmt: skip
        self.native = native.NativeSwitch(self.pipe) if how == "native" else None
        self.calls = 0

    def batch(self, packets: list[bytes], now: float) -> list[bytes]:
        if self.native is not None:
            inner = self.pipe.process

            def counting(data: Any, t: float) -> Any:
                self.calls += 1
                return inner(data, t)

            self.pipe.process = counting  # type: ignore[method-assign]
            try:
                out = self.native.switch(packets, now)
            finally:
                del self.pipe.process
            self.pipe.account()
            return out
        out = []
        for data in packets:
            self.calls += 1
            out += [v.data for v in self.pipe.process(data, now) if type(v) in (Forward, Deliver)]
        self.pipe.account()
        return out

    def state(self) -> tuple[Any, ...]:
        counters = {}
        for s in self.site.runtime.slots():
            c = s.ctx.counters.as_dict()
            c.pop("cpu_ns")
            counters[s.name] = c
        status = {s.name: (s.status, s.failures, s.consecutive_failures)
                  for s in self.site.runtime.slots()}  # fmt: skip
        return dict(self.site.drops), counters, status


def _compare(ref: Side, nat: Side, batches: list[tuple[list[bytes], float]]) -> None:
    for i, (packets, now) in enumerate(batches):
        assert nat.batch(packets, now) == ref.batch(packets, now), f"batch {i}"
    assert nat.state() == ref.state()


@pytest.mark.parametrize("ref", ["pure", "accel"][: len(REFS)])
@pytest.mark.parametrize("verify", [False, True])
def test_native_switch_equals_the_pipeline(ref: str, verify: bool) -> None:
    a, b = Side(ref, verify=verify), Side("native", verify=verify)
    base = base_packets(a.labels)
    rng = random.Random(1)
    batches = []
    for k in range(6):
        pk = base * 3
        rng.shuffle(pk)
        batches.append((pk, 1.0 + k))
    batches.append((base, 500.0))  # every circuit expired
    _compare(a, b, batches)
    drops, counters, _ = b.state()
    # the comparison covered real decisions, natively and not
    assert counters[f"{PSP}/sr"]["packets"] > 0 and counters[f"{PSP}/sr"]["fis_reads"] > 0
    assert counters[f"{PSP}/sr_second"]["bytes_local"] == 0 < counters[f"{PSP}/sr"]["bytes_local"]
    assert {"bad_mac", "unknown_label", "spoof_attempt", "service_drop", "circuit_expired",
            "no_decision", "hop_limit_exceeded"} <= set(drops)  # fmt: skip
    # most packets of natively declared circuits never reached the pipeline
    assert b.calls < a.calls * 0.75
    assert b.native is not None and b.native.learned >= 4


def test_state_changes_reach_the_native_table() -> None:
    a, b = Side("pure"), Side("native")
    sr, noop = a.labels["sr"], a.labels["noop"]
    pk = [packet(sr), packet(noop), packet(sr, udp=True)] * 20
    steps = [
        lambda s: None,
        # the FIS moves the route to the second out hop... of a circuit that has only one:
        # refused from now on
        lambda s: s.site.fis.put(
            f"{PSP}/sr", str(sr), {"label": 78, "next_hop": OTHER_IP}, writer=PSP
        ),
        lambda s: s.site.fis.put(f"{PSP}/sr", str(sr), FIS["sr"], writer=PSP),
        lambda s: s.site.circuits.renew(noop, psp=PSP, expires=3.5),  # expires mid-run
        lambda s: s.site.deploy(PSP, "sr", "def process(pkt):\n    pkt.drop('new')\n"),
        lambda s: s.site.deploy(PSP, "sr", SR),
        lambda s: s.site.circuits.teardown(sr, psp=PSP),
    ]
    for k, step in enumerate(steps):
        for side in (a, b):
            step(side)
            if side.native is not None and k == 3:
                side.native.invalidate()  # what the worker does after every control op
        _compare(a, b, [(pk, 1.0 + k)])
    drops = b.state()[0]
    assert drops["circuit_expired"] > 0 and drops["unknown_label"] > 0
    assert drops["spoof_attempt"] > 0 and drops["service_drop"] > 0


def test_failures_in_a_row_interleave_exactly() -> None:
    """A service that fails on one circuit and succeeds natively on another: the native
    successes reset its failures-in-a-row exactly where the pipeline's would, so it is not
    disabled; the same failures without the successes in between disable it."""
    for mixed in (True, False):
        a, b = Side("pure", max_failures=3), Side("native", max_failures=3)
        for side in (a, b):  # sr_spoof's circuit runs the same service as sr's
            c = side.site.circuits.get(side.labels["sr_spoof"])
            side.site.circuits.install(c.in_label, psp=PSP, service="sr", in_key=IN_KEY,
                                       out_hops=c.out_hops, expires=100.0)  # fmt: skip
            side.site.fis.put(f"{PSP}/sr", str(c.in_label), FIS["sr_spoof"], writer=PSP)
        good, bad = packet(a.labels["sr"]), packet(a.labels["sr_spoof"])
        pk = [good, bad, good, bad, good, bad, good, bad] if mixed else [good, bad, bad, bad, good]
        _compare(a, b, [(pk, 1.0), (pk, 2.0)])
        status = b.state()[2][f"{PSP}/sr"][0]
        assert status == ("active" if mixed else "disabled")


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.randrange(6)
    if op == 0 and len(b) > 1:
        del b[rng.randrange(1, len(b)) :]
    elif op == 1:
        b += rng.randbytes(rng.randrange(1, 8))
    elif op == 2:  # the payload: the MAC does not cover it, so the packet is still switched
        if len(b) > 44:
            b[rng.randrange(44, len(b))] ^= 1 << rng.randrange(8)
    else:
        for _ in range(rng.randrange(1, 3)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


@pytest.mark.parametrize("ref", ["pure", "accel"][: len(REFS)])
def test_mutation_fuzz(ref: str) -> None:
    """10^5 packets (per reference) in batches of 256, half of them mutated (bit flips anywhere,
    truncation, extension, payload flips): outputs, drops and counters stay identical."""
    a, b = Side(ref), Side("native")
    base = base_packets(a.labels)
    good = [packet(a.labels[n], udp=u) for n in ("sr", "sr_second", "noop") for u in (0, 1)]
    rng = random.Random(2026)
    total = 100_000 if ref == "accel" or len(REFS) == 1 else 50_000
    batches = []
    for k in range(total // 256 + 1):
        pk = [rng.choice(good if rng.random() < 0.5 else base) for _ in range(256)]
        pk = [_mutate(rng, d) if rng.random() < 0.5 else d for d in pk]
        batches.append((pk, 1.0 + k * 0.01))
    _compare(a, b, batches)
    assert b.state()[1][f"{PSP}/sr"]["packets"] > total // 16
    assert b.calls < a.calls * 0.8  # the native switch did switch


def test_cpu_is_billed_to_native_packets() -> None:
    b = Side("native")
    pk = [packet(b.labels["sr"])] * 200
    b.batch(pk, 1.0)
    b.batch(pk, 1.0)
    c = b.site.runtime.slot(PSP, "sr").ctx.counters
    assert c.packets == 400 and c.fis_reads == 400 and c.cpu_ns > 0
    # only the first packet took the pipeline (and one more: the FIS cache's first change poll
    # during it empties the table once)
    assert b.calls <= 2


def test_confined_and_undeclared_services_are_never_native() -> None:
    b = Side("native")
    slot = b.site.runtime.slot(PSP, "sr")
    assert native.declared_kernel(slot) == "srcroute"
    assert native.declared_kernel(b.site.runtime.slot(PSP, "plain")) is None
    assert native.declared_kernel(b.site.runtime.slot(PSP, "drop")) is None  # unknown kernel
    slot.ctx.cpu_source = lambda: 0  # what a confined service's slot carries
    assert native.declared_kernel(slot) is None


def test_a_fault_in_the_mirror_leaves_packets_to_the_pipeline() -> None:
    a, b = Side("pure"), Side("native")
    assert b.native is not None

    def broken(*_: Any) -> Any:
        raise RuntimeError("mirror bug")

    b.native._resolve = broken  # type: ignore[method-assign]
    pk = [packet(a.labels["sr"]), packet(a.labels["noop"])] * 10
    _compare(a, b, [(pk, 1.0), (pk, 2.0)])
    assert b.native.faults > 0 and b.native.sw.entries == 0
    assert b.calls == a.calls  # every packet took the pipeline
    assert any(e.kind == "internal_error" and "mirror bug" in e.detail
               for e in b.site.runtime.events)  # fmt: skip


def test_fis_updates_re_resolve_only_the_decisions_they_change() -> None:
    a, b = Side("pure"), Side("native")
    assert b.native is not None
    sr, second = a.labels["sr"], a.labels["sr_second"]
    pk = [packet(sr), packet(second), packet(a.labels["noop"])] * 10
    _compare(a, b, [(pk, 1.0), (pk, 1.5)])
    clears, calls = b.native.clears, b.calls
    for side in (a, b):  # another key of the same namespace
        side.site.fis.put(f"{PSP}/sr", "unrelated", {"x": 1}, writer=PSP)
    _compare(a, b, [(pk, 2.0)])
    assert (b.native.clears, b.calls) == (clears, calls)  # nothing re-learned, all native
    for side in (a, b):  # sr_second's route moves to its first out hop
        side.site.fis.put(f"{PSP}/sr_second", str(second), FIS["sr"], writer=PSP)
    out = b.batch(pk, 3.0)
    assert out == a.batch(pk, 3.0)
    assert b.native.relearned == 1 and b.native.clears == clears and b.calls == calls
    assert b.state() == a.state()
