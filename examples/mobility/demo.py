"""The mobility demo with real packets in a namespace testbed (and its simulator twin).

:func:`run_testbed` builds ``mobility.toml`` (or ``--topology FILE``; prefix ``pce`` + a run
id; always torn down), runs the mobility service on the real site daemons (``pcsite run``) at C1
and C2 (signed upload; the mobile network's prefix signed up with a DNSSEC ownership proof, the
ISP approving the access networks as redirect prefixes; bindings written on line through the
control API), and streams UDP from CN to a device of the mobile network every millisecond.

1. **Handoff**: the mobile router starts at A; mid-stream it leaves A (what reaches A from then
   on is lost), and MRB sends its Ed25519-signed binding update in a UDP packet to the PSP's
   control host, which verifies it and writes both sites' FIS. Measured in real time: from the
   binding taking effect (FIS written) to the first packet at B (``mobility_handoff_ms``, as in
   the simulator), its parts (update arrival -> FIS written -> the site's first packet to B),
   packets lost, and the one-way delay CN -> device before and after.
2. **Baseline**: the sites' diversion is removed and a home agent process on the home network
   tunnels to B instead (Mobile IP triangle routing): the one-way delay CN -> device, for the
   path-length ratio.

Delays are medians over the packets (``*_mean_ms`` too): the ratio compares the paths'
lengths, and a loaded machine's queueing (one CI run: the site's mean 46.7 ms against a
median of a few ms) is not part of a path's length.
"""

from __future__ import annotations

import json
import socket
import statistics
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pcdemo.example_testbed import (
    ExampleTestbed,
    Needs,
    iface,
    main,
    probe_until,
    wait_until,
    write_atomic,
)

from .control import SERVICE, MobileRouter, MobilityPSP
from .ipip import TunnelError, decapsulate

PREFIX = "pce"  #: its testbed's name prefix
TOPOLOGY = Path(__file__).with_name("mobility.toml")
#: the correspondent CN, the mobile network's home HA (its prefix is the mobile network's), the
#: mobile router's two access networks (MRA behind Rva, MRB behind Rvb), the PSP's control host
NEEDS = Needs(
    hosts=("CN", "HA", "MRA", "MRB", "PSP"),
    routers=("Rva", "Rvb", "Rhome"),
    sites=("C1", "C2"),
    links=(("Rva", "MRA"), ("Rvb", "MRB"), ("Rhome", "HA")),
)
PSP_NAME = "mobpsp"
PORT = 5004
BU_PORT = 5005
PROBE_SEQ = 900_000  #: sequence numbers of the probes before the stream (left out)
ETH_P_IP = 0x0800
_DATA = struct.Struct("!Id")

__all__ = ["SCENARIO", "on_simulator", "on_testbed", "outcome"]


class Receiver:
    """The mobile router at one access network: captures and decapsulates tunnel packets."""

    def __init__(self, node: Any, iface: str, local: str) -> None:
        def mk() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
            s.bind((iface, ETH_P_IP))
            s.settimeout(0.05)
            return s

        self.sock = node.call(mk)
        self.local = local
        self.live = False
        self.got: dict[int, tuple[float, float]] = {}  # seq -> (sent, received)
        self.lost = 0
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            try:
                data, addr = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            now = time.monotonic()
            if addr[2] == 4 or len(data) < 20 or data[9] != 4:
                continue
            if not self.live:
                self.lost += 1
                continue
            try:
                inner = decapsulate(data, local=self.local)
            except TunnelError:
                continue
            ihl = (inner[0] & 15) * 4
            if len(inner) < ihl + 8 + _DATA.size:
                continue
            seq, sent = _DATA.unpack_from(inner, ihl + 8)
            self.got.setdefault(seq, (sent, now))

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.sock.close()


def _stream(node: Any, device: str, seconds: float, start_seq: int, interval: float = 0.001,
            *, sock: socket.socket | None = None, progress: dict[str, int] | None = None,
            ) -> int:  # fmt: skip
    """Send UDP to the device every ``interval`` from ``node`` (a thread) for ``seconds``;
    return the count (also kept in ``progress["n"]`` as it goes). ``sock``: send from this
    socket (the same flow as earlier probes: a multi-machine site's LB sends a flow to one
    compute node); else a new one."""
    own = sock is None
    s = node.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) if own else sock
    n = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        s.sendto(_DATA.pack(start_seq + n, time.monotonic()), (device, PORT))
        n += 1
        if progress is not None:
            progress["n"] = n
        next_t = t0 + n * interval
        delay = next_t - time.monotonic()
        if delay > 0:  # pacing: one packet per ``interval`` (the handoff's resolution)
            time.sleep(delay)
    if own:
        s.close()
    return n


def _mean_ms(xs: list[float]) -> float:
    return 1e3 * sum(xs) / len(xs) if xs else float("nan")


def _median_ms(xs: list[float]) -> float:
    return 1e3 * statistics.median(xs) if xs else float("nan")


