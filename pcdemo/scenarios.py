"""The PacketCloud demo: every service form end to end on the paper's Fig. 2 network.

``python -m pcdemo`` (``./quickstart demo``) runs each registered scenario and prints a
table (pass/fail, packets sent/received/dropped, median latency); it exits 1 if any scenario
did not pass. As root it builds the Fig. 2 testbed (``testbed/topologies/fig2.toml``: Linux
namespaces, legacy routers with policy routing, knot DNS, real site daemons) and sends real
packets; without root it runs the same scenarios on the in-memory simulator
(:mod:`pcsite_lite.sim`, same topology, the real site pipeline) and says so.

Scenarios (paper §2.1-2.2):

form1      S -> C2 -> C3 -> D through a circuit from the PSP's lookup service; D answers S
           at the shim's original source.
form2      service-ID packets to D with the DSCP flag; R1's policy routing diverts them to C1,
           whose service marks them.
form3      D's owner signs up (DNSSEC proof of 198.18.64.0/24); a forged proof is refused; R1
           then diverts traffic for D to C1, whose firewall drops port 7 and passes port 9.
form1+3    the circuit of form1 towards D, with D's firewall registered at the circuit's sites:
           the receiver's service runs first, and what it drops never reaches the sender's.

Adding a scenario: write ``def my_scenario(world: World) -> Outcome`` using the
:class:`World` methods and decorate it with ``@scenario("name", "title")``; it is then run by
both worlds (``--only name`` runs just it). The example services (``examples/<name>/demo.py``)
add theirs from their ``register()`` (:func:`load_examples`).

This package sits above the SDK (``pcsock``), the site (``pcsite_lite``) and the testbed
(``testbed``) and is the only one that needs all three (docs/architecture.md, "Packages").
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import statistics
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pcsock import wire
from pcsock.session import Circuit, Datagram, Session

__all__ = [
    "SCENARIOS",
    "Missing",
    "Outcome",
    "Scenario",
    "SimWorld",
    "World",
    "main",
    "run_scenarios",
    "scenario",
]

TOPOLOGY = Path(__file__).resolve().parent.parent / "testbed" / "topologies" / "fig2.toml"
PSP = "acme"
D_PREFIX = "198.18.64.0/24"
SERVICE_ID = 0x00C0DE
MARK = 0x2B
ALLOWED_PORT, BLOCKED_PORT = 9, 7
N = 20  #: packets per flow

# The demo's services, in the site's sandboxed service language (pcsite_lite.api).
SRCROUTE = """\
# Loose source routing (paper §2.1): the site follows the out hop the PSP installed.
def process(pkt):
    pass
"""
MARKER = """\
# A network-wide service (form 2): stamp the metadata to show the packet was served here.
def process(pkt):
    pkt.shim.update(metadata=0x2B)
"""
FIREWALL = """\
# Destination-controlled firewall (form 3): drop UDP to port 7, pass the rest.
def process(pkt):
    head = pkt.read(0, 4)
    if len(head) == 4 and head[2] * 256 + head[3] == 7:
        pkt.drop("port 7 is closed by the destination")
"""


# --- results and registry -------------------------------------------------------------------


class Missing(Exception):
    """A piece a scenario needs is not available; the message says which."""


@dataclass
class Outcome:
    """One scenario's result (one row of the table)."""

    name: str
    title: str = ""
    status: str = "fail"  #: "pass", "fail" or "missing"
    sent: int = 0
    received: int = 0
    dropped: int = 0
    latency_ms: float | None = None  #: median one-way (or round-trip, see detail) latency
    detail: str = ""
    checks: list[tuple[str, bool]] = field(default_factory=list)
    #: the ways its packets went, for ``--report`` pictures: ``{"name", "hops", "labels",
    #: "note"}`` with hops naming nodes of Fig. 2 (``testbed graph``'s overlay paths)
    paths: list[dict[str, Any]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)  #: every delivered packet's
    counts: dict[str, str] = field(default_factory=dict)  #: node -> what was counted there

    def check(self, what: str, ok: bool) -> bool:
        self.checks.append((what, bool(ok)))
        return bool(ok)

    def finish(self) -> Outcome:
        if self.status != "missing":
            failed = [w for w, ok in self.checks if not ok]
            self.status = "pass" if self.checks and not failed else "fail"
            if failed:
                self.detail = "; ".join(["FAILED: " + ", ".join(failed), self.detail]).strip("; ")
        return self


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: Callable[[World], Outcome]


