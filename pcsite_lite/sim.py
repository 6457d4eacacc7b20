"""An in-memory PacketCloud network with a deterministic clock: hosts, legacy routers, sites, links.

The simulator is an adapter like the TUN dataplane: sites run the real
:class:`~pcsite_lite.pipeline.Pipeline` over real service files; nothing needs root. Events
(packet arrivals) are ordered by time and then by creation, links lose packets with a seeded
RNG, so a run with the same seed is the same run. Sites count their services' per-packet CPU
budget in ticks (:func:`~pcsite_lite.sandbox.tick_budget`: the wall-clock deadline is only a
backstop), so no verdict depends on how busy the machine running the simulation is.

Legacy routers forward by longest prefix (routes computed with :meth:`Network.compute_routes`:
shortest delay paths through routers) and decrement the TTL. A router with a co-located site
has the three diversion behaviours of paper §2.2-2.3:

1. the site's public IP is routed to the site (plain routing: form 1);
2. packets carrying the PacketCloud DSCP (ToS ``0xAC``) go to the site (policy routing:
   form 2);
3. packets to a registered destination prefix go to the site (form 3).

(2) and (3) apply only to packets that did *not* arrive from the site itself -- the
``iif``-qualified policy rule a real router would use -- so a packet a site hands back is never
diverted in a loop; the site also clears the DSCP flag on what it forwards.

A PSP unit-tests a service in a few lines with :class:`ServiceBench`::

    bench = ServiceBench(my_source)          # S -- R(+site) -- D
    bench.put("7", {"label": 1, "next_hop": bench.d_ip})
    got = bench.send(b"hello", form=1)      # payloads D received
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pcsite_lite.circuits import OutHopEntry
from pcsite_lite.lpm import LpmTable
from pcsite_lite.pipeline import Pipeline
from pcsite_lite.sandbox import tick_budget
from pcsite_lite.site import Site
from pcsite_lite.verdicts import Deliver, Drop
from pcsock.wire import (
    TOS_SERVICE,
    HopKey,
    Packet,
    WireError,
    build_circuit_packet,
    build_ipv4,
    build_service_packet,
    int2ip,
    ip2int,
    parse,
)

__all__ = [
    "CircuitHandle",
    "Host",
    "Link",
    "Network",
    "Node",
    "Received",
    "Router",
    "ServiceBench",
    "SiteNode",
    "TraceEntry",
    "install_circuit",
]


@dataclass(frozen=True, slots=True)
class TraceEntry:
    time: float
    node: str
    event: str  #: send, recv, forward, divert, deliver, drop, lost
    detail: str


@dataclass(frozen=True, slots=True)
class Received:
    """A packet a host accepted."""

    time: float
    data: bytes
    packet: Packet = field(repr=False)

    @property
    def payload(self) -> bytes:
        return bytes(self.packet.payload)

    @property
    def src(self) -> str:
        return int2ip(self.packet.src)


class Link:
    """A point-to-point link with a one-way ``delay`` (seconds) and a ``loss`` probability."""

    def __init__(self, net: Network, a: Node, b: Node, delay: float, loss: float) -> None:
        self.net = net
        self.a = a
        self.b = b
        self.delay = delay
        self.loss = loss
        self.sent = 0
        self.lost = 0

    def other(self, node: Node) -> Node:
        return self.b if node is self.a else self.a

    def transmit(self, sender: Node, data: bytes) -> None:
        self.sent += 1
        if self.loss and self.net.rng.random() < self.loss:
            self.lost += 1
            self.net.record(sender.name, "lost", f"on link to {self.other(sender).name}")
            return
        peer = self.other(sender)
        self.net.schedule(self.delay, lambda: peer.receive(data, self))

    def __repr__(self) -> str:
        return f"<Link {self.a.name}-{self.b.name} {self.delay * 1e3:g}ms loss={self.loss}>"


class Node:
    """Anything with an address and links."""

    forwards_transit = False

    def __init__(self, net: Network, name: str, addr: str) -> None:
        self.net = net
        self.name = name
        self.addr = ip2int(addr)
        self.ip = int2ip(self.addr)
        self.links: list[Link] = []
        self.prefixes: list[str] = [f"{self.ip}/32"]
        self.dropped = 0  #: packets this node did not take or pass on

    def _drop(self, why: str) -> None:
        self.dropped += 1
        self.net.record(self.name, "drop", why)

    def receive(self, data: bytes, link: Link) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _parse(self, data: bytes) -> Packet | None:
        """``data`` parsed, or None after its drop as malformed."""
        try:
            return parse(data)
        except WireError as exc:
            self._drop(f"malformed: {exc.reason}")
            return None

    def send(self, data: bytes | bytearray) -> None:
        """Hand a packet to the first link (the default gateway)."""
        if not self.links:
            raise RuntimeError(f"{self.name} has no link")
        self.net.record(self.name, "send", _summary(bytes(data)))
        self.links[0].transmit(self, bytes(data))


class Host(Node):
    """An end host: accepts packets to its address (or its ``prefix``), may answer them.

    ``on_receive(host, received)`` (if set) runs for every accepted packet, e.g. to reply.
    """

    def __init__(self, net: Network, name: str, addr: str, prefix: str | None = None) -> None:
        super().__init__(net, name, addr)
        self.inbox: list[Received] = []
        self.on_receive: Callable[[Host, Received], None] | None = None
        self._accept: LpmTable[bool] = LpmTable()
        self._accept.insert(f"{self.ip}/32", True)
        if prefix is not None:
            self._accept.insert(prefix, True)
            self.prefixes.append(prefix)

    def receive(self, data: bytes, link: Link) -> None:
        pkt = self._parse(data)
        if pkt is None:
            return
        if self._accept.lookup(pkt.dst) is None:
            self._drop(f"not mine: {int2ip(pkt.dst)}")
            return
        got = Received(self.net.now, data, pkt)
        self.inbox.append(got)
        self.net.record(self.name, "recv", _summary(data))
        if self.on_receive is not None:
            self.on_receive(self, got)


class Router(Node):
    """A legacy router: longest-prefix forwarding, TTL, and diversion to a co-located site."""

    forwards_transit = True

    def __init__(self, net: Network, name: str, addr: str) -> None:
        super().__init__(net, name, addr)
        self.routes: LpmTable[Link] = LpmTable()
        self.site_link: Link | None = None
        self.divert_tos = True
        self.diverted: LpmTable[bool] = LpmTable()

    def attach_site(self, link: Link) -> None:
        self.site_link = link

    def divert_prefix(self, prefix: str) -> None:
        """Policy-route traffic for ``prefix`` to the co-located site (form 3)."""
        self.diverted.insert(prefix, True)

    def undivert_prefix(self, prefix: str) -> None:
        self.diverted.discard(prefix)

    def receive(self, data: bytes, link: Link) -> None:
        pkt = self._parse(data)
        if pkt is None:
            return
        if pkt.dst == self.addr:
            self.net.record(self.name, "recv", _summary(data))
            return
        if pkt.ttl <= 1:
            self._drop("ttl exceeded")
            return
        pkt.set_ttl(pkt.ttl - 1)
        out = bytes(pkt.buf)
        site = self.site_link
        if site is not None and link is not site:
            if self.divert_tos and pkt.tos == TOS_SERVICE:
                self.net.record(self.name, "divert", f"dscp -> site: {_summary(out)}")
                site.transmit(self, out)
                return
            if self.diverted and self.diverted.lookup(pkt.dst) is not None:
                self.net.record(self.name, "divert", f"prefix -> site: {_summary(out)}")
                site.transmit(self, out)
                return
        route = self.routes.lookup(pkt.dst)
        if route is None:
            self._drop(f"no route to {int2ip(pkt.dst)}")
            return
        route.transmit(self, out)


class SiteNode(Node):
    """A PacketCloud site attached to a router: runs the real pipeline on what arrives."""

    def __init__(self, net: Network, name: str, site: Site) -> None:
        super().__init__(net, name, site.public_ip)
        self.site = site
        self.pipeline = Pipeline(site)
        self.drops: list[Drop] = []

    def receive(self, data: bytes, link: Link) -> None:
        for v in self.pipeline.process(data, self.net.now):
            if isinstance(v, Drop):
                self.drops.append(v)
                self.net.record(self.name, "drop", f"{v.reason} {v.service or ''} {v.detail}")
            else:
                kind = "deliver" if isinstance(v, Deliver) else "forward"
                self.net.record(self.name, kind, f"-> {v.next_hop}: {_summary(v.data)}")
                self.links[0].transmit(self, v.data)


def _summary(data: bytes) -> str:
    try:
        return repr(parse(data, verify_ip_checksum=False))
    except WireError as exc:
        return f"<malformed {exc.reason}>"


class Network:
    """The simulated network and its event clock (seconds, starting at 0)."""

    def __init__(self, *, seed: int = 0, trace: bool = True) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.nodes: dict[str, Node] = {}
        self.links: list[Link] = []
        self.trace: list[TraceEntry] | None = [] if trace else None
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0

    # ---- building
    def _add(self, node: Node) -> Any:
        if node.name in self.nodes:
            raise ValueError(f"duplicate node name {node.name}")
        self.nodes[node.name] = node
        return node

    def host(self, name: str, addr: str, *, prefix: str | None = None) -> Host:
        host: Host = self._add(Host(self, name, addr, prefix))
        return host

    def router(self, name: str, addr: str) -> Router:
        router: Router = self._add(Router(self, name, addr))
        return router

    def site(self, name: str, public_ip: str, *, router: Router, **site_kwargs: Any) -> SiteNode:
        """A site co-located with ``router`` (linked to it with no delay); it starts (its
        first usage interval, its packet clock) at the network's current time. Its budget
        is a :func:`~pcsite_lite.sandbox.tick_budget` unless ``budget`` is given."""
        site_kwargs.setdefault("now", self.now)
        site_kwargs.setdefault("budget", tick_budget())
        node: SiteNode = self._add(SiteNode(self, name, Site(name, public_ip, **site_kwargs)))
        link = self.link(node, router, delay=0.0)
        router.attach_site(link)
        return node

    def link(self, a: Node, b: Node, *, delay: float = 0.001, loss: float = 0.0) -> Link:
        link = Link(self, a, b, delay, loss)
        a.links.append(link)
        b.links.append(link)
        self.links.append(link)
        return link

    def compute_routes(self) -> None:
        """Static shortest-delay routes on every router to every node's prefixes."""
        routers = [n for n in self.nodes.values() if isinstance(n, Router)]
        for r in routers:
            r.routes.clear()
            # Dijkstra from r; only routers forward transit traffic
            dist: dict[str, float] = {r.name: 0.0}
            first: dict[str, Link] = {}
            heap: list[tuple[float, int, Node, Link | None]] = [(0.0, 0, r, None)]
            seq = 1
            while heap:
                d, _, node, via = heapq.heappop(heap)
                if d > dist.get(node.name, float("inf")):
                    continue
                if via is not None and node.name not in first:
                    first[node.name] = via
                if node is not r and not node.forwards_transit:
                    continue
                for link in node.links:
                    peer = link.other(node)
                    nd = d + link.delay + 1e-9  # prefer fewer hops on equal delay
                    if nd < dist.get(peer.name, float("inf")):
                        dist[peer.name] = nd
                        heapq.heappush(heap, (nd, seq, peer, via if via is not None else link))
                        seq += 1
            for name, link in first.items():
                for prefix in self.nodes[name].prefixes:
                    r.routes.insert(prefix, link)

    # ---- running
    def schedule(self, delay: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay, self._seq, fn))

    def run(self, until: float | None = None, *, max_events: int = 1_000_000) -> int:
        """Process events (up to time ``until``); returns how many ran."""
        n = 0
        while self._queue and n < max_events:
            t = self._queue[0][0]
            if until is not None and t > until:
                self.now = until
                break
            _, _, fn = heapq.heappop(self._queue)
            self.now = t
            fn()
            n += 1
        return n

    def record(self, node: str, event: str, detail: str) -> None:
        if self.trace is not None:
            self.trace.append(TraceEntry(self.now, node, event, detail))

    def format_trace(self) -> str:
        return "\n".join(
            f"{e.time * 1e3:9.3f}ms {e.node:>8} {e.event:<8} {e.detail}" for e in self.trace or ()
        )


