"""The mobility handoff experiment in the simulator (used by the tests and the benchmark).

The network is the namespace demo's, from the same file (``mobility.toml``; one-way link
delays)::

    CN ── Rcn[site C1] ──5ms── Rcore[site C2] ──20ms── Rhome ── HA (home of the mobile network)
            │                    │    └── PSP control host
           2ms                  2ms
            │                    │
           Rva ── MRA            Rvb ── MRB      (the mobile router's two access networks)

A correspondent node (CN) streams UDP to a device in the mobile network (HA's prefix) every
``interval`` seconds. The mobile router (MR) starts at access network A; at ``move_at`` it
leaves A (from then on, what reaches A is lost), attaches at B and sends its signed binding
update in a packet: to the PSP's control host (PacketCloud) or to the home agent (baseline,
Mobile IP triangle routing). We measure the handoff (from the binding update taking effect to
the first packet at the new address), the packets lost, and the one-way delay CN -> device
after the move, for both.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pcdemo.example_testbed import SimSite, addresses, sim_network
from pcsite_lite.sim import Host, Received
from pcsock.wire import build_ipv4, ip2int, parse

from .control import HomeAgent, MobileRouter, MobilityPSP

__all__ = ["HandoffResult", "run_handoff"]

TOPOLOGY = Path(__file__).with_name("mobility.toml")


def _net24(addr: str) -> str:
    return addr.rsplit(".", 1)[0] + ".0/24"


def _plan(topology: Path) -> dict[str, Any]:
    """The addresses the experiment uses, from the topology file."""
    a = addresses(topology)
    prefix = _net24(a["HA"])  # the mobile network: HA's prefix (its home)
    return {"ha": a["HA"], "cn": a["CN"], "psp": a["PSP"], "prefix": prefix,
            "device": prefix.rsplit(".", 1)[0] + ".5", "mr_a": a["MRA"], "mr_b": a["MRB"],
            "access": [_net24(a["MRA"]), _net24(a["MRB"])]}  # fmt: skip


_DATA = struct.Struct("!Id")  # sequence number, send time


@dataclass(frozen=True, slots=True)
class HandoffResult:
    mode: str  #: "packetcloud" or "home_agent"
    sent: int
    received: int
    lost: int
    lost_at_old_address: int  #: lost because they reached A after the MR left (in flight)
    duplicates: int
    update_time_ms: float  #: when the binding took effect (FIS write / home agent)
    first_new_ms: float  #: first packet at the new address
    handoff_ms: float  #: first_new_ms - update_time_ms
    in_flight_at_update: int  #: packets sent before the update that had not arrived yet
    delay_after_ms: float  #: mean one-way delay CN -> device after the handoff
    delay_before_ms: float  #: mean one-way delay before the move
    refused_updates: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _MR:
    """The mobile router's two attachments in the simulator (only one is live at a time)."""

    def __init__(self, router: MobileRouter) -> None:
        self.router = router
        self.live = "A"
        self.got: dict[int, float] = {}
        self.duplicates = 0
        self.lost_at_old = 0
        self.delays_before: list[float] = []
        self.delays_after: list[float] = []
        self.first_new: float | None = None

    def on(self, where: str, now_fn: Any) -> Any:
        def receive(host: Host, r: Received) -> None:
            if where != self.live:
                self.lost_at_old += 1
                return
            inner = self.router.decapsulate(r.data)
            if inner is None:
                return
            pkt = parse(inner)
            seq, sent = _DATA.unpack_from(bytes(pkt.payload), 8)
            if seq in self.got:
                self.duplicates += 1
                return
            now = now_fn()
            self.got[seq] = now
            (self.delays_after if where == "B" else self.delays_before).append(now - sent)
            if where == "B" and self.first_new is None:
                self.first_new = now

        return receive