#: The registered scenarios, in run order.
SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, title: str) -> Callable[[Callable[[World], Outcome]], Callable]:
    """Register ``fn(world) -> Outcome`` as a demo scenario."""

    def deco(fn: Callable[[World], Outcome]) -> Callable[[World], Outcome]:
        SCENARIOS[name] = Scenario(name, title, fn)
        return fn

    return deco


def probe(seq: int, t: float) -> bytes:
    """A demo payload: sequence number and send time."""
    return struct.pack("!Id", seq, t) + b" pcsock demo"


def unprobe(payload: bytes) -> tuple[int, float] | None:
    if len(payload) < 12:
        return None
    seq, t = struct.unpack_from("!Id", payload)
    return seq, t


def _median_ms(values: list[float]) -> float | None:
    return round(statistics.median(values) * 1e3, 3) if values else None


def _all_ms(values: list[float]) -> list[float]:
    return [round(v * 1e3, 4) for v in values]


def _path(name: str, hops: list[str], note: str, labels: list[int | None] | None = None
          ) -> dict[str, Any]:  # fmt: skip
    return {"name": name, "hops": hops, "labels": labels or [None] * len(hops), "note": note}


# --- the worlds ------------------------------------------------------------------------------


class World:
    """What scenarios drive: the Fig. 2 network, its PSP and its DNS (testbed or simulator)."""

    kind = "abstract"
    hosts: dict[str, str]  #: host name -> address
    sites: dict[str, str]  #: site name -> public IP
    routers: dict[str, str]  #: site name -> co-located router name

    def now(self) -> float:
        raise NotImplementedError

    def deploy(self, sites: list[str], service: str, source: str) -> None:
        raise NotImplementedError

    def circuit(self, src: str, dst: str, service: str, sites: list[str]) -> Circuit:
        raise NotImplementedError

    def teardown(self, circuit: Circuit) -> None:
        raise NotImplementedError

    def register_service_id(self, site: str, service_id: int, service: str) -> None:
        raise NotImplementedError

    def signup(self, prefix: str, service: str, sites: list[str], *, forged: bool = False) -> None:
        """The prefix owner's DNSSEC sign-up at ``sites`` (raises OwnershipRejected-like
        :class:`RuntimeError` with the site's error if refused)."""
        raise NotImplementedError

    def send_circuit(
        self, host: str, circuit: Circuit, payload: bytes, *, metadata: int = 0, dport: int = 0
    ) -> None:
        raise NotImplementedError

    def send_service(
        self, host: str, dst: str, service_id: int, payload: bytes, *, metadata: int = 0,
        dport: int = 0,
    ) -> None:  # fmt: skip
        raise NotImplementedError

    def send_plain(self, host: str, dst: str, dport: int, payload: bytes) -> None:
        raise NotImplementedError

    def reply(self, host: str, to: Datagram, payload: bytes) -> None:
        raise NotImplementedError

    def collect(self, host: str, want: int, timeout: float = 1.0) -> list[tuple[Datagram, float]]:
        """Up to ``want`` datagrams ``host`` received (with their arrival times)."""
        raise NotImplementedError

    def service_packets(self, site: str, service: str) -> int:
        """Packets ``PSP``'s ``service`` processed at ``site``."""
        raise NotImplementedError

    def site_drops(self, site: str) -> dict[str, int]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _fig2() -> tuple[dict[str, str], dict[str, str], dict[str, str], list[tuple[str, str, float]]]:
    """(hosts, sites, site -> router, links with delay in s) of Fig. 2, from the testbed's
    topology file (so the simulator and the testbed are the same network)."""
    from testbed.plan import make
    from testbed.topology import load

    topo = load(TOPOLOGY)
    plan = make(topo)
    hosts = {n: str(p.address) for n, p in plan.nodes.items() if p.kind in ("host", "router")}
    sites = {n: str(p.public_ip) for n, p in plan.nodes.items() if p.kind == "site"}
    routers = {n: str(topo.nodes[n].router) for n in sites}
    links = [(lk.a, lk.b, lk.delay_ms / 1e3) for lk in topo.links]
    return hosts, sites, routers, links