def _proof(prefix: str, now: float) -> tuple[str, str]:
    """(proof that PSP_NAME may run the mobility service for ``prefix``, trust anchor)."""
    from pcsock.ownership import OwnershipClaim, ZoneKey, build_proof, reverse_zone

    root = ZoneKey.generate("in-addr.arpa.")
    own = ZoneKey.generate(reverse_zone(prefix))
    claim = OwnershipClaim(prefix, PSP_NAME, SERVICE, now - 3600, now + 86400)
    proof = build_proof([claim], own, chain=[root], inception=now - 60, expiration=now + 3600)
    return proof.text, root.ds_text()


def on_testbed(etb: ExampleTestbed, topo: Any) -> dict[str, Any]:
    """Build the testbed, run the handoff and the baseline with real packets."""
    import ipaddress

    mobile = str(topo.nodes["HA"].prefix)  # the mobile network's (home) prefix
    device = str(ipaddress.IPv4Network(mobile)[5])
    access = [str(topo.nodes[h].prefix) for h in ("MRA", "MRB")]
    res: dict[str, Any] = {}
    receivers: list[Receiver] = []
    tb = etb.tb
    proof, anchor = _proof(mobile, time.time())
    # the ISP registers the prefix for the PSP: it approves the access networks as where
    # the service may tunnel to (redirect prefixes)
    sites = [etb.site(n, PSP_NAME, trust_anchor=anchor, isp=True) for n in ("C1", "C2")]
    try:
        a_ip, b_ip, psp_ip = etb.address("MRA"), etb.address("MRB"), etb.address("PSP")
        router = MobileRouter(mobile)
        psp = MobilityPSP(mobile, router.public_key, sites, access_prefixes=access,
                          proof=proof)  # fmt: skip
        psp.deploy()
        for s in sites:
            etb.divert(s.name, mobile)  # the ISP's routers, after the sign-up
        assert psp.handle_update(router.move_to(a_ip)) is not None
        at_a = Receiver(tb.node("MRA"), iface(tb, "MRA", "Rva"), a_ip)
        at_b = Receiver(tb.node("MRB"), iface(tb, "MRB", "Rvb"), b_ip)
        receivers = [at_a, at_b]
        at_a.live = True
        # warm the neighbour (ARP) caches on both access paths, as in a running network
        for target in (a_ip, b_ip):
            tb.node("C1").run(["ping", "-c", "2", "-i", "0.2", "-W", "1", "-q", target])
        # the PSP's control host receives binding updates over UDP
        bu_sock = tb.node("PSP").call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        bu_sock.bind((psp_ip, BU_PORT))
        bu_sock.settimeout(2.0)
        times: dict[str, float] = {}

        def psp_server() -> None:
            try:
                raw, _ = bu_sock.recvfrom(2048)
            except TimeoutError:
                return
            times["bu_arrived"] = time.monotonic()
            if psp.handle_update(raw) is not None:
                times["fis_written"] = time.monotonic()

        server = threading.Thread(target=psp_server)
        server.start()
        # the binding (care-of A) in effect where the stream's flow is served (its worker
        # polled the FIS; on a multi-machine site, the flow's compute node), and the paths
        # warm: a probe on the stream's own flow reached A
        cn = tb.node("CN").call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

        def probe(i: int) -> None:
            cn.sendto(_DATA.pack(PROBE_SEQ + i, time.monotonic()), (device, PORT))

        res["probes"] = probe_until(probe, lambda i: PROBE_SEQ + i in at_a.got)
        wait_until(lambda: all(PROBE_SEQ + i in at_a.got for i in range(res["probes"])), 0.5)
        for i in range(res["probes"]):  # not part of the figures
            at_a.got.pop(PROBE_SEQ + i, None)
        sent_box: dict[str, int] = {}
        progress = {"n": 0}
        sender = threading.Thread(target=lambda: sent_box.setdefault(
            "n", _stream(tb.node("CN"), device, 0.8, 0, sock=cn, progress=progress)))  # fmt: skip
        sender.start()
        # the handoff mid-stream: once half of the 0.8 s stream (400 packets) is sent and A
        # receives it
        half = int(0.4 / 0.001)
        wait_until(lambda: progress["n"] >= half and len(at_a.got) > 0, timeout=10)
        # the handoff: leave A, attach at B, send the signed update from B
        at_a.live = False
        at_b.live = True
        times["moved"] = time.monotonic()
        bu = router.move_to(b_ip)
        mr_sock = tb.node("MRB").call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        mr_sock.sendto(bu, (psp_ip, BU_PORT))
        mr_sock.close()
        sender.join()
        server.join()
        cn.close()
        sent = sent_box["n"]
        # the packets still in flight: every one sent has arrived at B, or at A after the
        # move (lost there); one lost on the way ends the wait after 3 s
        wait_until(lambda: len(at_a.got) + len(at_b.got) + at_a.lost >= sent, timeout=3)
        got = {**at_a.got, **at_b.got}
        first_b = min((r for _, r in at_b.got.values()), default=float("nan"))
        res["sent"] = sent
        res["received"] = len(got)
        res["packets_lost"] = sent - len(got)
        res["lost_at_old_address"] = at_a.lost
        # as in the simulator: from the binding taking effect (FIS written) to the first
        # packet at the new address; and the parts of it
        res["mobility_handoff_ms"] = (first_b - times["fis_written"]) * 1e3
        res["bu_arrival_to_first_at_b_ms"] = (first_b - times["bu_arrived"]) * 1e3
        res["bu_to_fis_written_ms"] = (times["fis_written"] - times["bu_arrived"]) * 1e3
        res["move_to_first_packet_at_b_ms"] = (first_b - times["moved"]) * 1e3
        before = [r - s for s, r in at_a.got.values()]
        after = [r - s for s, r in at_b.got.values()]
        res["delay_before_ms"], res["delay_before_mean_ms"] = _median_ms(before), _mean_ms(before)
        res["delay_after_ms"], res["delay_after_mean_ms"] = _median_ms(after), _mean_ms(after)
        res["service_drops"] = {s.name: s.counters(SERVICE).get("drops", 0) for s in sites}
        # baseline: no diversion; the home agent tunnels from the home network
        for s in sites:
            tb.divert(tb.site(s.name).router, mobile, remove=True)
        state = etb.path("ha.json")
        write_atomic(state, json.dumps({"care_of": b_ip}))  # the home agent polls it
        ha_if = iface(tb, "HA", "Rhome")
        ha_ip = tb.node("HA").address
        tb.node("HA").start(
            [sys.executable, "-m", "examples.mobility.homeagent", ha_if, str(ha_ip),
             mobile, device, str(state)],
            name="homeagent",
            ready=lambda: any("homeagent up" in p.read_text() for p in
                              (tb.run_state.dir / "logs").glob("HA-homeagent-*.log")),
            timeout=20,
        )  # fmt: skip
        at_b.got.clear()
        base = _stream(tb.node("CN"), device, 0.3, 100_000)
        wait_until(lambda: len(at_b.got) >= base, timeout=3)  # the last ones in flight
        res["home_agent_sent"] = base
        res["home_agent_received"] = len(at_b.got)
        via_ha = [r - s for s, r in at_b.got.values()]
        res["home_agent_delay_ms"] = _median_ms(via_ha)
        res["home_agent_delay_mean_ms"] = _mean_ms(via_ha)
        res["path_length_ratio_vs_triangle"] = res["delay_after_ms"] / res["home_agent_delay_ms"]
    finally:
        for r in receivers:
            r.close()
    return res


