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

from benchmarks.native_fuzz import (
    FIS,
    IN_KEY,
    OTHER_IP,
    PSP,
    SR,
    Side,
    base_packets,
    compare,
    fuzz_batches,
    packet,
)
from pcsite_lite import native
from pcsock import wire

pytestmark = pytest.mark.skipif(native._switch is None, reason=native._WHY_NOT)

#: the reference pipelines: the pure-Python path, and the C accelerator's when it is built
REFS = [False, True] if wire.accelerator() is not None else [False]


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
    compare(a, b, batches)
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
        compare(a, b, [(pk, 1.0 + k)])
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
        compare(a, b, [(pk, 1.0), (pk, 2.0)])
        status = b.state()[2][f"{PSP}/sr"][0]
        assert status == ("active" if mixed else "disabled")


@pytest.mark.parametrize("ref", ["pure", "accel"][: len(REFS)])
def test_mutation_fuzz(ref: str) -> None:
    """10^5 packets (per reference) in batches of 256, half of them mutated (bit flips anywhere,
    truncation, extension, payload flips): outputs, drops and counters stay identical
    (``benchmarks.native_fuzz`` runs the same at 10^6)."""
    a, b = Side(ref), Side("native")
    total = 100_000 if ref == "accel" or len(REFS) == 1 else 50_000
    batches = fuzz_batches(a.labels, total)
    compare(a, b, batches)
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
    compare(a, b, [(pk, 1.0), (pk, 2.0)])
    assert b.native.faults > 0 and b.native.sw.entries == 0
    assert b.calls == a.calls  # every packet took the pipeline
    assert any(e.kind == "internal_error" and "mirror bug" in e.detail
               for e in b.site.runtime.events)  # fmt: skip


def test_fis_updates_re_resolve_only_the_decisions_they_change() -> None:
    a, b = Side("pure"), Side("native")
    assert b.native is not None
    sr, second = a.labels["sr"], a.labels["sr_second"]
    pk = [packet(sr), packet(second), packet(a.labels["noop"])] * 10
    compare(a, b, [(pk, 1.0), (pk, 1.5)])
    clears, calls = b.native.clears, b.calls
    for side in (a, b):  # another key of the same namespace
        side.site.fis.put(f"{PSP}/sr", "unrelated", {"x": 1}, writer=PSP)
    compare(a, b, [(pk, 2.0)])
    assert (b.native.clears, b.calls) == (clears, calls)  # nothing re-learned, all native
    for side in (a, b):  # sr_second's route moves to its first out hop
        side.site.fis.put(f"{PSP}/sr_second", str(second), FIS["sr"], writer=PSP)
    out = b.batch(pk, 3.0)
    assert out == a.batch(pk, 3.0)
    assert b.native.relearned == 1 and b.native.clears == clears and b.calls == calls
    assert b.state() == a.state()