class SimWorld(World):
    """Fig. 2 in :mod:`pcsite_lite.sim`: real site pipelines, simulated links, virtual time."""

    kind = "simulator"

    def __init__(self) -> None:
        from pcsite_lite import sim
        from pcsite_lite.table_control import TableSiteControl
        from pcsock.lookup import BrokerClient, CircuitBroker, SiteEntry

        hosts, sites, routers, links = _fig2()
        self.net = net = sim.Network(seed=1, trace=False)
        self.sites = sites
        self.routers = routers
        self.hosts = {}
        self.nodes: dict[str, Any] = {}
        kinds = {}
        from testbed.topology import load

        topo = load(TOPOLOGY)
        for name, spec in topo.nodes.items():
            kinds[name] = spec.kind
        for name, kind in kinds.items():
            if kind == "router":
                self.nodes[name] = net.router(name, hosts[name])
            elif kind == "host":
                self.nodes[name] = net.host(name, hosts[name])
                self.hosts[name] = hosts[name]
        for name, ip in sites.items():
            self.nodes[name] = net.site(name, ip, router=self.nodes[routers[name]])
        for a, b, delay in links:
            if a in self.nodes and b in self.nodes and kinds.get(a) != "site" != kinds.get(b):
                net.link(self.nodes[a], self.nodes[b], delay=delay)
        net.compute_routes()
        self.sessions = {h: Session(ip, mode="ip") for h, ip in self.hosts.items()}
        self._seen: dict[str, int] = {h: 0 for h in self.hosts}
        entries = [
            SiteEntry(n, ip, TableSiteControl(self.nodes[n].site.circuits, psp=PSP, clock=self.now))
            for n, ip in sites.items()
        ]
        self.broker = CircuitBroker(PSP, entries, clock=self.now)
        self.lookup = BrokerClient(self.broker)

    def now(self) -> float:
        return float(self.net.now)

    def _site(self, name: str) -> Any:
        return self.nodes[name].site

    def deploy(self, sites: list[str], service: str, source: str) -> None:
        for s in sites:
            self._site(s).deploy(PSP, service, source)

    def circuit(self, src: str, dst: str, service: str, sites: list[str]) -> Circuit:
        return self.lookup.create(
            destination=self.hosts[dst], service=service, source=self.hosts[src], sites=sites
        )

    def teardown(self, circuit: Circuit) -> None:
        self.lookup.teardown(circuit)

    def register_service_id(self, site: str, service_id: int, service: str) -> None:
        self._site(site).register_service_id(service_id, PSP, service)

    def signup(self, prefix: str, service: str, sites: list[str], *, forged: bool = False) -> None:
        from pcsock import ownership

        proof, anchor = _make_proof(prefix, service, forged=forged, now=time.time())
        for s in sites:
            # exactly what the site's control API does before it registers a destination
            try:
                ownership.validate_proof(
                    proof, prefix, anchor, time.time(), owner=PSP, service=service
                )
            except ownership.OwnershipError as exc:
                raise RuntimeError(f"ownership_rejected: {exc}") from exc
            self._site(s).register_destination(prefix, PSP, service)
            self.nodes[self.routers[s]].divert_prefix(prefix)

    def _send(self, host: str, raw: bytes) -> None:
        self.nodes[host].send(raw)

    def send_circuit(
        self, host: str, circuit: Circuit, payload: bytes, *, metadata: int = 0, dport: int = 0
    ) -> None:
        raw, _ = self.sessions[host].encode_circuit(
            circuit, payload, metadata=metadata, dport=dport
        )
        self._send(host, raw)

    def send_service(
        self, host: str, dst: str, service_id: int, payload: bytes, *, metadata: int = 0,
        dport: int = 0,
    ) -> None:  # fmt: skip
        raw, _ = self.sessions[host].encode_service(
            self.hosts[dst], service_id, payload, metadata=metadata, dport=dport
        )
        self._send(host, raw)

    def send_plain(self, host: str, dst: str, dport: int, payload: bytes) -> None:
        udp = wire.UDP_HEADER.pack(40000, dport, 8 + len(payload), 0) + payload
        raw = wire.build_ipv4(src=self.hosts[host], dst=self.hosts[dst], proto=17, payload=udp)
        self._send(host, bytes(raw))

    def reply(self, host: str, to: Datagram, payload: bytes) -> None:
        raw, _ = self.sessions[host].encode_reply(to, payload)
        self._send(host, raw)

    def collect(self, host: str, want: int, timeout: float = 1.0) -> list[tuple[Datagram, float]]:
        self.net.run(until=self.net.now + timeout)
        node = self.nodes[host]
        out = []
        for got in node.inbox[self._seen[host] :]:
            d = self.sessions[host].decode(got.data, plain=True)
            if d is not None:
                out.append((d, float(got.time)))
        self._seen[host] = len(node.inbox)
        return out[:want] if want else out

    def service_packets(self, site: str, service: str) -> int:
        return int(self._site(site).runtime.counters(PSP, service).packets)

    def site_drops(self, site: str) -> dict[str, int]:
        return dict(self._site(site).drops)

    def close(self) -> None:
        self.broker.close()


