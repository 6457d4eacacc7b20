"""The encryption-offload demo with real packets in a namespace testbed (and its simulator twin).

:func:`run_testbed` builds ``chain.toml`` (prefix ``pcx`` + a run id; always torn down), runs
the service in site processes at C1 and C2 (:mod:`.netsite`), opens S's circuit and sends
``n`` plaintext packets from S. It captures what crosses the core (on RC's interface toward
R2) and what D receives, then re-injects one captured ciphertext with a flipped byte from the
core router (an on-path attacker) and checks that C2 drops it.

``python -m examples.encryption.demo`` runs it as root (else the simulator) and prints JSON.
:func:`register` adds it to ``pcdemo``'s scenario registry.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pcsock.wire import WireError, parse

from .control import EncryptionPSP
from .netsite import PacketSite, capture, raw_sender
from .service import open_metadata

TOPOLOGY = Path(__file__).with_name("chain.toml")
PSP = "vpnco"

__all__ = ["passed", "register", "run_simulator", "run_testbed"]


def message(i: int) -> bytes:
    return b"plaintext %05d " % i + b"attack at dawn " * 8


def _payloads(frames: list[bytes]) -> list[tuple[int, bytes]]:
    out = []
    for f in frames:
        try:
            p = parse(f)
        except WireError:
            continue
        if p.form == 1:
            out.append((p.metadata, bytes(p.payload)))
    return out


def run_testbed(*, prefix: str = "pcx", n: int = 100, progress: Any = None) -> dict[str, Any]:
    """Build the testbed, run the demo with real packets, return the figures."""
    from testbed.net import Testbed

    res: dict[str, Any] = {"sent": n}
    with (
        tempfile.TemporaryDirectory(prefix="pcx-crypt-") as tmp,
        Testbed.from_file(TOPOLOGY, prefix=prefix, progress=progress) as tb,
    ):
        c1 = PacketSite(tb, "C1", PSP, Path(tmp))
        c2 = PacketSite(tb, "C2", PSP, Path(tmp))
        try:
            psp = EncryptionPSP(c1, c2)
            psp.deploy()
            d_ip = tb.node("D").address
            s_ip = tb.node("S").address
            assert d_ip is not None and s_ip is not None
            chain = psp.connect(d_ip)
            c1.start()
            c2.start()
            core = capture(tb, "RC", "R1")
            at_d = capture(tb, "D", "R2")
            tx = raw_sender(tb.node("S"))
            for i in range(n):
                tx.sendto(chain.packet(s_ip, message(i)), (chain.first_hop, 0))
                time.sleep(0.0005)
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
            frame = bytearray(next(f for f in core_frames if _payloads([f])))
            frame[-1] ^= 1
            before = c2.stats()
            drops0 = before["drops"].get("service_drop", 0)
            at_d.seen.clear()
            raw_sender(tb.node("RC")).sendto(bytes(frame), (c2.public_ip, 0))
            after = c2.stats_after(before["processed"] + 1)
            res["tampered_delivered"] = len(_payloads(at_d.drain()))
            res["tampered_dropped"] = after["drops"].get("service_drop", 0) - drops0
            res["site_drops"] = {"C1": c1.stats()["drops"], "C2": c2.stats()["drops"]}
        finally:
            c1.close()
            c2.close()
    return res


def run_simulator(n: int = 100) -> dict[str, Any]:
    """The same flow in ``pcsite_lite.sim``."""
    from .scenario import build_world, send

    w = build_world()
    core: list[bytes] = []
    orig = w.core.transmit

    def tap(sender: Any, data: bytes) -> None:
        core.append(data)
        orig(sender, data)

    w.core.transmit = tap  # type: ignore[method-assign]
    got = send(w, [message(i) for i in range(n)])
    on_core = _payloads(core)
    frame = bytearray(core[0])
    frame[-1] ^= 1
    w.core.transmit = orig  # type: ignore[method-assign]
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


def register() -> None:
    """Add the demo to ``pcdemo``'s scenarios (testbed as root, else simulator)."""
    from pcdemo.scenarios import Outcome, World, scenario

    @scenario("encrypt", "encryption offload: ingress encrypts, egress decrypts (§2.6.1)")
    def encryption_scenario(world: World) -> Outcome:
        out = Outcome("encrypt")
        res = run_testbed() if world.kind == "testbed" else run_simulator()
        out.sent, out.received = res["sent"], res["received_plaintext_ok"]
        out.dropped = res["tampered_dropped"]
        out.check("every plaintext delivered once", res["received_plaintext_ok"] == res["sent"])
        out.check("only ciphertext on the core", res["core_plaintext_leaks"] == 0)
        out.check("tampered ciphertext dropped", res["tampered_dropped"] == 1)
        out.detail = f"{res['core_sealed']}/{res['core_packets']} core packets sealed"
        return out


if __name__ == "__main__":
    import os

    result = run_testbed(progress=print) if os.geteuid() == 0 else run_simulator()
    print(json.dumps(result, indent=2))
    sys.exit(0 if passed(result) else 1)
