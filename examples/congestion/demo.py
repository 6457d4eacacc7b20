"""The congestion-aware forwarding demo with real packets in a namespace testbed.

:func:`run_testbed` builds ``congestion.toml`` (or ``--topology FILE``; prefix ``pcx`` + a run
id; always torn down), runs the service on the real site daemon (``pcsite run``) at C1 (the
ISP registers its form-2 service ID through the control API, with the gateways GA and GB as
the only tunnel end points), and streams form-2 packets from S to D, one per ``interval``; R1
diverts them to C1 (the testbed's policy routing for flagged packets). The ISP first reports
gateway A's link less congested; midway it reports A congested (a longest-prefix entry in its
FIS namespace, through the control API). Captures at GA and GB show which gateway each packet
took; ``switch_ms`` = the kernel's arrival time of the first packet at GB - the time the ISP's
write was acknowledged - the configured delay of the link R1 -- RB.
"""

from __future__ import annotations

import functools
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pcdemo.example_testbed import ExampleTestbed, Needs, load_topology, main, probe_until
from pcsock.wire import WireError, build_service_packet, parse

from .control import SERVICE, SERVICE_ID, CongestionPSP, IspCongestion

PREFIX = "pcx"  #: its testbed's name prefix
TOPOLOGY = Path(__file__).with_name("congestion.toml")
PSP = "adaptco"
#: S -- R1 (site C1); R1 -- RA -- GA and R1 -- RB -- GB (the gateways); D behind RD
NEEDS = Needs(
    hosts=("S", "GA", "GB", "D"),
    routers=("R1", "RA", "RB"),
    sites=("C1",),
    links=(("R1", "RB"), ("RA", "GA"), ("RB", "GB")),
)

#: packets sent this long before the ISP's update count as "before" (a site with a backlog
#: processes the last ones after it; a loaded 2-vCPU machine has shown backlogs of 40 ms)
EARLY_S = 0.050
#: the bound the checks hold the switch to: the paper's "within 10 ms" is met in quiet runs
#: (median 5.9 ms on the daemon); a loaded 2-vCPU CI machine has taken 11 ms
SWITCH_BOUND_MS = 20.0

__all__ = ["SCENARIO", "on_simulator", "on_testbed", "outcome", "passed"]


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