def run_handoff(
    mode: str = "packetcloud",
    *,
    interval: float = 0.001,
    move_at: float = 0.2,
    duration: float = 0.4,
    seed: int = 1,
    topology: Path = TOPOLOGY,
) -> HandoffResult:
    """Run one handoff and measure it (simulated time)."""
    p = _plan(topology)
    prefix, device, cn_ip, ha_ip, psp_ip = p["prefix"], p["device"], p["cn"], p["ha"], p["psp"]
    mr_a, mr_b, access = p["mr_a"], p["mr_b"], p["access"]
    if mode not in ("packetcloud", "home_agent"):
        raise ValueError("mode is packetcloud or home_agent")
    sn = sim_network(topology, seed=seed)
    net, n = sn.net, sn.nodes
    cn, ha_host, mra, mrb, psp_host = n["CN"], n["HA"], n["MRA"], n["MRB"], n["PSP"]
    rcn, rcore, c1, c2 = n["Rcn"], n["Rcore"], n["C1"], n["C2"]

    router = MobileRouter(prefix)
    mr = _MR(router)
    mra.on_receive = mr.on("A", lambda: net.now)
    mrb.on_receive = mr.on("B", lambda: net.now)
    ha = HomeAgent(ha_ip)
    # the baseline's home agent verifies the same signed updates but writes no site FIS
    sites = [SimSite(c1, "mobpsp", router=rcn), SimSite(c2, "mobpsp", router=rcore)]
    psp = MobilityPSP(
        prefix,
        router.public_key,
        sites if mode == "packetcloud" else [],
        access_prefixes=access,
    )
    update_time: list[float] = []

    if mode == "packetcloud":
        psp.deploy()

        def psp_receive(host: Host, r: Received) -> None:
            if psp.handle_update(bytes(r.packet.payload)[8:]) is not None:
                update_time.append(net.now)

        psp_host.on_receive = psp_receive
        psp.handle_update(router.move_to(mr_a))  # initial binding, before traffic
        bu_dst = psp_ip
    else:

        def ha_receive(host: Host, r: Received) -> None:
            pkt = r.packet
            if pkt.dst == ha_addr:  # a binding update for the home agent
                b = psp.handle_update(bytes(pkt.payload)[8:])
                if b is not None:
                    ha.care_of = b.care_of
                    update_time.append(net.now)
                return
            out = ha.tunnel(r.data)
            if out is not None:
                host.send(out)

        ha_addr = ip2int(ha_ip)
        ha_host.on_receive = ha_receive
        psp.handle_update(router.move_to(mr_a))
        ha.care_of = mr_a
        bu_dst = ha_ip

    sent: dict[int, float] = {}
    n_packets = int(duration / interval)

    def send(seq: int) -> None:
        udp = struct.pack("!HHHH", 40000, 5004, 8 + _DATA.size, 0) + _DATA.pack(seq, net.now)
        sent[seq] = net.now
        cn.send(build_ipv4(src=cn_ip, dst=device, proto=17, payload=udp, ident=seq & 0xFFFF))

    for i in range(n_packets):
        net.schedule(i * interval, functools.partial(send, i))

    def move() -> None:
        mr.live = "B"
        bu = router.move_to(mr_b)
        udp = struct.pack("!HHHH", 5005, 5005, 8 + len(bu), 0) + bu
        mrb.send(build_ipv4(src=mr_b, dst=bu_dst, proto=17, payload=udp))

    net.schedule(move_at, move)
    net.run()

    t_update = update_time[-1] if update_time else float("nan")
    first_new = mr.first_new if mr.first_new is not None else float("nan")
    in_flight = sum(1 for s, t in sent.items() if t <= t_update and mr.got.get(s, 1e9) > t_update)
    received = len(mr.got)

    def mean(xs: list[float]) -> float:
        return 1e3 * sum(xs) / len(xs) if xs else float("nan")

    return HandoffResult(
        mode=mode,
        sent=len(sent),
        received=received,
        lost=len(sent) - received,
        lost_at_old_address=mr.lost_at_old,
        duplicates=mr.duplicates,
        update_time_ms=t_update * 1e3,
        first_new_ms=first_new * 1e3,
        handoff_ms=(first_new - t_update) * 1e3,
        in_flight_at_update=in_flight,
        delay_after_ms=mean(mr.delays_after),
        delay_before_ms=mean(mr.delays_before),
        refused_updates=len(psp.refused),
    )