@dataclass(frozen=True, slots=True)
class CircuitHandle:
    """What a PSP's lookup service returns to a sender: first site, first label and key."""

    first_hop: str
    label: int
    key: HopKey
    labels: tuple[int, ...]  #: the incoming label at each site, in path order

    def packet(
        self, src: str, payload: bytes = b"", *, metadata: int = 0, hop_limit: int = 16
    ) -> bytearray:
        """A form-1 packet from ``src`` into this circuit."""
        return build_circuit_packet(
            src=src,
            dst=self.first_hop,
            label=self.label,
            key=self.key,
            payload=payload,
            metadata=metadata,
            hop_limit=hop_limit,
        )


def install_circuit(
    path: Iterable[SiteNode],
    destination: str,
    *,
    psp: str,
    service: str,
    now: float = 0.0,
    lifetime: float = 600.0,
    final_label: int = 0,
    final_key: HopKey | None = None,
    strip: bool = False,
    fis_routes: bool = True,
) -> CircuitHandle:
    """Play a PSP's lookup service: allocate a label at every site on ``path``, install the
    hops back to front (each site re-MACs with the next site's key), and -- with
    ``fis_routes`` -- write the source-routing FIS entries ``label -> {label, next_hop}``."""
    import secrets

    sites = list(path)
    if not sites:
        raise ValueError("a circuit needs at least one site")
    labels = [s.site.circuits.allocate(psp, now=now) for s in sites]
    keys = [HopKey(secrets.token_bytes(16)) for _ in sites]
    for i in range(len(sites) - 1, -1, -1):
        final = i == len(sites) - 1
        hop = (
            OutHopEntry(final_label, destination, final_key, final=True, strip=strip)
            if final
            else OutHopEntry(labels[i + 1], sites[i + 1].site.public_ip, keys[i + 1])
        )
        site = sites[i].site
        site.circuits.install(
            labels[i],
            psp=psp,
            service=service,
            in_key=keys[i],
            out_hops=[hop],
            destination=destination,
            expires=now + lifetime,
            now=now,
        )
        if fis_routes:
            site.fis.put(
                f"{psp}/{service}",
                str(labels[i]),
                {"label": hop.label, "next_hop": hop.next_hop},
                writer=psp,
            )
    return CircuitHandle(sites[0].site.public_ip, labels[0], keys[0], tuple(labels))