def on_testbed(
    etb: ExampleTestbed, topo: Any, *, n: int = 600, interval: float = 0.001
) -> dict[str, Any]:
    link_ms = next(lk.delay_ms for lk in topo.links if {lk.a, lk.b} == {"R1", "RB"})
    res: dict[str, Any] = {"sent": n}
    # the ISP registers the service ID and publishes
    c1 = etb.site("C1", PSP, isp=True)
    ga, gb = etb.address("GA"), etb.address("GB")
    s_ip, d_ip = etb.address("S"), etb.address("D")
    psp = CongestionPSP([c1])
    psp.deploy([ga, gb])
    psp.route(str(topo.nodes["D"].prefix), [ga, gb])
    isp = IspCongestion([c1])
    isp.publish(f"{ga}/32", 0.1)
    isp.publish(f"{gb}/32", 0.5)
    at_a = etb.capture("GA", "RA")
    at_b = etb.capture("GB", "RB")
    tx = etb.raw_sender("S")

    def probe(i: int) -> None:
        tx.sendto(build_service_packet(src=s_ip, dst=d_ip, service_id=SERVICE_ID,
                                       payload=b"probe%05d" % i), (d_ip, 0))  # fmt: skip

    # the service, its route and the ISP's figures in effect where the stream is served (on
    # a multi-machine site: the compute node the LB gives the flow) before the stream starts:
    # packets sent at once were dropped by a worker that had not polled the FIS yet (18 of
    # 600 on a 3-node site)
    res["probes"] = probe_until(probe, lambda i: at_a.saw(b"probe%05d" % i))
    etb.wait_served(c1, SERVICE, res["probes"])  # C1 ran the service on every probe
    served0 = int(c1.counters(SERVICE).get("packets", 0))
    at_a.forget()
    at_b.forget()
    flip_at = n // 2
    t_flip = 0.0
    sent_at: list[float] = []
    t0 = time.monotonic()
    for i in range(n):
        delay = t0 + i * interval - time.monotonic()
        if delay > 0:  # pacing: one packet per ``interval`` (the switch time's resolution)
            time.sleep(delay)
        pkt = build_service_packet(
            src=s_ip, dst=d_ip, service_id=SERVICE_ID, payload=struct.pack("!I", i) + b"x"
        )
        sent_at.append(time.time())
        tx.sendto(pkt, (d_ip, 0))
        if i == flip_at:
            isp.publish(f"{ga}/32", 0.95)  # the ISP sees A's link congested
            t_flip = time.time()
    # C1 has run its service on every packet before the captures are read (a loaded
    # site can outlast a capture's quiet period)
    etb.wait_served(c1, SERVICE, max(n, served0 + n))
    via_a, via_b = _seqs(at_a.drain(0.3)), _seqs(at_b.drain(0.3))
    first_b = min((t for t, f in zip(at_b.times, at_b.seen, strict=True) if _seqs([f])),
                  default=None)  # fmt: skip
    # how long each packet took from S to its gateway (the site's queue is most of it)
    took = sorted(
        (t - sent_at[s]) * 1e3
        for cap in (at_a, at_b)
        for t, f in zip(cap.times, cap.seen, strict=True)
        for s in _seqs([f])
        if 0 <= s < n
    )
    res["transit_ms_median"] = round(took[len(took) // 2], 3) if took else None
    res["transit_ms_max"] = round(took[-1], 3) if took else None
    res["via_a"] = len(via_a)
    res["via_b"] = len(via_b)
    # sent at least EARLY_S before the ISP's update
    early = flip_at - int(EARLY_S / interval)
    res["a_before_flip"] = sum(s < early for s in via_a)
    res["b_before_flip"] = sum(s < early for s in via_b)
    res["a_after_switch"] = sum(s > min(via_b, default=n) for s in via_a)
    res["switch_ms"] = None if first_b is None else round((first_b - t_flip) * 1e3 - link_ms, 3)
    res["service_drops"] = c1.counters(SERVICE).get("drops", 0)
    for sock in (tx, at_a, at_b):
        sock.close()
    return res


def on_simulator(topology: Path, *, n: int = 400, interval: float = 0.0005) -> dict[str, Any]:
    """The same stream in ``pcsite_lite.sim`` (virtual time; FIS staleness 5 ms)."""
    from .scenario import build_world

    topo = load_topology(topology, NEEDS)
    access = next((lk.delay_ms for lk in topo.links if {lk.a, lk.b} == {"S", "R1"}), 0.0) / 1e3
    with tempfile.TemporaryDirectory(prefix="pcx-cg-") as tmp:
        w = build_world(Path(tmp) / "fis.sqlite", topology=topology)
        ga, gb = w.gateways["A"].ip, w.gateways["B"].ip
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
            return s * interval + access  # over the access link; the site is at R1

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
            "service_drops": sum(d.reason == "service_drop" for d in w.site.site.drops),
        }


def passed(res: dict[str, Any]) -> bool:
    return bool(
        res["via_a"] + res["via_b"] == res["sent"]
        and res["b_before_flip"] == 0
        and res["a_after_switch"] == 0
        and res["switch_ms"] is not None
        and 0 <= res["switch_ms"] <= SWITCH_BOUND_MS
    )


#: the demo's row in ``python -m pcdemo`` (:func:`pcdemo.scenarios.example_scenario`)
SCENARIO = ("congest", "congestion-aware forwarding follows the ISP's FIS (§2.2 form 2)")


def outcome(out: Any, res: dict[str, Any]) -> None:
    out.sent, out.received = res["sent"], res["via_a"] + res["via_b"]
    out.dropped = out.sent - out.received
    out.check("every packet tunnelled to a gateway", out.received == out.sent)
    out.check("less congested gateway before and after", passed(res))
    out.check(
        f"switch within {SWITCH_BOUND_MS:g} ms",
        res["switch_ms"] is not None and res["switch_ms"] <= SWITCH_BOUND_MS,
    )
    out.detail = f"switched {res['switch_ms']} ms after the ISP's update"
    if out.dropped:
        out.detail += f"; C1's service dropped {res.get('service_drops', '?')}"


if __name__ == "__main__":
    sys.exit(main(sys.modules[__name__]))
