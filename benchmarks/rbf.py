"""Rule-based forwarding benchmark: the cost of interpreting a certified rule per packet.

One site (``pcsite_lite.pipeline.Pipeline`` over a ``Site``; in-memory FIS) runs the RBF service
(``examples/rbf/service.py``, sandboxed and CPU-budgeted as on a real site) on a form-1
circuit with two out hops. Cases, each a rule bound to the circuit's label unless named:

* ``forward``: ``forward <D>`` (one action, no condition);
* ``demo``: the demo's rule (4 conditions, ``congestion@`` reads the ISP table, ``meta``);
* ``chain16``: 16 chained ``if ... else if`` conditions, the last one matching;
* ``carried``: the demo's rule carried in the payload (certificate lookup + byte comparison);

and the baseline: the same circuit with the paper's source-routing service
(``pcsite_lite/services/source_routing.py``). Figures: ``rbf_us_per_packet_<case>`` and
``baseline_us_per_packet`` (thread CPU time per packet through the whole pipeline, best of
``--repeat``), ``rbf_interpretation_us_per_packet_<case>`` (the difference) and
``rbf_ratio_vs_baseline_<case>``; ``rbf_interpreter_us_per_packet_chain16`` is the bare
interpreter (``run`` on a parsed rule, no sandbox, no pipeline). The rule parse is cached per
node, so these are steady-state costs; ``rbf_parse_us_chain16`` is the one-time parse.

Run: ``python -m benchmarks.rbf [--json PATH] [--quick]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from benchmarks._report import quick_main
from examples.rbf import service as rbf
from examples.rbf.control import SERVICE_SOURCE, RuleAuthority, carry
from pcdemo.onesite import open_circuit
from pcsite_lite.circuits import OutHopEntry
from pcsite_lite.fis import ISP, namespace
from pcsite_lite.pipeline import Pipeline
from pcsite_lite.sandbox import tick_budget
from pcsite_lite.site import Site
from pcsite_lite.verdicts import Forward
from pcsock.wire import HopKey, build_circuit_packet

PSP = "rbfco"
C1, C2, SRC, DST = "198.18.254.1", "198.18.254.2", "198.18.1.10", "198.18.2.10"
DEMO = (
    f"if len > 100 then drop too_big else if site == C2 then forward "
    f"else if congestion@{C2} > 0.5 then forward {DST} else meta 7, forward {C2}"
)
CHAIN16 = " else ".join(f"if len == {1000 + i} then drop no{i}" for i in range(15))
CHAIN16 += f" else if len < 100 then forward {C2} else drop none"


def _site(service: str, source: str, rule: str | None) -> tuple[Pipeline, int, HopKey]:
    # ticks bound the service (a busy machine must not time out the benchmark packet)
    site = Site("C1", C1, budget=tick_budget())
    site.deploy(PSP, service, source)
    key = HopKey(b"bench-key-16byte")
    hops = [OutHopEntry(9, C2, HopKey(b"next-key-16bytes")), OutHopEntry(0, DST, None)]
    label = open_circuit(site, psp=PSP, service=service, in_key=key, out_hops=hops, expires=1e12)
    ns = namespace(PSP, service)
    site.fis.put(ns, "site", "C1", writer=PSP)
    site.fis.put(ns, str(label), {"label": 9, "next_hop": C2}, writer=PSP)  # source routing
    site.fis.lpm_put(ISP, "congestion", f"{C2}/32", {"level": 0.2}, writer=ISP)
    if rule is not None:
        site.fis.put(ns, f"rule:{label}", {"rule": rule}, writer=PSP)
    return Pipeline(site), label, key


def _cpu_us(pipe: Pipeline, pkt: bytes, n: int, repeat: int) -> float:
    out = pipe.process(pkt, 0.0)
    if not out or not isinstance(out[0], Forward):
        raise RuntimeError(f"benchmark packet not forwarded: {out}")
    best = float("inf")
    for _ in range(repeat):
        t0 = time.thread_time_ns()
        for _ in range(n):
            pipe.process(pkt, 0.0)
        best = min(best, (time.thread_time_ns() - t0) / n / 1e3)
    return best


def measure(n: int, repeat: int) -> dict[str, float]:
    src_routing = (
        Path(__file__).resolve().parent.parent / "pcsite_lite" / "services" / "source_routing.py"
    ).read_text()
    authority = RuleAuthority()
    out: dict[str, float] = {}
    pipe, label, key = _site("srcroute", src_routing, None)
    data = b"x" * 64
    out["baseline_us_per_packet"] = _cpu_us(
        pipe, bytes(build_circuit_packet(src=SRC, dst=C1, label=label, key=key, payload=data)),
        n, repeat,
    )  # fmt: skip
    for case, rule in (("forward", f"forward {DST}"), ("demo", DEMO), ("chain16", CHAIN16)):
        pipe, label, key = _site("rbf", SERVICE_SOURCE, rule)
        pkt = build_circuit_packet(src=SRC, dst=C1, label=label, key=key, payload=data)
        out[f"rbf_us_per_packet_{case}"] = _cpu_us(pipe, bytes(pkt), n, repeat)
    # the demo rule carried in the payload, admitted (certificate in the FIS)
    cert = authority.certify(DEMO)
    pipe, label, key = _site("rbf", SERVICE_SOURCE, None)
    raw = cert.text.encode()
    pipe.site.fis.put(
        namespace(PSP, "rbf"),
        rbf.cert_key(raw, cert.signature),
        {"rule": cert.text, "sig": cert.signature.hex()},
        writer=PSP,
    )
    payload = carry(cert, b"x" * 16)
    pkt = build_circuit_packet(src=SRC, dst=C1, label=label, key=key, payload=payload)
    out["rbf_us_per_packet_carried"] = _cpu_us(pipe, bytes(pkt), n, repeat)
    for case in ("forward", "demo", "chain16", "carried"):
        out[f"rbf_interpretation_us_per_packet_{case}"] = (
            out[f"rbf_us_per_packet_{case}"] - out["baseline_us_per_packet"]
        )
        out[f"rbf_ratio_vs_baseline_{case}"] = (
            out[f"rbf_us_per_packet_{case}"] / out["baseline_us_per_packet"]
        )
    tree = rbf.parse(CHAIN16)
    attrs = {"len": 64}.get
    t0 = time.thread_time_ns()
    for _ in range(n):
        rbf.run(tree, attrs)
    out["rbf_interpreter_us_per_packet_chain16"] = (time.thread_time_ns() - t0) / n / 1e3
    t0 = time.thread_time_ns()
    for _ in range(max(1, n // 10)):
        rbf.parse(CHAIN16)
    out["rbf_parse_us_chain16"] = (time.thread_time_ns() - t0) / max(1, n // 10) / 1e3
    return out


def main(argv: list[str] | None = None) -> int:
    return quick_main(argv, "rbf", __doc__, 100, lambda n, repeat, _quick: measure(n, repeat))


if __name__ == "__main__":
    sys.exit(main())
