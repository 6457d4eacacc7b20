"""The congestion-aware forwarding demo with real packets in a namespace testbed.

:func:`run_testbed` builds ``congestion.toml`` (prefix ``pcx`` + a run id; always torn down),
runs the service in a site process at C1 (:mod:`examples.encryption.netsite`, form-2 service
ID registered with the gateways GA and GB as the only tunnel end points), and streams form-2
packets from S to D, one per ``interval``. The ISP first reports gateway A's link less
congested; midway it reports A congested (through its own connection to the site's SQLite FIS
file). Captures at GA and GB show which gateway each packet took; the site process records
when it first sent to GB (``time.monotonic``, the same clock across namespaces), so
``switch_ms`` = that time - the time the ISP's write committed.

``python -m examples.congestion.demo`` runs it as root (else the simulator) and prints JSON.
:func:`register` adds it to ``pcdemo``'s scenario registry.
"""

from __future__ import annotations

import functools
import json
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from examples.encryption.netsite import PacketSite, capture, raw_sender
from pcsock.wire import WireError, build_service_packet, parse

from .control import SERVICE_ID, CongestionPSP, IspCongestion

TOPOLOGY = Path(__file__).with_name("congestion.toml")
PSP = "adaptco"
DEST_PREFIX = "198.19.9.0/24"

__all__ = ["passed", "register", "run_simulator", "run_testbed"]


def _seqs(frames: list[bytes]) -> list[int]:
    """Sequence numbers of the tunnelled form-2 packets among ``frames``."""
    out = []
    for f in frames:
        if len(f) < 40 or f[9] != 4:
            continue
        try:
            inner = parse(f[20:])
        except WireError:
            continue
        out.append(struct.unpack("!I", bytes(inner.payload)[:4])[0])
    return out


def run_testbed(
    *, prefix: str = "pcx", n: int = 600, interval: float = 0.001, progress: Any = None
) -> dict[str, Any]:
    from testbed.net import Testbed

    res: dict[str, Any] = {"sent": n}
    with (
        tempfile.TemporaryDirectory(prefix="pcx-cg-") as tmp,
        Testbed.from_file(TOPOLOGY, prefix=prefix, progress=progress) as tb,
    ):
        c1 = PacketSite(tb, "C1", PSP, Path(tmp))
        try:
            ga, gb = tb.node("GA").address, tb.node("GB").address
            s_ip, d_ip = tb.node("S").address, tb.node("D").address
            assert ga and gb and s_ip and d_ip
            psp = CongestionPSP([c1])
            psp.deploy([ga, gb])
            psp.route(DEST_PREFIX, [ga, gb])
            isp = IspCongestion([c1])
            isp.publish(f"{ga}/32", 0.1)
            isp.publish(f"{gb}/32", 0.5)
            c1.start()
            at_a = capture(tb, "GA", "RA")
            at_b = capture(tb, "GB", "RB")
            tx = raw_sender(tb.node("S"))
            flip_at = n // 2
            t_flip = 0.0
            t0 = time.monotonic()
            for i in range(n):
                delay = t0 + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pkt = build_service_packet(
                    src=s_ip, dst=d_ip, service_id=SERVICE_ID, payload=struct.pack("!I", i) + b"x"
                )
                tx.sendto(pkt, (d_ip, 0))
                if i == flip_at:
                    isp.publish(f"{ga}/32", 0.95)  # the ISP sees A's link congested
                    t_flip = time.monotonic()
            via_a, via_b = _seqs(at_a.drain(0.3)), _seqs(at_b.drain(0.3))
            first_b = c1.stats()["first_sent_to"].get(gb)
            res["via_a"] = len(via_a)
            res["via_b"] = len(via_b)
            # sent at least 10 ms before the ISP's update (a site with a backlog may process
            # the last few after it)
            early = flip_at - int(0.010 / interval)
            res["a_before_flip"] = sum(s < early for s in via_a)
            res["b_before_flip"] = sum(s < early for s in via_b)
            res["a_after_switch"] = sum(s > min(via_b, default=n) for s in via_a)
            res["switch_ms"] = None if first_b is None else round((first_b - t_flip) * 1e3, 3)
            res["site_drops"] = c1.stats()["drops"]
        finally:
            c1.close()
    return res


def run_simulator(n: int = 400, interval: float = 0.0005) -> dict[str, Any]:
    """The same stream in ``pcsite_lite.sim`` (virtual time; FIS staleness 5 ms)."""
    from .scenario import GATEWAYS, build_world

    with tempfile.TemporaryDirectory(prefix="pcx-cg-") as tmp:
        w = build_world(Path(tmp) / "fis.sqlite")
        ga, gb = GATEWAYS["A"], GATEWAYS["B"]
        w.isp.publish(f"{ga}/32", 0.1)
        w.isp.publish(f"{gb}/32", 0.5)
        flip_at = n // 2
        t_flip = flip_at * interval + 0.0001
        for i in range(n):
            pkt = w.packet(struct.pack("!I", i) + b"x")
            w.net.schedule(i * interval, functools.partial(w.sender.send, pkt))
        w.net.schedule(t_flip, lambda: w.isp.publish(f"{ga}/32", 0.95))
        w.net.run()
        seq = {struct.unpack("!I", p[:4])[0]: g for _, g, p in w.via}
        via_b = [s for s, g in seq.items() if g == "B"]

        def at_site(s: int) -> float:
            return s * interval + 0.001  # the 1 ms access link; the site is at R1

        first_b = at_site(min(via_b))
        return {
            "sent": n,
            "via_a": sum(g == "A" for g in seq.values()),
            "via_b": len(via_b),
            "a_before_flip": sum(at_site(s) < t_flip and g == "A" for s, g in seq.items()),
            "b_before_flip": sum(at_site(s) < t_flip and g == "B" for s, g in seq.items()),
            "a_after_switch": sum(s > min(via_b) and g == "A" for s, g in seq.items()),
            "switch_ms": round((first_b - t_flip) * 1e3, 3),
            "site_drops": dict(w.site.site.drops),
        }


def passed(res: dict[str, Any]) -> bool:
    return bool(
        res["via_a"] + res["via_b"] == res["sent"]
        and res["b_before_flip"] == 0
        and res["a_after_switch"] == 0
        and res["switch_ms"] is not None
        and 0 <= res["switch_ms"] <= 10
    )


def register() -> None:
    """Add the demo to ``pcdemo``'s scenarios (testbed as root, else simulator)."""
    from pcdemo.scenarios import Outcome, World, scenario

    @scenario("congest", "congestion-aware forwarding follows the ISP's FIS (§2.2 form 2)")
    def congestion_scenario(world: World) -> Outcome:
        out = Outcome("congest")
        res = run_testbed() if world.kind == "testbed" else run_simulator()
        out.sent, out.received = res["sent"], res["via_a"] + res["via_b"]
        out.dropped = out.sent - out.received
        out.check("every packet tunnelled to a gateway", out.received == out.sent)
        out.check("less congested gateway before and after", passed(res))
        out.check("switch within 10 ms", res["switch_ms"] is not None and res["switch_ms"] <= 10)
        out.detail = f"switched {res['switch_ms']} ms after the ISP's update"
        return out


if __name__ == "__main__":
    import os

    result = run_testbed(progress=print) if os.geteuid() == 0 else run_simulator()
    print(json.dumps(result, indent=2))
    sys.exit(0 if passed(result) else 1)