def _make_proof(prefix: str, service: str, *, forged: bool, now: float) -> tuple[str, str]:
    """(proof text, trust anchor) for the demo's sign-up, signed under a demo root key."""
    from pcsock import ownership

    root = ownership.ZoneKey.generate("in-addr.arpa.")
    owner = ownership.ZoneKey.generate(ownership.reverse_zone(prefix))
    # a forger holds a proof signed for another PSP and edits the name: the RRSIG breaks
    psp = "mallory" if forged else PSP
    claim = ownership.OwnershipClaim(prefix, psp, service, now - 60, now + 86400)
    proof = ownership.build_proof(
        [claim], owner, chain=[root], inception=now - 60, expiration=now + 3600
    ).text
    if forged:
        proof = proof.replace("owner=mallory", f"owner={PSP}")
    return proof, root.ds_text()


# --- scenarios --------------------------------------------------------------------------------


@scenario("form1", "Form 1: circuit S->C2->C3->D, D replies to S")
def form1(world: World) -> Outcome:
    out = Outcome("form1")
    world.deploy(["C2", "C3"], "srcroute", SRCROUTE)
    c = world.circuit("S", "D", "srcroute", ["C2", "C3"])
    out.check("first hop is C2", c.first_hop == world.sites["C2"])
    before = {x: world.service_packets(x, "srcroute") for x in ("C2", "C3")}
    for i in range(N):
        world.send_circuit("S", c, probe(i, world.now()), metadata=1, dport=ALLOWED_PORT)
    out.sent = N
    got = world.collect("D", N, timeout=3.0)
    out.received = len(got)
    lat = [t - p[1] for d, t in got if (p := unprobe(d.payload))]
    out.check(f"D received {N}", len(got) == N)
    out.check("original source is S", all(d.source == world.hosts["S"] for d, _ in got))
    served = {x: world.service_packets(x, "srcroute") - before[x] for x in ("C2", "C3")}
    out.check(f"C2 and C3 each carried {N} ({served})", served == {"C2": N, "C3": N})
    for d, _ in got:
        world.reply("D", d, b"ack" + d.payload[:4])
    acks = world.collect("S", N, timeout=3.0)
    out.check(f"S received {N} replies from D", len(acks) == N)
    out.check("replies come from D", all(a.source == world.hosts["D"] and a.is_reply
                                         for a, _ in acks))  # fmt: skip
    world.teardown(c)
    out.dropped = N - len(got)
    out.latency_ms = _median_ms(lat)
    out.latencies_ms = _all_ms(lat)
    hops = ["S", *c.sites, "D"]
    out.paths = [
        _path(f"circuit {c.label:#x}", hops, f"{len(got)} delivered, {out.dropped} dropped",
              [None, c.label] + [None] * (len(hops) - 2)),
        _path("replies", ["D", "S"], f"{len(acks)} replies"),
    ]  # fmt: skip
    out.counts = {x: f"carried {n}" for x, n in served.items()}
    out.detail = f"circuit label {c.label:#x} via {'->'.join(c.sites)}; {len(acks)} replies"
    return out