class ServiceBench:
    """A three-node test bench for one service: ``S -- R(+site C) -- D``.

    The service is deployed at the site as ``psp/service``; :meth:`send` pushes one packet of
    the chosen form from S toward D through the site and returns the payloads D received.
    Form 1 uses a one-hop circuit (in label :attr:`label`, final out hop to D with label
    :attr:`out_label`); form 2 registers service ID :attr:`service_id`; form 3 registers D's
    prefix and has R divert it.
    """

    def __init__(
        self,
        source: str | bytes,
        *,
        psp: str = "psp",
        service: str = "svc",
        seed: int = 0,
        redirect_prefixes: Iterable[str] = (),
        **site_kwargs: Any,
    ) -> None:
        self.net = Network(seed=seed)
        self.s = self.net.host("S", "198.18.0.10")
        self.d = self.net.host("D", "198.18.9.10", prefix="198.18.9.0/24")
        self.r = self.net.router("R", "198.18.0.1")
        self.c = self.net.site("C", "198.18.5.1", router=self.r, **site_kwargs)
        self.net.link(self.s, self.r)
        self.net.link(self.r, self.d)
        self.net.compute_routes()
        self.site = self.c.site
        self.psp, self.service = psp, service
        self.slot = self.site.deploy(psp, service, source)
        self.d_ip = self.d.ip
        self.in_key = HopKey(b"bench-in-key-16b")
        self.out_key = HopKey(b"bench-out-key16b")
        self.label = self.site.circuits.allocate(psp, now=0.0)
        self.out_label = 1
        self.site.circuits.install(
            self.label,
            psp=psp,
            service=service,
            in_key=self.in_key,
            out_hops=[OutHopEntry(self.out_label, self.d_ip, self.out_key, final=True)],
            destination=self.d_ip,
            expires=1e9,
        )
        self.service_id = 0x00ABCD
        redirects = tuple(redirect_prefixes)
        self.site.register_service_id(self.service_id, psp, service, redirect_prefixes=redirects)
        self._redirects = redirects
        self._form3 = False

    @property
    def ns(self) -> str:
        return f"{self.psp}/{self.service}"

    def put(self, key: str | int, value: Any) -> None:
        """Write a FIS entry of the service (as the PSP's control plane would)."""
        self.site.fis.put(self.ns, str(key), value, writer=self.psp)

    def lpm_put(self, table: str, prefix: str, value: Any) -> None:
        self.site.fis.lpm_put(self.ns, table, prefix, value, writer=self.psp)

    def send(
        self, payload: bytes = b"", *, form: int = 1, metadata: int = 0, src: str | None = None
    ) -> list[bytes]:
        """Send one packet of ``form`` from S, run the network, return D's new payloads."""
        before = len(self.d.inbox)
        src_ip = src or self.s.ip
        if form == 1:
            data = build_circuit_packet(
                src=src_ip,
                dst=self.site.public_ip,
                label=self.label,
                key=self.in_key,
                payload=payload,
                metadata=metadata,
            )
        elif form == 2:
            data = build_service_packet(
                src=src_ip,
                dst=self.d_ip,
                service_id=self.service_id,
                payload=payload,
                metadata=metadata,
            )
        elif form == 3:
            if not self._form3:
                self.site.register_destination(
                    "198.18.9.0/24", self.psp, self.service, redirect_prefixes=self._redirects
                )
                self.r.divert_prefix("198.18.9.0/24")
                self._form3 = True
            data = build_ipv4(src=src_ip, dst=self.d_ip, proto=17, payload=payload)
        else:
            raise ValueError("form is 1, 2 or 3")
        self.s.send(data)
        self.net.run()
        return [r.payload for r in self.d.inbox[before:]]

    @property
    def drops(self) -> dict[str, int]:
        return dict(self.site.drops)

    @property
    def counters(self) -> dict[str, int]:
        return self.slot.ctx.counters.as_dict()

    @property
    def status(self) -> str:
        return self.slot.status
