"""Pipeline benchmark: a site's whole per-packet cost for the paper's §2.1 source-routing service.

The measured job is ``Pipeline.process(data, now)`` on a form-1 packet (150 bytes, IP mode) as
a site daemon runs it: parse (TUN input: ``verify_ip_checksum=False``), circuit lookup, expiry,
MAC verify under the in hop key, hop limit, the source-routing service file
(``pcsite_lite/services/source_routing.py``: ``shim.read``, FIS ``fetch`` answered by the
node-local ``CachedFIS`` -- a cache hit --, ``shim.update``, ``forward_to``) under its CPU
budget and metering (packets, bytes, CPU ns, FIS reads, local/inter-domain bytes), then the
label swap, source/destination rewrite and re-MAC under the out hop key, and the ``Forward``
verdict. Its output is checked (label, destination, MAC) before anything is timed.

Baseline, in the same run: the *no-op pipeline* -- parse the same packet and return a
``Forward`` of its bytes -- the least any pipeline does per packet.

The job is measured on three paths in the same invocation: the worker's *native switch*
(``pcsite_lite.native``: the source-routing service declares ``NATIVE = "srcroute"``, so the
whole hop and its metering run in C on batches of 256 packets, loaded into the switch's
buffers as a TUN read would), the Python pipeline with the C accelerator (``pcsock._accel``:
the form-1 fast path's ingress and egress in C; the service, its budget and the metering in
Python), and the pure-Python pipeline.

Figures (``--json PATH``):

- ``pipeline_us_per_packet``: the job on the best path built here (``pipeline_path``:
  ``native``, ``accelerated`` or ``pure``); ``pipeline_us_per_packet_accel`` the Python
  pipeline with the accelerator, ``pipeline_us_per_packet_pure`` the pure-Python pipeline;
- ``pipeline_native_speedup``: the accelerated pipeline's figure divided by the native one;
- ``pipeline_accel_speedup``: the pure figure divided by the accelerated one;
- ``pipeline_vs_noop``: ``pipeline_us_per_packet`` divided by the no-op pipeline's time
  (``pipeline_vs_noop_accel``, ``_pure``: the same for the other paths);
- ``noop_us_per_packet``: the no-op pipeline;
- the variants below are the Python pipeline's (accelerated; ``_pure`` suffixed: pure);
- ``pipeline_noop_service_us_per_packet``: the pipeline running a service that does nothing
  (the platform's own cost: MAC verify, metering, budget, egress);
- ``pipeline_verify_ip_us_per_packet``: the job also verifying the IPv4 header checksum;
- ``pipeline_general_path_us_per_packet``: the same job through the general path (codec
  ``parse``, ``verify_mac``, per-stage API binding) instead of the form-1 fast path;
- ``pipeline_accounted_us_per_packet``: the job run as ``Pipeline.process_batch`` of 256
  packets, i.e. with the per-batch CPU attribution (``account()``: one ``thread_time_ns``
  read and the scaling of the batch's service times) amortised per packet;
- ``pipeline_settrace_budget_us_per_packet``: the same job with the service's CPU budget
  done the other way -- uninstrumented code under a ``sys.settrace`` line counter switched on
  around each call -- instead of the loader's compiled-in ticks;
- ``clock_ns``: the cost of one call of each candidate CPU-accounting clock
  (``perf_counter_ns`` is what the pipeline uses; ``thread_time_ns`` is real CPU time but a
  system call);
- ``loop_iteration_ns``: the CPU budget's price inside service code: ns per iteration of a
  ``for`` loop in plain CPython, with the loader's budget ticks, and with the alternative (a
  ``sys.settrace`` line-counting budget);
- ``parts_ns``: ns of the fast path's irreducible pieces, each timed alone: one MAC check
  (``mac_check``; the path does two MAC computations), the two packet copies (``copies``)
  and the source-routing service's own call (``service_call``); with the accelerator also
  its two C calls, ``accel_ingress`` (checks, circuit lookup, MAC check) and
  ``accel_egress`` (rewrite, re-MAC, the output ``bytes``);
- ``raw``: every round.

Timings are process CPU time per packet in interleaved rounds, best round reported (other
processes' load on a shared machine then hits every variant alike).

Run: ``python -m benchmarks.pipeline [--json PATH] [--quick] [--count N]``.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks._report import QUICK_OPTIONS, arguments, write_json
from pcdemo.onesite import open_circuit
from pcsite_lite import native
from pcsite_lite.circuits import OutHopEntry
from pcsite_lite.pipeline import Pipeline
from pcsite_lite.sandbox import Budget, load_service
from pcsite_lite.services import source
from pcsite_lite.site import Site
from pcsite_lite.verdicts import Forward
from pcsock import wire

PSP = "acme"
IN_KEY = wire.HopKey(bytes(range(16)))
OUT_KEY = wire.HopKey(bytes(range(100, 132)))
SITE_IP = "198.18.1.1"
NEXT_HOP = "198.18.7.7"
OUT_LABEL = 0x0BADCAFE
BATCH = 256  # packets per Pipeline.account() in the accounted variant (the daemon's batch)
PAYLOAD = bytes(8) + bytes(range(256))[:100]  # an inner UDP header and 100 bytes of data


def make_site(service: str) -> tuple[Site, int]:
    """A site running ``service`` (a shipped service file) on one installed circuit."""
    site = Site("bench", SITE_IP, local_prefixes=["198.18.0.0/15"])
    site.deploy(PSP, service, source(service))
    hop = OutHopEntry(OUT_LABEL, NEXT_HOP, OUT_KEY)
    label = open_circuit(site, psp=PSP, service=service, in_key=IN_KEY, out_hops=[hop],
                         expires=1e12)  # fmt: skip
    site.fis.put(
        f"{PSP}/{service}", str(label), {"label": OUT_LABEL, "next_hop": NEXT_HOP}, writer=PSP
    )
    return site, label


def make_packet(label: int) -> bytes:
    return bytes(
        wire.build_circuit_packet(
            src="198.18.0.1", dst=SITE_IP, label=label, key=IN_KEY, payload=PAYLOAD, hop_limit=8
        )
    )


def check_output(verdicts: list[Any]) -> None:
    [v] = verdicts
    if not isinstance(v, Forward):
        raise AssertionError(f"expected a Forward, got {v!r}")
    out = wire.parse(v.data)
    if (out.label, wire.int2ip(out.dst), wire.int2ip(out.src), out.hop_limit) != (
        OUT_LABEL,
        NEXT_HOP,
        SITE_IP,
        7,
    ) or not out.verify_mac(OUT_KEY):
        raise AssertionError(f"wrong output {out!r}")


def noop_pipeline(data: bytes, now: float) -> list[Forward]:
    """The baseline: parse, and forward the bytes unchanged."""
    pkt = wire.parse(data, verify_ip_checksum=False)
    return [Forward(bytes(pkt.buf), NEXT_HOP)]


def _time(job: Callable[[bytes, float], Any], data: bytes, count: int) -> float:
    t0 = time.process_time()
    for _ in range(count):
        job(data, 1.0)
    return (time.process_time() - t0) / count * 1e6


def _time_batches(pipe: Pipeline, batch: list[bytes], count: int) -> float:
    """us per packet of ``pipe.process_batch`` (``account()`` after every batch)."""
    rounds = max(1, count // len(batch))
    t0 = time.process_time()
    for _ in range(rounds):
        pipe.process_batch(batch, 1.0)
    return (time.process_time() - t0) / (rounds * len(batch)) * 1e6


def _native_switch(site: Site, data: bytes) -> native.NativeSwitch:
    """A native switch over ``site`` (as a worker builds it), its output checked."""
    sw = native.NativeSwitch(Pipeline(site, verify_ip_checksum=False), batch=BATCH)
    [out] = sw.switch([data], 1.0)  # the first packet takes the pipeline and is learned
    check_output([Forward(out, NEXT_HOP)])
    [out] = sw.switch([data], 1.0)
    check_output([Forward(out, NEXT_HOP)])
    return sw


def _time_native(sw: native.NativeSwitch, batch: list[bytes], count: int) -> float:
    """us per packet of the native switch on batches of ``batch`` (load + switch + meter)."""
    rounds = max(1, count // len(batch))

    def punt(_i: int, data: bytes) -> list[bytes]:  # never in steady state: all are native
        raise AssertionError("a packet left the native path")

    load, run_batch = sw.sw.load, sw.run_batch
    t0 = time.process_time()
    for _ in range(rounds):
        load(batch)
        run_batch(1.0, punt)
    sw.pipeline.account()
    return (time.process_time() - t0) / (rounds * len(batch)) * 1e6


def _clock_ns(clock: Callable[[], int], count: int) -> float:
    t0 = time.perf_counter()
    for _ in range(count):
        clock()
    return (time.perf_counter() - t0) / count * 1e9


LOOP_SOURCE = (
    "def process(pkt):\n    s = 0\n    for i in range(pkt):\n        s += i\n    return s\n"
)


def parts_ns(site: Site, label: int, data: bytes, count: int, repeats: int) -> dict[str, float]:
    """ns of the pieces of the fast path that no Python rearrangement removes: one form-1 MAC
    check (copy the keyed BLAKE2s state, two updates, digest, constant-time compare), the
    packet's two copies (``bytearray`` in, ``bytes`` out), and the source-routing service's
    own call (its API calls and budget tick) with the Packet API already bound."""
    import hmac

    circuit = site.circuits.get(label)
    assert circuit is not None and circuit.slot is not None
    pipe = Pipeline(site, verify_ip_checksum=False)
    check_output(pipe.process(data, 1.0))
    api = pipe._fapi
    pipe._fpkt.buf = bytearray(data)
    decision = pipe._fdec
    decision.ctx = circuit.slot.ctx
    decision.circuit = circuit
    service = circuit.slot.process
    budget = site.runtime.budget
    compare = hmac.compare_digest

    def mac() -> None:
        h = circuit.in_mac.copy()
        h.update(data[20:32])
        h.update(data[16:20])
        compare(h.digest(), data[32:36])

    def copies() -> None:
        bytes(bytearray(data))

    def call() -> None:
        budget.left = budget.max_ticks
        budget.deadline = time.perf_counter_ns() + 10**12
        service(api)
        decision.reset()

    def best(fn: Callable[[], None]) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            for _ in range(count):
                fn()
            times.append(time.process_time() - t0)
        return round(min(times) / count * 1e9, 1)

    parts = {"mac_check": best(mac), "copies": best(copies), "service_call": best(call)}
    ax = wire.accelerator()
    if ax is not None:  # the accelerated fast path's two C calls, each alone
        get, addr = site.circuits.get, site.public_addr
        hop = circuit.default
        assert hop is not None
        buf = bytearray(data)
        parts["accel_ingress"] = best(lambda: ax.form1_in(data, addr, False, get))
        parts["accel_egress"] = best(lambda: ax.form1_out(buf, 20, 7, hop.label, hop.addr, hop.key))
    return parts


def budget_costs(iterations: int, repeats: int) -> dict[str, float]:
    """ns per loop iteration: plain CPython, with the loader's budget ticks, and with the
    alternative (a ``sys.settrace`` line-counting budget)."""
    budget = Budget(max_ticks=10**12, max_ns=10**15)
    instrumented = load_service(LOOP_SOURCE, "bench/loop", budget=budget).process
    namespace: dict[str, Any] = {}
    exec(compile(LOOP_SOURCE, "bench/plain", "exec"), namespace)
    plain = namespace["process"]
    lines = [0]

    def local(frame: Any, event: str, arg: Any) -> Any:
        lines[0] += 1
        return local

    def traced(n: int) -> Any:
        sys.settrace(lambda frame, event, arg: local)
        try:
            return plain(n)
        finally:
            sys.settrace(None)

    def best(fn: Callable[[int], Any]) -> float:
        times = []
        for _ in range(repeats):
            budget.start(time.perf_counter_ns())
            t0 = time.process_time()
            fn(iterations)
            times.append(time.process_time() - t0)
        return round(min(times) / iterations * 1e9, 1)

    return {"plain": best(plain), "budget_ticks": best(instrumented), "settrace": best(traced)}


def settrace_variant(site: Site, service: str) -> None:
    """Swap ``service``'s code for the alternative budget design: the uninstrumented source
    run under a ``sys.settrace`` line-counting budget switched on around each call."""
    slot = site.runtime.slot(PSP, service)
    namespace: dict[str, Any] = {"__builtins__": __builtins__}
    exec(compile(source(service), f"{PSP}/{service}", "exec"), namespace)
    plain = namespace["process"]
    left = [0]

    def local(frame: Any, event: str, arg: Any) -> Any:
        left[0] -= 1
        if left[0] < 0:
            raise RuntimeError("budget")
        return local

    def glob(frame: Any, event: str, arg: Any) -> Any:
        return local

    def traced(pkt: Any) -> Any:
        left[0] = 100_000
        sys.settrace(glob)
        try:
            return plain(pkt)
        finally:
            sys.settrace(None)

    slot.process = traced


def _variants(accel: bool, sfx: str) -> tuple[dict[str, Any], list[tuple[Site, int, int]]]:
    """The timed jobs on pipelines with (``accel``) or without the C accelerator, and per
    site the number of packets its metering must have counted per round and at set-up."""
    sr_site, sr_label = make_site("source_routing")
    noop_site, noop_label = make_site("noop")
    sr = Pipeline(sr_site, verify_ip_checksum=False, accel=accel)
    sr_verify = Pipeline(sr_site, verify_ip_checksum=True, accel=accel)
    noop_svc = Pipeline(noop_site, verify_ip_checksum=False, accel=accel)
    sr_data = make_packet(sr_label)
    noop_data = make_packet(noop_label)
    for pipe, data in ((sr, sr_data), (sr_verify, sr_data), (noop_svc, noop_data)):
        check_output(pipe.process(data, 1.0))  # also warms the FIS cache: later reads hit
    general = Pipeline(sr_site, verify_ip_checksum=False, accel=accel)
    check_output(general._general(sr_data, 1.0))
    batched = Pipeline(sr_site, verify_ip_checksum=False, accel=accel)
    jobs: dict[str, Any] = {
        f"pipeline{sfx}": (sr.process, sr_data, accel),
        f"pipeline_general_path{sfx}": (general._general, sr_data, accel),
        f"pipeline_noop_service{sfx}": (noop_svc.process, noop_data, accel),
        f"pipeline_verify_ip{sfx}": (sr_verify.process, sr_data, accel),
        f"pipeline_accounted{sfx}": (batched, [sr_data] * BATCH, accel),
    }
    # sr, sr_verify, general and batched share sr_site's counters: 3 single-packet jobs and
    # one batched job per round, 3 packets at set-up
    return jobs, [(sr_site, 3, 3)]


def run(count: int, repeats: int) -> dict[str, Any]:
    accel_available = wire.accelerator() is not None
    was = wire.ACCELERATED
    jobs: dict[str, Any] = {}
    checks: list[tuple[Site, int, int]] = []
    for accel in [True, False] if accel_available else [False]:
        sfx = "_pure" if accel_available and not accel else ""
        wire.use_accelerator(accel)
        more, check = _variants(accel, sfx)
        jobs.update(more)
        checks += check
    native_ok = native.available()[0]  # built, and PACKETCLOUD_PURE not set
    if native_ok:
        nat_site, nat_label = make_site("source_routing")
        nat = _native_switch(nat_site, make_packet(nat_label))
        # (the flag is the codec's mode while it runs: the switch does not use the codec)
        jobs["pipeline_native"] = (nat, [make_packet(nat_label)] * BATCH, accel_available)
        checks.append((nat_site, 0, 2))
    wire.use_accelerator(False)
    tr_site, tr_label = make_site("source_routing")
    settrace_variant(tr_site, "source_routing")
    traced = Pipeline(tr_site, verify_ip_checksum=False, accel=False)
    tr_data = make_packet(tr_label)
    check_output(traced.process(tr_data, 1.0))
    jobs["noop"] = (noop_pipeline, jobs["pipeline" + ("_pure" if accel_available else "")][1],
                    False)  # fmt: skip
    jobs["pipeline_settrace_budget"] = (traced.process, tr_data, False)
    raw: dict[str, list[float]] = {name: [] for name in jobs}
    try:
        for _ in range(repeats):
            for name, (job, data, accel) in jobs.items():
                wire.use_accelerator(accel)  # the codec calls of the general path follow it
                if isinstance(job, native.NativeSwitch):
                    raw[name].append(_time_native(job, data, count))
                elif isinstance(job, Pipeline):
                    raw[name].append(_time_batches(job, data, count))
                else:
                    raw[name].append(_time(job, data, count))
    finally:
        wire.use_accelerator(was)
    best = {name: min(times) for name, times in raw.items()}
    for site, singles, setup in checks:
        counters = site.runtime.counters(PSP, "source_routing")
        expected = setup + repeats * (count * singles + max(1, count // BATCH) * BATCH)
        # the FIS read is metered as the service's, natively too
        if counters.packets != expected or counters.fis_reads != expected:
            raise AssertionError(f"metering drifted: {counters}")
    sr_site, sr_label = make_site("source_routing")
    sr_data = make_packet(sr_label)
    Pipeline(sr_site, verify_ip_checksum=False, accel=False).process(sr_data, 1.0)
    clock_count = max(1000, count)
    figures: dict[str, Any] = {"pipeline_accelerated": accel_available}
    names = ["pipeline", "pipeline_noop_service", "pipeline_verify_ip", "pipeline_general_path",
             "pipeline_accounted"]  # fmt: skip
    for sfx in ["", "_pure"] if accel_available else [""]:
        for name in names:
            figures[f"{name}_us_per_packet{sfx}"] = round(best[name + sfx], 3)
        figures[f"pipeline_vs_noop{sfx}"] = round(best["pipeline" + sfx] / best["noop"], 3)
    if accel_available:
        figures["pipeline_accel_speedup"] = round(best["pipeline_pure"] / best["pipeline"], 3)
        figures["pipeline_us_per_packet_accel"] = figures["pipeline_us_per_packet"]
        figures["pipeline_vs_noop_accel"] = figures["pipeline_vs_noop"]
    figures["pipeline_path"] = "accelerated" if accel_available else "pure"
    if native_ok:
        figures["pipeline_path"] = "native"
        figures["pipeline_us_per_packet"] = round(best["pipeline_native"], 3)
        figures["pipeline_vs_noop"] = round(best["pipeline_native"] / best["noop"], 3)
        python_best = best["pipeline"]  # the accelerated pipeline, or the pure one
        figures["pipeline_native_speedup"] = round(python_best / best["pipeline_native"], 3)
    figures.update(
        {
            "noop_us_per_packet": round(best["noop"], 3),
            "pipeline_settrace_budget_us_per_packet": round(best["pipeline_settrace_budget"], 3),
            "clock_ns": {
                "perf_counter_ns": round(_clock_ns(time.perf_counter_ns, clock_count), 1),
                "thread_time_ns": round(_clock_ns(time.thread_time_ns, clock_count), 1),
                "process_time_ns": round(_clock_ns(time.process_time_ns, clock_count), 1),
            },
            "loop_iteration_ns": budget_costs(max(1000, count * 5), repeats),
            "parts_ns": parts_ns(sr_site, sr_label, sr_data, max(1000, count // 2), repeats),
            "packet_bytes": len(sr_data),
            "count": count,
            "repeats": repeats,
            "raw": {name: [round(t, 3) for t in times] for name, times in raw.items()},
            "python": sys.version.split()[0],
            "machine": platform.machine(),
        }
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv, "python -m benchmarks.pipeline", __doc__, {
        "--quick": QUICK_OPTIONS["--quick"],
        "--count": (int, 20000, "packets per round"),
        "--repeats": (int, 7, "interleaved rounds"),
    })  # fmt: skip
    assert args is not None
    count, repeats = (200, 2) if args.quick else (args.count, args.repeats)
    figures = run(count, repeats)
    impl = "C accelerator" if figures["pipeline_accelerated"] else "pure Python"
    lines = [f"pipeline, {impl} (source routing, MAC verify, FIS cache hit, metering):"]
    if figures["pipeline_path"] == "native":
        lines.append(
            f"  native switch  {figures['pipeline_us_per_packet']:.2f} us/packet "
            f"({figures['pipeline_native_speedup']:.1f}x the Python pipeline; "
            f"vs no-op pipeline {figures['pipeline_vs_noop']:.2f}x)"
        )
    for sfx, what in [("", impl), ("_pure", "pure Python")][
        : 2 if figures["pipeline_accelerated"] else 1
    ]:
        # the Python pipeline's own figures (suffix _accel where the native switch leads)
        own = "_accel" if not sfx and "pipeline_us_per_packet_accel" in figures else sfx
        lines.append(
            f"  {what:14s} {figures['pipeline_us_per_packet' + own]:.2f} us/packet "
            f"(no-op service {figures['pipeline_noop_service_us_per_packet' + sfx]:.2f}, "
            f"IP checksum verify {figures['pipeline_verify_ip_us_per_packet' + sfx]:.2f}, "
            f"general path {figures['pipeline_general_path_us_per_packet' + sfx]:.2f}, "
            f"batches with account() {figures['pipeline_accounted_us_per_packet' + sfx]:.2f}; "
            f"vs no-op pipeline {figures['pipeline_vs_noop' + own]:.2f}x)"
        )
    lines += [
        f"no-op pipeline (parse + forward): {figures['noop_us_per_packet']:.2f} us/packet",
        f"settrace budget instead of ticks: "
        f"{figures['pipeline_settrace_budget_us_per_packet']:.2f} us/packet",
        f"clock cost (ns/call): {figures['clock_ns']}",
        f"service loop iteration (ns): {figures['loop_iteration_ns']}",
        f"fast path pieces (ns): {figures['parts_ns']}",
        f"(CPU time, best of {repeats} rounds of {count} packets)",
    ]
    print("\n".join(lines))
    write_json(figures, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