@scenario("form2", "Form 2: service ID + DSCP flag, diverted by R1 to C1")
def form2(world: World) -> Outcome:
    out = Outcome("form2")
    world.deploy(["C1"], "marker", MARKER)
    world.register_service_id("C1", SERVICE_ID, "marker")
    before = world.service_packets("C1", "marker")
    for i in range(N):
        world.send_service("S", "D", SERVICE_ID, probe(i, world.now()), dport=ALLOWED_PORT)
    out.sent = N
    got = world.collect("D", N, timeout=3.0)
    out.received = len(got)
    out.dropped = N - len(got)
    out.check(f"D received {N}", len(got) == N)
    out.check("service ID kept", all(d.service_id == SERVICE_ID for d, _ in got))
    out.check("C1's service marked every packet", all(d.metadata == MARK for d, _ in got))
    out.check("C1 served each once", world.service_packets("C1", "marker") - before == N)
    if any(d.tos is not None for d, _ in got):  # raw receivers see the IP header
        out.check("flag cleared after the site", all(d.tos == 0 for d, _ in got))
    lat = [t - p[1] for d, t in got if (p := unprobe(d.payload))]
    out.latency_ms, out.latencies_ms = _median_ms(lat), _all_ms(lat)
    out.detail = f"service ID {SERVICE_ID:#08x}, metadata {MARK:#x} set at C1"
    out.paths = [_path("DSCP 43, diverted by R1", ["S", "C1", "D"],
                       f"{len(got)} delivered, {out.dropped} dropped")]  # fmt: skip
    out.counts = {"C1": f"marked {world.service_packets('C1', 'marker') - before}"}
    return out


@scenario("form3", "Form 3: DNSSEC sign-up, destination firewall at C1")
def form3(world: World) -> Outcome:
    out = Outcome("form3")
    world.deploy(["C1"], "firewall", FIREWALL)
    try:
        world.signup(D_PREFIX, "firewall", ["C1"], forged=True)
        out.check("forged ownership proof refused", False)
    except RuntimeError as exc:
        out.check("forged ownership proof refused", "ownership_rejected" in str(exc))
    world.signup(D_PREFIX, "firewall", ["C1"])
    for i in range(N):
        world.send_plain("S", "D", ALLOWED_PORT, probe(i, world.now()))
        world.send_plain("S", "D", BLOCKED_PORT, probe(1000 + i, world.now()))
    out.sent = 2 * N
    got = world.collect("D", 0, timeout=1.5)
    ok = [(d, t) for d, t in got if d.dport == ALLOWED_PORT]
    blocked = [d for d, _ in got if d.dport == BLOCKED_PORT]
    out.received = len(got)
    out.dropped = out.sent - len(got)
    out.check(f"{N} to port {ALLOWED_PORT} passed", len(ok) == N)
    out.check(f"port {BLOCKED_PORT} blocked in the network", not blocked)
    out.check("plain packets (no shim)", all(d.form == wire.FORM_NONE for d, _ in got))
    out.check("C1 firewall ran on all", world.service_packets("C1", "firewall") >= 2 * N)
    lat = [t - p[1] for d, t in ok if (p := unprobe(d.payload))]
    out.latency_ms, out.latencies_ms = _median_ms(lat), _all_ms(lat)
    out.detail = f"{D_PREFIX} owned by {PSP} (DNSSEC), {len(blocked)} of {N} port-7 passed"
    out.paths = [
        _path(f"port {ALLOWED_PORT}", ["S", "C1", "D"], f"{len(ok)} of {N} delivered"),
        _path(f"port {BLOCKED_PORT}", ["S", "C1"], f"{N - len(blocked)} of {N} dropped at C1"),
    ]
    out.counts = {"C1": f"firewall ran {world.service_packets('C1', 'firewall')}"}
    return out


