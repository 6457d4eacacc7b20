"""Differential fuzz of the worker's native switch against the pipeline (issue #14 item 6).

Two identical sites (``make_site``: circuits on the shipped source-routing and no-op services
with good and refused FIS routes, two-hop circuits, final hops keeping and stripping the
shim, an undeclared service, a service ID) receive the same packets in the same batches of 256:
one through the native switch (``pcsite_lite.native``: the C table and hop, the pipeline for
the rest), one through ``Pipeline.process`` alone (the C accelerator's, or with ``--pure`` the
pure-Python reference). Half of the packets are mutated (bit flips anywhere, truncation,
extension, payload flips that keep the MAC valid). After every batch the outputs must be
byte-identical and in the same order; at the end the drop counters, the service counters (all
but CPU time) and the service states must be equal.

Figures: ``native_fuzz_packets``, ``native_fuzz_mismatches`` (batches whose outputs differ,
plus 1 if the final state differs; goal 0), ``native_fuzz_native_share`` (packets the switch
handled without the pipeline). ``tests/site/test_native_switch.py`` runs it at 10^5 packets;
the benchmark mode runs 10^6:

    .venv/bin/python -m benchmarks.native_fuzz --json /tmp/native_fuzz.json [--packets 1000000]
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

from benchmarks._report import emit
from pcdemo.onesite import open_circuit
from pcsite_lite import native
from pcsite_lite.circuits import OutHopEntry as OutHop
from pcsite_lite.pipeline import Pipeline
from pcsite_lite.services import source
from pcsite_lite.site import Site
from pcsite_lite.verdicts import Deliver, Forward
from pcsock import wire
from pcsock.wire import HopKey, build_circuit_packet, build_service_packet

PSP = "fuzz"
SITE_IP = "198.18.20.1"  #: the site; its next hops: NEXT_IP (local), OTHER_IP (not)
NEXT_IP, OTHER_IP = "198.18.21.1", "198.18.21.2"
SENDER, DEST = "198.18.19.10", "198.18.29.10"
IN_KEY, OUT_KEY = HopKey(bytes(range(40, 56))), HopKey(bytes(range(60, 80)))
BATCH = 256
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
        local_prefixes=["198.18.21.0/31"],
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
        label = open_circuit(site, psp=PSP, service=name, in_key=IN_KEY, out_hops=out,
                             expires=100.0)  # fmt: skip
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
        packet(sr, dst="198.18.20.2"),  # not_for_site
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


def compare(ref: Side, nat: Side, batches: list[tuple[list[bytes], float]]) -> None:
    for i, (packets, now) in enumerate(batches):
        assert nat.batch(packets, now) == ref.batch(packets, now), f"batch {i}"
    assert nat.state() == ref.state()


def mutate(rng: random.Random, data: bytes) -> bytes:
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


def fuzz_batches(
    labels: dict[str, int], packets: int, seed: int = 2026
) -> list[tuple[list[bytes], float]]:
    """``packets`` packets in batches of 256: half valid packets the switch takes, half any
    packet of :func:`base_packets`; half of all mutated."""
    base = base_packets(labels)
    good = [packet(labels[n], udp=u) for n in ("sr", "sr_second", "noop") for u in (0, 1)]
    rng = random.Random(seed)
    batches = []
    for k in range((packets + BATCH - 1) // BATCH):
        n = min(BATCH, packets - k * BATCH)
        pk = [rng.choice(good if rng.random() < 0.5 else base) for _ in range(n)]
        pk = [mutate(rng, d) if rng.random() < 0.5 else d for d in pk]
        batches.append((pk, 1.0 + k * 0.01))
    return batches


def run(packets: int, *, pure: bool = False, seed: int = 2026) -> dict[str, Any]:
    ref_how = "pure" if pure or wire.accelerator() is None else "accel"
    ref, nat = Side(ref_how), Side("native")
    mismatches = 0
    total = 0
    # batches are made and compared in chunks (bounded memory at 10^6 packets)
    chunk = 100 * BATCH
    for start in range(0, packets, chunk):
        n = min(chunk, packets - start)
        for pk, now in fuzz_batches(ref.labels, n, seed + start):
            now += start / BATCH * 0.01
            total += len(pk)
            if nat.batch(pk, now) != ref.batch(pk, now):
                mismatches += 1
    if nat.state() != ref.state():
        mismatches += 1
    return {
        "native_fuzz_packets": total,
        "native_fuzz_mismatches": mismatches,
        "native_fuzz_native_share": round(1 - nat.calls / total, 4) if total else 0.0,
        "native_fuzz_reference": ref_how,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.native_fuzz", description=__doc__)
    ap.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--pure", action="store_true", help="against the pure-Python pipeline")
    ap.add_argument("--quick", action="store_true", help="10 000 packets (checks it works)")
    args = ap.parse_args(argv)
    if native._switch is None:
        print(f"native_fuzz: {native._WHY_NOT}", file=sys.stderr)
        return 2
    figures = run(10_000 if args.quick else args.packets, pure=args.pure, seed=args.seed)
    emit(figures, args.json)
    return 1 if figures["native_fuzz_mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