def on_simulator(topology: Path) -> dict[str, Any]:
    """The same experiment in ``pcsite_lite.sim`` (simulated time)."""
    from .scenario import run_handoff

    pc, ha = (
        run_handoff("packetcloud", topology=topology),
        run_handoff("home_agent", topology=topology),
    )
    return {
        "sent": pc.sent,
        "received": pc.received,
        "packets_lost": pc.lost,
        "lost_at_old_address": pc.lost_at_old_address,
        "mobility_handoff_ms": pc.handoff_ms,
        "delay_after_ms": pc.delay_after_ms,
        "home_agent_delay_ms": ha.delay_after_ms,
        "path_length_ratio_vs_triangle": pc.delay_after_ms / ha.delay_after_ms,
    }


def passed(res: dict[str, Any]) -> bool:
    return bool(
        res["mobility_handoff_ms"] <= 10.0 + res["delay_after_ms"]
        and res["packets_lost"] == res["lost_at_old_address"]
        and res["path_length_ratio_vs_triangle"] < 0.5
    )


#: the demo's row in ``python -m pcdemo`` (:func:`pcdemo.scenarios.example_scenario`)
SCENARIO = ("mobility", "in-network mobility: handoff vs home agent (§2.6.1)")


def outcome(out: Any, res: dict[str, Any]) -> None:
    out.sent, out.received = res["sent"], res["received"]
    out.dropped = res["packets_lost"]
    out.latency_ms = round(res["delay_after_ms"], 3)
    # the update must reach the site within 10 ms; the rest is the path to the new address
    out.check(
        "handoff <= 10 ms + path delay",
        res["mobility_handoff_ms"] <= 10.0 + res["delay_after_ms"],
    )
    out.check("only in-flight packets lost", res["packets_lost"] == res["lost_at_old_address"])
    out.check("shorter than triangle routing", res["path_length_ratio_vs_triangle"] < 0.5)
    out.detail = (
        f"handoff {res['mobility_handoff_ms']:.1f} ms, {res['packets_lost']} lost, path "
        f"{res['path_length_ratio_vs_triangle']:.2f}x the home agent's"
    )


if __name__ == "__main__":
    sys.exit(main(sys.modules[__name__]))
