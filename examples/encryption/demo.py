"""The encryption-offload demo with real packets in a namespace testbed (and its simulator twin).

:func:`run_testbed` builds ``chain.toml`` (prefix ``pcx`` + a run id; always torn down), runs
the service on the real site daemon (``pcsite run``) at C1 and C2 (uploaded signed through the
control API, which also installs the circuit and the keys' FIS entries), opens S's circuit and sends
``n`` plaintext packets from S. It captures what crosses the core (on RC's interface toward
R2) and what D receives, then re-injects one captured ciphertext with a flipped byte from the
core router (an on-path attacker) and checks that C2 drops it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from pcdemo.example_testbed import (
    ExampleTestbed,
    Needs,
    circuit_packets,
    main,
    probe_until,
    tap,
    wait_until,
)

from .control import SERVICE, EncryptionPSP
from .service import open_metadata

PREFIX = "pcx"  #: its testbed's name prefix
TOPOLOGY = Path(__file__).with_name("chain.toml")
PSP = "vpnco"
#: S -- R1 (site C1) -- RC -- R2 (site C2) -- D
NEEDS = Needs(
    hosts=("S", "D"),
    routers=("R1", "RC", "R2"),
    sites=("C1", "C2"),
    links=(("R1", "RC"), ("RC", "R2"), ("R2", "D")),
)

__all__ = ["SCENARIO", "on_simulator", "on_testbed", "outcome", "passed"]


def message(i: int) -> bytes:
    return b"plaintext %05d " % i + b"attack at dawn " * 8


def _payloads(frames: list[bytes]) -> list[tuple[int, bytes]]:
    return [(p.metadata, bytes(p.payload)) for p in circuit_packets(frames)]


def chain_io(etb: ExampleTestbed, psp: Any) -> tuple[Any, Any, Any, Any, str]:
    """On ``chain.toml``'s testbed: ``psp``'s circuit S -> C1 -> C2 -> D (``psp.connect``),
    captures on the core (RC, toward R1) and at D, a raw sender at S, and S's address.

    Returns once a probe sent into the circuit reached D (and with the captures emptied of
    the probes): the circuit's hops and the FIS entries giving each site its role are then
    in effect at both sites' workers (on multi-machine sites: at the circuit's compute node
    of each). Sending at once lost packets to workers that had not polled the FIS yet
    (``crypt_no_role``: 5 of 100 on a loaded machine)."""
    s_ip, d_ip = etb.address("S"), etb.address("D")
    chain = psp.connect(d_ip)
    core = etb.capture("RC", "R1")
    at_d = etb.capture("D", "R2")
    tx = etb.raw_sender("S")
    probe_until(lambda i: tx.sendto(chain.packet(s_ip, b"probe %d" % i), (chain.first_hop, 0)),
                lambda i: at_d.saw(b"probe %d" % i))  # fmt: skip
    core.forget()
    at_d.forget()
    return chain, core, at_d, tx, s_ip


def on_testbed(etb: ExampleTestbed, topo: Any, *, n: int = 100) -> dict[str, Any]:
    """Build the testbed, run the demo with real packets on the site daemons, return the
    figures."""
    res: dict[str, Any] = {"sent": n}
    c1, c2 = etb.site("C1", PSP), etb.site("C2", PSP)
    psp = EncryptionPSP(c1, c2)
    psp.deploy()
    chain, core, at_d, tx, s_ip = chain_io(etb, psp)  # (after a probe got through)
    # what each site's service ran on before the burst (the probes), to tell where a lost
    # packet went missing: before C1's service, between the sites, or after C2's
    before = {s.name: etb.settled_count(s, SERVICE) for s in (c1, c2)}
    served0 = before[c2.name]
    for i in range(n):
        tx.sendto(chain.packet(s_ip, message(i)), (chain.first_hop, 0))
        time.sleep(0.0005)  # pacing: a burst faster than the site's TUN queue drops
    # C2 has run its service on all of them (a loaded site may still be busy when a
    # capture's quiet period would end) before the captures are read
    etb.wait_served(c2, SERVICE, max(n, served0 + n))
    core_frames = list(core.drain())
    d_frames = list(at_d.drain())
    on_core = [(m, p) for m, p in _payloads(core_frames) if p]
    got = [p for _, p in _payloads(d_frames)]
    res["received_plaintext_ok"] = sum(got.count(message(i)) == 1 for i in range(n))
    res["core_packets"] = len(on_core)
    res["core_sealed"] = sum(open_metadata(m) == (True, psp.epoch) for m, _ in on_core)
    res["core_plaintext_leaks"] = sum(
        any(message(i) in p for i in range(n)) or b"attack at dawn" in p for _, p in on_core
    )

    # an on-path attacker flips one ciphertext byte and re-injects it toward C2
    def c2_drops() -> int:
        return int(c2.counters(SERVICE).get("drops", 0))

    drops0 = c2_drops()
    frame = bytearray(next(f for f in core_frames if _payloads([f])))
    frame[-1] ^= 1
    at_d.seen.clear()
    attacker = etb.raw_sender("RC")
    attacker.sendto(bytes(frame), (c2.public_ip, 0))
    wait_until(lambda: c2_drops() > drops0, timeout=5)
    res["tampered_delivered"] = len(_payloads(at_d.drain()))
    res["tampered_dropped"] = c2_drops() - drops0
    res["site_drops"] = {"C1": c1.counters(SERVICE).get("drops", 0), "C2": c2_drops()}
    res["served_in_burst"] = {  # (C2's includes the tampered packet)
        s.name: int(s.counters(SERVICE).get("packets", 0)) - before[s.name] for s in (c1, c2)
    }
    for sock in (tx, attacker, core, at_d):
        sock.close()
    return res


def on_simulator(topology: Path, *, n: int = 100) -> dict[str, Any]:
    """The same flow in ``pcsite_lite.sim``."""
    from .scenario import build_world, send

    w = build_world(topology)
    core: list[bytes] = []
    untap = tap(w.core, lambda _sender, frame: core.append(frame))
    got = send(w, [message(i) for i in range(n)])
    on_core = _payloads(core)
    frame = bytearray(core[0])
    frame[-1] ^= 1
    untap()
    before = len(w.dest.inbox)
    w.sites["C2"].receive(bytes(frame), w.core)
    w.net.run()
    return {
        "sent": n,
        "received_plaintext_ok": sum(got.count(message(i)) == 1 for i in range(n)),
        "core_packets": len(on_core),
        "core_sealed": sum(open_metadata(m)[0] for m, _ in on_core),
        "core_plaintext_leaks": sum(b"attack at dawn" in p for _, p in on_core),
        "tampered_delivered": len(w.dest.inbox) - before,
        "tampered_dropped": sum(d.detail == "crypt_auth_failed" for d in w.sites["C2"].drops),
    }


def passed(res: dict[str, Any]) -> bool:
    n = res["sent"]
    return bool(
        res["received_plaintext_ok"] == n
        and res["core_packets"] == n
        and res["core_sealed"] == n
        and res["core_plaintext_leaks"] == 0
        and res["tampered_delivered"] == 0
        and res["tampered_dropped"] == 1
    )


#: the demo's row in ``python -m pcdemo`` (:func:`pcdemo.scenarios.example_scenario`)
SCENARIO = ("encrypt", "encryption offload: ingress encrypts, egress decrypts (§2.6.1)")


def outcome(out: Any, res: dict[str, Any]) -> None:
    out.sent, out.received = res["sent"], res["received_plaintext_ok"]
    out.dropped = res["tampered_dropped"]
    out.check("every plaintext delivered once", res["received_plaintext_ok"] == res["sent"])
    out.check("only ciphertext on the core", res["core_plaintext_leaks"] == 0)
    out.check("tampered ciphertext dropped", res["tampered_dropped"] == 1)
    out.detail = f"{res['core_sealed']}/{res['core_packets']} core packets sealed"
    if res["received_plaintext_ok"] != res["sent"] and "served_in_burst" in res:
        out.detail += (f"; services ran on {res['served_in_burst']}, dropped "
                       f"{res['site_drops']}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main(sys.modules[__name__]))
