"""The rule-based forwarding demo with real packets in a namespace testbed (and simulator twin).

:func:`run_testbed` builds ``examples/encryption/chain.toml`` (or ``--topology FILE``; prefix
``pcx`` + a run id; always torn down) and runs the service on the real site daemons (``pcsite
run``) at C1 and C2 (signed upload, circuits, rules and the ISP's congestion report through the
control API). S's circuit leaves C1 either through C2 or straight to D. Phases, ``n`` packets
each:

1. ``bound``: the authority's rule bound to the circuit sends small packets through C2 with
   metadata 7 and drops packets over 100 bytes (``big``);
2. ``congested``: the ISP reports C2's link congested; the same rule sends straight to D;
3. ``carried``: packets carry an admitted rule (straight to D); ``tampered``: the same rule
   with one byte changed; ``uncertified``: a rule signed by another key.

D's capture shows who delivered each packet (C2's or C1's address) and its metadata.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from examples.encryption.demo import NEEDS
from pcdemo.example_testbed import ExampleTestbed, circuit_packets, main, probe_until
from pcsock.wire import int2ip

from .control import SERVICE, RbfPSP, RuleAuthority, carry

PREFIX = "pcx"  #: its testbed's name prefix
TOPOLOGY = Path(__file__).resolve().parent.parent / "encryption" / "chain.toml"
PSP = "rbfco"

__all__ = ["NEEDS", "SCENARIO", "on_simulator", "on_testbed", "outcome", "passed", "phases"]


def rule_text(c2: str, d: str) -> str:
    return (
        f"if len > 100 then drop too_big else if site == C2 then forward "
        f"else if congestion@{c2} > 0.5 then forward {d} else meta 7, forward {c2}"
    )


def phases(authority: RuleAuthority, c2: str, d: str) -> dict[str, list[bytes]]:
    """The payloads of each phase (``n`` filled in by the caller)."""
    carried = authority.certify(f"if site == C1 then forward {d} else forward")
    wire = carry(carried, b"carried data")
    evil = wire.replace(d.encode(), c2.encode())
    mallory = carry(RuleAuthority().certify(f"forward {d}"), b"mallory")
    return {"bound": [b"small"], "big": [b"x" * 200], "congested": [b"small again"],
            "carried": [wire], "tampered": [evil], "uncertified": [mallory]}  # fmt: skip


def _arrivals(frames: list[bytes]) -> Counter[tuple[str, int]]:
    return Counter((int2ip(p.src), p.metadata) for p in circuit_packets(frames))


def on_testbed(etb: ExampleTestbed, topo: Any, *, n: int = 20) -> dict[str, Any]:
    res: dict[str, Any] = {"n": n}
    c1, c2 = etb.site("C1", PSP), etb.site("C2", PSP)
    isp1 = etb.site("C1", PSP, isp=True)  # the ISP's own writes at C1
    authority = RuleAuthority()
    psp = RbfPSP([c1, c2], authority.public_key)
    psp.deploy()
    s_ip, d_ip = etb.address("S"), etb.address("D")
    circuit = psp.connect(c1, [c2], d_ip)
    psp.bind(circuit, authority.certify(rule_text(c2.public_ip, d_ip)))
    plan = phases(authority, c2.public_ip, d_ip)
    psp.admit(authority.certify(f"if site == C1 then forward {d_ip} else forward"))
    at_d = etb.capture("D", "R2")
    tx = etb.raw_sender("S")
    seen = 0  # packets C1's service has run on so far

    def c1_counters() -> dict[str, int]:
        return c1.counters(SERVICE)

    def settle(payload: bytes, via: str, meta: int) -> int:
        """Probe (``payload``, as the phase sends) until one reaches D from ``via`` with
        ``meta``: the rules and FIS entries the phase depends on are in effect at C1's worker
        (on a multi-machine site: the circuit's compute node). The probes' number."""
        sent = probe_until(lambda _i: tx.sendto(circuit.packet(s_ip, payload),
                                                (circuit.first_hop, 0)),
                           lambda _i: _arrivals(at_d.drain(0.02))[via, meta] > 0)  # fmt: skip
        at_d.forget()
        return sent

    for name, (payload,) in plan.items():
        if name == "bound":  # the circuit's bound rule: small packets via C2, metadata 7
            seen += settle(payload, c2.public_ip, 7)
        if name == "congested":  # the ISP reports C2 congested: the rule forwards direct
            isp1.isp_lpm_put("congestion", f"{c2.public_ip}/32", {"level": 0.9})
            seen += settle(payload, c1.public_ip, 0)
        etb.wait_served(c1, SERVICE, seen)  # the probes' drops are counted before drops0
        drops0 = c1_counters().get("drops", 0)
        for _ in range(n):
            tx.sendto(circuit.packet(s_ip, payload), (circuit.first_hop, 0))
            time.sleep(0.001)  # pacing (the sending rate), not a wait for state
        seen += n  # C1 has run the service on the phase's packets, then D's capture is read
        etb.wait_served(c1, SERVICE, seen)
        got = _arrivals(at_d.take(0.3))
        res[name] = {
            "via_c2_meta7": got[c2.public_ip, 7],
            "via_c2": got[c2.public_ip, 0],
            "direct": got[c1.public_ip, 0],
            "dropped_at_c1": c1_counters().get("drops", 0) - drops0,
        }
    res["c1_service_drops"] = c1_counters().get("drops", 0)
    for sock in (tx, at_d):
        sock.close()
    return res


def on_simulator(topology: Path, *, n: int = 20) -> dict[str, Any]:
    from .scenario import build_world, send

    w = build_world(topology)
    c1, c2, d = w.sites["C1"].ip, w.sites["C2"].ip, w.dest.ip
    w.psp.bind(w.circuit, w.authority.certify(rule_text(c2, d)))
    w.psp.admit(w.authority.certify(f"if site == C1 then forward {d} else forward"))
    res: dict[str, Any] = {"n": n}
    for name, (payload,) in phases(w.authority, c2, d).items():
        if name == "congested":
            w.handles["C1"].isp_lpm_put("congestion", f"{c2}/32", {"level": 0.9})
        drops0 = len(w.sites["C1"].drops)
        got: Counter[tuple[str, int]] = Counter()
        for _ in range(n):
            for src, meta, _p in send(w, payload):
                got[src, meta] += 1
        res[name] = {
            "via_c2_meta7": got[c2, 7],
            "via_c2": got[c2, 0],
            "direct": got[c1, 0],
            "dropped_at_c1": len(w.sites["C1"].drops) - drops0,
        }
    return res


def passed(res: dict[str, Any]) -> bool:
    n = res["n"]

    def only(phase: str, key: str) -> bool:
        return all(v == (n if k == key else 0) for k, v in res[phase].items())

    return (
        only("bound", "via_c2_meta7")
        and only("big", "dropped_at_c1")
        and only("congested", "direct")
        and only("carried", "direct")
        and only("tampered", "dropped_at_c1")
        and only("uncertified", "dropped_at_c1")
    )


#: the demo's row in ``python -m pcdemo`` (:func:`pcdemo.scenarios.example_scenario`)
SCENARIO = ("rbf", "rule-based forwarding with certified rules (§2.6.2)")


def outcome(out: Any, res: dict[str, Any]) -> None:
    n = res["n"]
    out.sent = 6 * n
    out.received = sum(res[p]["via_c2_meta7"] + res[p]["via_c2"] + res[p]["direct"]
                       for p in ("bound", "congested", "carried"))  # fmt: skip
    out.dropped = sum(res[p]["dropped_at_c1"] for p in ("big", "tampered", "uncertified"))
    out.check("certified rules decide, others are dropped", passed(res))
    out.detail = "bound, congested, carried rules obeyed; tampered/uncertified dropped"


if __name__ == "__main__":
    sys.exit(main(sys.modules[__name__]))