@scenario("form1+3", "Forms 1+3: receiver's firewall runs before the sender's service")
def form13(world: World) -> Outcome:
    # D's firewall is registered at C3, the circuit's last site: there both services apply to
    # the packet and the receiver's must run first (paper §2.2).
    out = Outcome("form1+3")
    world.deploy(["C2", "C3"], "srcroute", SRCROUTE)
    world.deploy(["C3"], "firewall", FIREWALL)
    world.signup(D_PREFIX, "firewall", ["C3"])
    c = world.circuit("S", "D", "srcroute", ["C2", "C3"])
    before = world.service_packets("C3", "srcroute")
    for i in range(N):
        world.send_circuit("S", c, probe(i, world.now()), dport=ALLOWED_PORT)
        world.send_circuit("S", c, probe(1000 + i, world.now()), dport=BLOCKED_PORT)
    out.sent = 2 * N
    got = world.collect("D", 0, timeout=1.5)
    ok = [(d, t) for d, t in got if d.dport == ALLOWED_PORT]
    out.received = len(got)
    out.dropped = out.sent - len(got)
    out.check(f"{N} to port {ALLOWED_PORT} arrived over the circuit", len(ok) == N)
    out.check("circuit packets (form 1)", all(d.form == wire.FORM_CIRCUIT for d, _ in got))
    out.check(f"port {BLOCKED_PORT} dropped", all(d.dport != BLOCKED_PORT for d, _ in got))
    served = world.service_packets("C3", "srcroute") - before
    out.check("sender's service never saw the dropped ones", served == N)
    world.teardown(c)
    lat = [t - p[1] for d, t in ok if (p := unprobe(d.payload))]
    out.latency_ms, out.latencies_ms = _median_ms(lat), _all_ms(lat)
    out.detail = f"sender's service at C3 ran {served} times for {2 * N} packets"
    hops = ["S", *c.sites, "D"]
    out.paths = [
        _path(f"port {ALLOWED_PORT}", hops, f"{len(ok)} of {N} delivered",
              [None, c.label] + [None] * (len(hops) - 2)),
        _path(f"port {BLOCKED_PORT}", hops[:-1], f"{out.dropped} dropped at C3 (receiver first)",
              [None, c.label] + [None] * (len(hops) - 3)),
    ]  # fmt: skip
    out.counts = {"C3": f"sender's service ran {served}"}
    return out


# --- running ----------------------------------------------------------------------------------


def run_scenarios(world: World, names: list[str] | None = None) -> list[Outcome]:
    """Run the registered scenarios (or ``names``) in ``world``; never raises for one."""
    results = []
    for name, sc in SCENARIOS.items():
        if names and name not in names:
            continue
        t0 = time.monotonic()
        try:
            o = sc.run(world)
        except Missing as exc:
            o = Outcome(name, status="missing", detail=f"missing: {exc}")
        except Exception as exc:  # a broken piece fails its scenario, not the demo
            o = Outcome(name, status="fail", detail=f"error: {type(exc).__name__}: {exc}")
        o.title = sc.title
        o.name = name
        o.finish()
        o.detail = f"{o.detail} [{time.monotonic() - t0:.1f}s]".strip()
        results.append(o)
    return results


def format_table(results: list[Outcome], kind: str) -> str:
    head = (
        f"{'scenario':<9} {'result':<7} {'sent':>5} {'recv':>5} {'drop':>5} {'latency':>10}  detail"
    )
    lines = [head, "-" * len(head)]
    for o in results:
        lat = "-" if o.latency_ms is None else f"{o.latency_ms:.3f}ms"
        lines.append(
            f"{o.name:<9} {o.status.upper():<7} {o.sent:>5} {o.received:>5} {o.dropped:>5} "
            f"{lat:>10}  {o.title}: {o.detail}"
        )
    n_pass = sum(o.status == "pass" for o in results)
    lines.append(f"{n_pass}/{len(results)} scenarios passed ({kind})")
    return "\n".join(lines)


