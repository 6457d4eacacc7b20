"""The PacketCloud demo: every service form end to end, on Fig. 2 or on your own topology.

``python -m pcdemo`` (``./quickstart demo``) runs each registered scenario and prints a
table (pass/fail/n/a, packets sent/received/dropped, median latency); it exits 1 if any
scenario failed. As root it builds the topology as a testbed (``--topology FILE``, default
``testbed/topologies/fig2.toml``: Linux namespaces, legacy routers with policy routing, knot
DNS, real site daemons, the PSP's lookup service) and sends real packets; without root it runs
the same scenarios on the in-memory simulator (:mod:`pcsite_lite.sim`, same topology, the real
site pipeline) and says so.

Scenarios (paper §2.1-2.2); who plays which part is chosen from the topology by role
(:mod:`pcdemo.roles`; on Fig. 2: S sends, D receives):

form1      a circuit from the PSP's lookup service through one or two sites (Fig. 2: C2, C3)
           to the receiver; the receiver answers the sender at the shim's original source.
form2      service-ID packets with the DSCP flag; the first router with a site on the path
           (Fig. 2: R1) diverts them to its site (C1), whose service marks them.
form3      the receiver's owner signs up (DNSSEC proof of its prefix); a forged proof is
           refused; a router with a site on the path diverts the prefix to its site, whose
           firewall drops port 7 and passes port 9.
form1+3    the circuit of form1 towards the receiver, with its firewall registered at the
           circuit's last site: the receiver's service runs first, and what it drops never
           reaches the sender's.

A scenario the topology cannot support (no PSP with a data link, no site on the path, ...)
is reported as ``N/A`` with what is missing, and counted in the summary line.

Adding a scenario: write ``def my_scenario(world: World) -> Outcome`` using the
:class:`World` methods and decorate it with ``@scenario("name", "title")``; it is then run by
both worlds (``--only name`` runs just it). ``world.roles`` (:class:`pcdemo.roles.Roles`)
chooses hosts and sites from the topology; a scenario that does so registers with
``topology=True`` (one that builds its own network is marked as such in the table when
``--topology`` is given), or with ``@cast_scenario("name", "title")`` as
``def my_scenario(world, out, cast) -> None``, which gets its row and its cast made for it
(the four service-form scenarios are written so). The example services
(``examples/<name>/demo.py``) add theirs from their ``SCENARIO`` and ``outcome()``
(:func:`example_scenario`, :func:`load_examples`).

This package sits above the SDK (``pcsock``), the site (``pcsite_lite``) and the testbed
(``testbed``) and is the only one that needs all three (docs/architecture.md, "Packages").
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
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

from pcdemo.example_testbed import run_simulator, run_testbed
from pcdemo.roles import HintError, NotApplicable, Roles
from pcsock import wire
from pcsock.session import Circuit, Datagram, Session

__all__ = [
    "SCENARIOS",
    "Missing",
    "NotApplicable",
    "Outcome",
    "Scenario",
    "SimWorld",
    "World",
    "main",
    "run_scenarios",
    "scenario",
]

TOPOLOGIES = Path(__file__).resolve().parent.parent / "testbed" / "topologies"
TOPOLOGY = TOPOLOGIES / "fig2.toml"  #: the default topology
PSP = "acme"
D_PREFIX = "198.18.64.0/24"  #: D's prefix on Fig. 2
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
    status: str = "fail"  #: "pass", "fail", "missing" or "n/a" (the topology cannot host it)
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

    def delivered(
        self, got: list[tuple[Datagram, float]], timed: list[tuple[Datagram, float]] | None = None
    ) -> None:
        """Count what the receiver collected (``got``: datagrams with arrival times) against
        ``sent``, and the one-way latencies of the probes in ``timed`` (default: all of them)."""
        self.received = len(got)
        self.dropped = self.sent - len(got)
        lat = _lat(got if timed is None else timed)
        self.latency_ms, self.latencies_ms = _median_ms(lat), _all_ms(lat)

    def finish(self) -> Outcome:
        if self.status not in ("missing", "n/a"):
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
    #: True if it takes its hosts and sites from ``world.roles`` (the ``--topology`` network);
    #: False if it builds its own network (then ``--topology`` does not change where it runs)
    topology: bool = False


#: The registered scenarios, in run order.
SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, title: str, *, topology: bool = False
             ) -> Callable[[Callable[[World], Outcome]], Callable]:  # fmt: skip
    """Register ``fn(world) -> Outcome`` as a demo scenario.

    ``topology=True``: it runs on the world's topology, choosing its nodes from
    ``world.roles`` (raising :class:`NotApplicable` with a reason when the topology lacks
    something); its ``[demo.<name>]`` table in the topology file holds its hints.
    """

    def deco(fn: Callable[[World], Outcome]) -> Callable[[World], Outcome]:
        SCENARIOS[name] = Scenario(name, title, fn, topology)
        return fn

    return deco


def cast_scenario(name: str, title: str) -> Callable[[Callable[[World, Outcome, Any], None]], Any]:
    """Register ``fn(world, out, cast)`` as a scenario on the world's topology
    (``topology=True``): its row ``out`` and who plays which part (``cast``:
    ``world.roles.cast(name)``, which raises :class:`NotApplicable` when the topology lacks
    someone) are made here; ``fn`` fills the row."""

    def deco(fn: Callable[[World, Outcome, Any], None]) -> Callable[[World, Outcome, Any], None]:
        def run(world: World) -> Outcome:
            out = Outcome(name)
            fn(world, out, world.roles.cast(name))
            return out

        scenario(name, title, topology=True)(run)
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
    """What scenarios drive: a topology's network, its PSP and its DNS (testbed or simulator)."""

    kind = "abstract"
    hosts: dict[str, str]  #: host name -> address
    sites: dict[str, str]  #: site name -> public IP
    routers: dict[str, str]  #: site name -> co-located router name
    topology_path: Path = TOPOLOGY  #: the topology file it was built from
    roles: Roles  #: who plays which part in each scenario (from the topology and its hints)
    #: compute-node machines per site (> 1: an LB in front, docs/cluster.md); the example
    #: scenarios build their own sites with as many
    site_nodes: int = 1

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
        :class:`RuntimeError` with the site's error if refused), then each site's router
        diverts ``prefix`` to it (what the ISP configures)."""
        raise NotImplementedError

    def withdraw(self, prefix: str, sites: list[str]) -> None:
        """Stop diverting ``prefix`` at the routers of ``sites`` (so later scenarios' packets
        take their plain routes)."""
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

    def service_packets(self, site: str, service: str, at_least: int = 0) -> int:
        """Packets ``PSP``'s ``service`` processed at ``site`` (the testbed waits until its
        count is at least ``at_least``, bounded, and no longer changing)."""
        raise NotImplementedError

    def site_drops(self, site: str) -> dict[str, int]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def resolve_topology(name: str | Path | None) -> Path:
    """A topology file: a path, the name of a shipped one (``fig2``, ``twodomain``, ...), or
    ``line:K`` (the testbed benchmark's line, kept as is)."""
    if name is None:
        return TOPOLOGY
    p = Path(name)
    if p.exists() or p.suffix == ".toml" or "/" in str(name) or _LINE.fullmatch(str(name)):
        return p
    return TOPOLOGIES / f"{name}.toml"


_LINE = re.compile(r"line:(\d+)")


def load_topology(path: Path, extra_scenarios: frozenset[str] = frozenset()) -> tuple[Any, Roles]:
    """(topology, roles) of ``path``; raises TopologyError / HintError with file and field."""
    from testbed.topology import TopologyError, line, load

    m = _LINE.fullmatch(str(path))
    if m:
        try:
            topo = line(int(m.group(1)))
        except ValueError as exc:
            raise TopologyError(str(path), None, "", str(exc)) from None
    else:
        if not path.exists() and path.parent == TOPOLOGIES:
            shipped = ", ".join(sorted(p.stem for p in TOPOLOGIES.glob("*.toml")))
            raise TopologyError(path.stem, None, "", f"no such file or shipped topology "
                                f"(shipped: {shipped})")  # fmt: skip
        topo = load(path)
    return topo, Roles(topo, extra_scenarios=extra_scenarios)


class SimWorld(World):
    """A topology in :mod:`pcsite_lite.sim`: real site pipelines, simulated links, virtual time.

    Hosts, routers and sites of the topology (DNS, PSP and FIS nodes are not simulated: the
    PSP's lookup service is in-process); links keep their delay; routes are the simulator's
    shortest-delay routes (the testbed's are shortest-hop: on a topology where they differ,
    a path can differ too).
    """

    kind = "simulator"

    def __init__(self, topology: str | Path | None = None, roles: Roles | None = None) -> None:
        from pcsite_lite import sim
        from pcsite_lite.table_control import TableSiteControl
        from pcsock.lookup import BrokerClient, CircuitBroker, SiteEntry

        self.topology_path = resolve_topology(topology)
        self.roles = roles or load_topology(self.topology_path)[1]
        topo = self.roles.topo
        plan = self.roles.plan
        self.net = net = sim.Network(seed=1, trace=False)
        self.sites = {n: str(p.public_ip) for n, p in plan.nodes.items() if p.kind == "site"}
        self.routers = {n: str(topo.nodes[n].router) for n in self.sites}
        self.hosts = {}
        self.nodes: dict[str, Any] = {}
        for name, spec in topo.nodes.items():
            addr = str(plan.nodes[name].address)
            if spec.kind == "router":
                self.nodes[name] = net.router(name, addr)
            elif spec.kind == "host":
                self.nodes[name] = net.host(name, addr)
                self.hosts[name] = addr
        for name, ip in self.sites.items():
            self.nodes[name] = net.site(name, ip, router=self.nodes[self.routers[name]])
        for lk in topo.links:
            a, b = lk.a, lk.b
            kinds = (topo.nodes[a].kind, topo.nodes[b].kind)
            if a in self.nodes and b in self.nodes and "site" not in kinds:
                net.link(self.nodes[a], self.nodes[b], delay=lk.delay_ms / 1e3)
        net.compute_routes()
        self.sessions = {h: Session(ip, mode="ip") for h, ip in self.hosts.items()}
        self._seen: dict[str, int] = {h: 0 for h in self.hosts}
        entries = [
            SiteEntry(n, ip, TableSiteControl(self.nodes[n].site.circuits, psp=PSP, clock=self.now))
            for n, ip in self.sites.items()
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

    def withdraw(self, prefix: str, sites: list[str]) -> None:
        for s in sites:
            self.nodes[self.routers[s]].undivert_prefix(prefix)

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

    def service_packets(self, site: str, service: str, at_least: int = 0) -> int:
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


def _lat(got: list[tuple[Datagram, float]]) -> list[float]:
    return [t - p[1] for d, t in got if (p := unprobe(d.payload))]


@cast_scenario("form1", "Form 1: circuit through the PSP's sites, receiver replies")
def form1(world: World, out: Outcome, c: Any) -> None:
    snd, rcv, sites = c.sender, c.receiver, list(c.sites)
    world.deploy(sites, "srcroute", SRCROUTE)
    circ = world.circuit(snd, rcv, "srcroute", sites)
    try:
        out.check(f"first hop is {sites[0]}", circ.first_hop == world.sites[sites[0]])
        before = {x: world.service_packets(x, "srcroute") for x in sites}
        for i in range(N):
            world.send_circuit(snd, circ, probe(i, world.now()), metadata=1, dport=ALLOWED_PORT)
        out.sent = N
        got = world.collect(rcv, N, timeout=3.0)
        out.delivered(got)
        out.check(f"{rcv} received {N}", len(got) == N)
        out.check(f"original source is {snd}", all(d.source == world.hosts[snd] for d, _ in got))
        served = {x: world.service_packets(x, "srcroute", before[x] + N) - before[x]
                  for x in sites}  # fmt: skip
        out.check(f"{' and '.join(sites)} each carried {N} ({served})",
                  served == {x: N for x in sites})  # fmt: skip
        for d, _ in got:
            world.reply(rcv, d, b"ack" + d.payload[:4])
        acks = world.collect(snd, N, timeout=3.0)
        out.check(f"{snd} received {N} replies from {rcv}", len(acks) == N)
        out.check(f"replies come from {rcv}", all(a.source == world.hosts[rcv] and a.is_reply
                                                  for a, _ in acks))  # fmt: skip
    finally:
        world.teardown(circ)
    hops = [snd, *circ.sites, rcv]
    out.paths = [
        _path(f"circuit {circ.label:#x}", hops, f"{len(got)} delivered, {out.dropped} dropped",
              [None, circ.label] + [None] * (len(hops) - 2)),
        _path("replies", [rcv, snd], f"{len(acks)} replies"),
    ]  # fmt: skip
    out.counts = {x: f"carried {n}" for x, n in served.items()}
    out.detail = (
        f"{snd}->{'->'.join(circ.sites)}->{rcv}, circuit label {circ.label:#x}; {len(acks)} replies"
    )


@cast_scenario("form2", "Form 2: service ID + DSCP flag, diverted to the first site on the path")
def form2(world: World, out: Outcome, c: Any) -> None:
    snd, rcv, site = c.sender, c.receiver, c.sites[0]
    world.deploy([site], "marker", MARKER)
    world.register_service_id(site, SERVICE_ID, "marker")
    before = world.service_packets(site, "marker")
    for i in range(N):
        world.send_service(snd, rcv, SERVICE_ID, probe(i, world.now()), dport=ALLOWED_PORT)
    out.sent = N
    got = world.collect(rcv, N, timeout=3.0)
    out.delivered(got)
    served = world.service_packets(site, "marker", before + N) - before
    out.check(f"{rcv} received {N}", len(got) == N)
    out.check("service ID kept", all(d.service_id == SERVICE_ID for d, _ in got))
    out.check(f"{site}'s service marked every packet", all(d.metadata == MARK for d, _ in got))
    out.check(f"{site} served each once", served == N)
    if any(d.tos is not None for d, _ in got):  # raw receivers see the IP header
        out.check("flag cleared after the site", all(d.tos == 0 for d, _ in got))
    router = world.routers[site]
    out.detail = (
        f"{c.route}: {router} diverted to {site}, which set metadata {MARK:#x} "
        f"(service ID {SERVICE_ID:#08x}) and cleared the flag"
    )
    out.paths = [_path(f"DSCP 43, diverted by {router}", [snd, site, rcv],
                       f"{len(got)} delivered, {out.dropped} dropped")]  # fmt: skip
    out.counts = {site: f"marked {served}"}


@cast_scenario("form3", "Form 3: DNSSEC sign-up, destination firewall at a site on the path")
def form3(world: World, out: Outcome, c: Any) -> None:
    snd, rcv, site, prefix = c.sender, c.receiver, c.sites[0], c.prefix
    world.deploy([site], "firewall", FIREWALL)
    try:
        world.signup(prefix, "firewall", [site], forged=True)
        out.check("forged ownership proof refused", False)
    except RuntimeError as exc:
        out.check("forged ownership proof refused", "ownership_rejected" in str(exc))
    world.signup(prefix, "firewall", [site])
    try:
        for i in range(N):
            world.send_plain(snd, rcv, ALLOWED_PORT, probe(i, world.now()))
            world.send_plain(snd, rcv, BLOCKED_PORT, probe(1000 + i, world.now()))
        out.sent = 2 * N
        got = world.collect(rcv, 0, timeout=1.5)
        ran = world.service_packets(site, "firewall", 2 * N)
    finally:
        world.withdraw(prefix, [site])
    ok = [(d, t) for d, t in got if d.dport == ALLOWED_PORT]
    blocked = [d for d, _ in got if d.dport == BLOCKED_PORT]
    out.delivered(got, ok)
    out.check(f"{N} to port {ALLOWED_PORT} passed", len(ok) == N)
    out.check(f"port {BLOCKED_PORT} blocked in the network", not blocked)
    out.check("plain packets (no shim)", all(d.form == wire.FORM_NONE for d, _ in got))
    out.check(f"{site} firewall ran on all", ran >= 2 * N)
    out.detail = (
        f"{prefix} ({rcv}) owned by {PSP} (DNSSEC), diverted at {world.routers[site]} to "
        f"{site}; {len(blocked)} of {N} port-{BLOCKED_PORT} passed"
    )
    out.paths = [
        _path(f"port {ALLOWED_PORT}", [snd, site, rcv], f"{len(ok)} of {N} delivered"),
        _path(f"port {BLOCKED_PORT}", [snd, site],
              f"{N - len(blocked)} of {N} dropped at {site}"),
    ]  # fmt: skip
    out.counts = {site: f"firewall ran {ran}"}


@cast_scenario("form1+3", "Forms 1+3: receiver's firewall runs before the sender's service")
def form13(world: World, out: Outcome, c: Any) -> None:
    # the receiver's firewall is registered at the circuit's last site: there both services
    # apply to the packet and the receiver's must run first (paper §2.2)
    snd, rcv, sites, prefix = c.sender, c.receiver, list(c.sites), c.prefix
    last = sites[-1]
    world.deploy(sites, "srcroute", SRCROUTE)
    world.deploy([last], "firewall", FIREWALL)
    world.signup(prefix, "firewall", [last])
    try:
        circ = world.circuit(snd, rcv, "srcroute", sites)
        try:
            before = world.service_packets(last, "srcroute")
            for i in range(N):
                world.send_circuit(snd, circ, probe(i, world.now()), dport=ALLOWED_PORT)
                world.send_circuit(snd, circ, probe(1000 + i, world.now()), dport=BLOCKED_PORT)
            out.sent = 2 * N
            got = world.collect(rcv, 0, timeout=1.5)
            served = world.service_packets(last, "srcroute", before + N) - before
        finally:
            world.teardown(circ)
    finally:
        world.withdraw(prefix, [last])
    ok = [(d, t) for d, t in got if d.dport == ALLOWED_PORT]
    out.delivered(got, ok)
    out.check(f"{N} to port {ALLOWED_PORT} arrived over the circuit", len(ok) == N)
    out.check("circuit packets (form 1)", all(d.form == wire.FORM_CIRCUIT for d, _ in got))
    out.check(f"port {BLOCKED_PORT} dropped", all(d.dport != BLOCKED_PORT for d, _ in got))
    out.check("sender's service never saw the dropped ones", served == N)
    out.detail = (
        f"{snd}->{'->'.join(circ.sites)}->{rcv}: sender's service at {last} ran {served} "
        f"times for {2 * N} packets"
    )
    hops = [snd, *circ.sites, rcv]
    out.paths = [
        _path(f"port {ALLOWED_PORT}", hops, f"{len(ok)} of {N} delivered",
              [None, circ.label] + [None] * (len(hops) - 2)),
        _path(f"port {BLOCKED_PORT}", hops[:-1],
              f"{out.dropped} dropped at {last} (receiver first)",
              [None, circ.label] + [None] * (len(hops) - 3)),
    ]  # fmt: skip
    out.counts = {last: f"sender's service ran {served}"}


# --- running ----------------------------------------------------------------------------------


def run_scenarios(world: World, names: list[str] | None = None, *, own_topology: bool = False
                  ) -> list[Outcome]:  # fmt: skip
    """Run the registered scenarios (or ``names``) in ``world``; never raises for one.

    ``own_topology``: the user chose the topology (``--topology``); a scenario that builds
    its own network says so in its row.
    """
    results = []
    for name, sc in SCENARIOS.items():
        if names and name not in names:
            continue
        t0 = time.monotonic()
        try:
            o = sc.run(world)
        except NotApplicable as exc:
            o = Outcome(name, status="n/a", detail=f"not applicable: {exc}")
        except Missing as exc:
            o = Outcome(name, status="missing", detail=f"missing: {exc}")
        except Exception as exc:  # a broken piece fails its scenario, not the demo
            o = Outcome(name, status="fail", detail=f"error: {type(exc).__name__}: {exc}")
        o.title = sc.title
        o.name = name
        o.finish()
        if own_topology and not sc.topology:
            o.detail = f"{o.detail} (on its own network, not {world.topology_path.name})"
        o.detail = f"{o.detail} [{time.monotonic() - t0:.1f}s]".strip()
        results.append(o)
    return results


def summary(results: list[Outcome], kind: str) -> str:
    """``3/4 scenarios passed, 1 not applicable (testbed)``."""
    n_pass = sum(o.status == "pass" for o in results)
    n_na = sum(o.status == "n/a" for o in results)
    na = f", {n_na} not applicable" if n_na else ""
    return f"{n_pass}/{len(results)} scenarios passed{na} ({kind})"


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
    lines.append(summary(results, kind))
    return "\n".join(lines)


@contextlib.contextmanager
def open_world(kind: str, *, prefix: str = "pcs", progress: Callable[[str], None] = print,
               topology: str | Path | None = None, roles: Roles | None = None,
               scenarios: list[str] | None = None, nodes: int = 1,
               fis_replicas: int = 0) -> Iterator[World]:  # fmt: skip
    """The world to run in: ``"testbed"`` (root), ``"simulator"`` or ``"auto"``, built from
    ``topology`` (a file or a shipped name; default Fig. 2). ``scenarios``: the ones that
    will run (the testbed makes their hosts' endpoints up front)."""
    if kind == "auto":
        kind = "testbed" if os.geteuid() == 0 else "simulator"
    if kind == "simulator":
        w: World = SimWorld(topology, roles)
    else:
        try:
            from pcdemo.testbed_world import TestbedWorld
        except ImportError as exc:
            raise Missing(f"the testbed world ({exc})") from exc
        w = TestbedWorld(topology, roles, prefix=prefix, progress=progress,
                         scenarios=scenarios or list(CORE_SCENARIOS), nodes=nodes,
                         fis_replicas=fis_replicas)  # fmt: skip
    try:
        yield w
    finally:
        w.close()


#: The four service-form scenarios defined in this module.
CORE_SCENARIOS = ("form1", "form2", "form3", "form1+3")

#: Example services (``examples/<name>/demo.py``), each a scenario (:func:`example_scenario`).
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
            example_scenario(importlib.import_module(name))
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    return missing


def example_scenario(demo: Any) -> None:
    """Register an example's demo (``examples/<name>/demo.py``) as a scenario: its
    ``SCENARIO`` is the row's (name, title); the testbed world runs it with real packets, the
    simulator world in the simulator (:mod:`pcdemo.example_testbed`); its ``outcome(out,
    result)`` fills the row."""
    name, title = demo.SCENARIO

    def run(world: World) -> Outcome:
        out = Outcome(name)
        if world.kind == "testbed":  # its own network; its sites as many nodes as the world's
            # (their machines share one SQLite FIS: with a replicated FIS every example's
            # testbed took twice as long, and under load an acknowledged write (Redis WAIT,
            # up to 1 s) came after the change took effect, which the timing figures of
            # congest and mobility measure from; docs/cluster.md)
            res = run_testbed(demo, nodes=world.site_nodes)
        else:
            res = run_simulator(demo)
        demo.outcome(out, res)
        if world.site_nodes > 1:
            out.detail = f"{out.detail} ({world.site_nodes}-node sites)".strip()
        return out

    scenario(name, title)(run)


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
    ap.add_argument(
        "--topology",
        metavar="FILE",
        help="run on this topology: a .toml file or a shipped name (fig2, twodomain, ring, "
        "multidomain); default fig2. Scenarios pick their hosts and sites by role",
    )
    ap.add_argument("--nodes", type=int, default=1,
                    help="testbed: compute-node machines per site, the example scenarios' "
                    "sites too (> 1: an LB in front, docs/cluster.md; default: what the "
                    "topology's sites say, nodes = N)")  # fmt: skip
    ap.add_argument("--fis-replicas", type=int, default=0, metavar="M",
                    help="testbed, with --nodes: the FIS of each of the topology's sites on "
                    "M machines (a Redis primary, M-1 replicas, a Sentinel on each; "
                    "docs/testbed.md); the example scenarios' sites keep one SQLite FIS "
                    "each")  # fmt: skip
    ap.add_argument(
        "--require-all",
        action="store_true",
        help="exit 1 also when a scenario is not applicable to the topology",
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
    if (args.fis_replicas and args.nodes <= 1) or not 0 <= args.fis_replicas <= 4:
        print("--fis-replicas takes 0..4 and needs --nodes > 1 (the FIS machines sit on a "
              "multi-machine site's internal network)", file=sys.stderr)  # fmt: skip
        return 2
    from testbed.topology import TopologyError

    path = resolve_topology(args.topology)
    if args.core:  # the examples' names, so that their [demo.<name>] hints are known
        load_examples()
    try:
        topo, roles = load_topology(path, frozenset(SCENARIOS) - frozenset(CORE_SCENARIOS))
    except (TopologyError, HintError) as exc:
        print(f"python -m pcdemo: {exc}", file=sys.stderr)
        return 2
    kind = args.world
    if kind == "auto":
        kind = "testbed" if os.geteuid() == 0 else "simulator"
    where = f"topology {topo.name} ({path})"
    if kind == "simulator":
        why = "not root" if os.geteuid() else "--world simulator"
        print(
            f"SIMULATOR ({why}): the scenarios run in the in-memory simulator "
            f"(pcsite_lite.sim: the real site pipeline on a simulated network, {where}, "
            "virtual time), not on real packets.\n"
            "Run as root for the real testbed (namespaces, routers, knot DNS, site daemons)."
        )
    else:
        print(f"Root: building the testbed of {where} (namespaces, routers, knot DNS, "
              "site daemons).")  # fmt: skip
    # a SIGTERM unwinds like Ctrl-C, so the testbed (namespaces, daemons) is always torn down
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143)) if main_thread else None
    names = [n for n in SCENARIOS if not args.only or n in args.only]
    try:
        with open_world(kind, prefix=args.prefix, topology=path, roles=roles,
                        scenarios=names, nodes=args.nodes,
                        fis_replicas=args.fis_replicas) as world:  # fmt: skip
            results = run_scenarios(world, args.only, own_topology=args.topology is not None)
    except Missing as exc:
        print(f"cannot run in the {kind}: missing {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the world could not be built (it tore down what it made)
        print(f"cannot build the {kind} of {where}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(format_table(results, kind))
    for o in results:
        if o.status == "n/a":
            print(f"{o.name}: {o.detail}", file=sys.stderr)
    doc = {
        "world": kind,
        "topology": {"name": topo.name, "path": str(path)},
        "results": [asdict(o) for o in results],
    }
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
    allowed = ("pass",) if args.require_all else ("pass", "n/a")
    ok = any(o.status == "pass" for o in results) and all(o.status in allowed for o in results)
    if args.report:
        from pcdemo import report

        try:
            written = report.write(doc, Path(args.report), path)
        except (OSError, RuntimeError) as exc:
            print(f"report: {exc}", file=sys.stderr)
            return 1
        print(f"report: {len(written)} files in {args.report} (index.md)")
    return 0 if ok else 1