@contextlib.contextmanager
def open_world(kind: str, *, prefix: str = "pcs", progress: Callable[[str], None] = print
               ) -> Iterator[World]:  # fmt: skip
    """The world to run in: ``"testbed"`` (root), ``"simulator"`` or ``"auto"``."""
    if kind == "auto":
        kind = "testbed" if os.geteuid() == 0 else "simulator"
    if kind == "simulator":
        w: World = SimWorld()
    else:
        try:
            from pcdemo.testbed_world import TestbedWorld
        except ImportError as exc:
            raise Missing(f"the testbed world ({exc})") from exc
        w = TestbedWorld(prefix=prefix, progress=progress)
    try:
        yield w
    finally:
        w.close()


#: The four service-form scenarios defined in this module.
CORE_SCENARIOS = ("form1", "form2", "form3", "form1+3")

#: Example services (``examples/<name>/demo.py``) whose ``register()`` adds a scenario.
EXAMPLE_DEMOS = (
    "examples.multicast.demo",
    "examples.mobility.demo",
    "examples.firewall.demo",
    "examples.encryption.demo",
    "examples.redundancy.demo",
    "examples.congestion.demo",
    "examples.rbf.demo",
)


def load_examples() -> list[str]:
    """Register the example services' scenarios; returns the ones that could not load.

    ``examples`` is a package of the distribution (``pip install -e .`` makes it importable
    from any working directory, and so in the processes the examples start themselves); an
    installation without it runs the core scenarios only and says so.
    """
    missing = []
    for name in EXAMPLE_DEMOS:
        try:
            importlib.import_module(name).register()
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    return missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pcdemo", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--world",
        choices=("auto", "testbed", "simulator"),
        default="auto",
        help="where to run (default: the testbed as root, else the simulator)",
    )
    ap.add_argument("--only", action="append", help="run only this scenario (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument(
        "--report",
        metavar="DIR",
        help="write DIR/results.json, a picture per scenario and the latency distribution",
    )
    ap.add_argument("--prefix", default="pcs", help="testbed name prefix (default pcs)")
    ap.add_argument(
        "--core", action="store_true", help="only the four service-form scenarios, no examples"
    )
    args = ap.parse_args(argv)  # fmt: skip
    if args.core:
        args.only = args.only or list(CORE_SCENARIOS)
    else:
        for what in load_examples():
            print(f"example scenario not loaded: {what}", file=sys.stderr)
    if args.list:
        for sc in SCENARIOS.values():
            print(f"{sc.name:<9} {sc.title}")
        return 0
    unknown = [n for n in args.only or [] if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    kind = args.world
    if kind == "auto":
        kind = "testbed" if os.geteuid() == 0 else "simulator"
    if kind == "simulator":
        why = "not root" if os.geteuid() else "--world simulator"
        print(
            f"SIMULATOR ({why}): the scenarios run in the in-memory simulator "
            "(pcsite_lite.sim: the real site pipeline on a simulated Fig. 2 network, virtual "
            "time), not on real packets.\n"
            "Run as root for the real testbed (namespaces, routers, knot DNS, site daemons)."
        )
    else:
        print("Root: building the Fig. 2 testbed (namespaces, routers, knot DNS, site daemons).")
    # a SIGTERM unwinds like Ctrl-C, so the testbed (namespaces, daemons) is always torn down
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143)) if main_thread else None
    try:
        with open_world(kind, prefix=args.prefix) as world:
            results = run_scenarios(world, args.only)
    except Missing as exc:
        print(f"cannot run in the {kind}: missing {exc}", file=sys.stderr)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(format_table(results, kind))
    doc = {"world": kind, "results": [asdict(o) for o in results]}
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
    ok = bool(results) and all(o.status == "pass" for o in results)
    if args.report:
        from pcdemo import report

        try:
            written = report.write(doc, Path(args.report), TOPOLOGY)
        except (OSError, RuntimeError) as exc:
            print(f"report: {exc}", file=sys.stderr)
            return 1
        print(f"report: {len(written)} files in {args.report} (index.md)")
    return 0 if ok else 1
