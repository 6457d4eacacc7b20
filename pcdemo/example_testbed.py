"""What every example's namespace demo shares: its topology, its sites, its packet I/O.

One module for the examples (``examples/<name>/demo.py``), above the SDK, the site and the
testbed (docs/architecture.md, "Packages"):

* :func:`load_topology` reads an example's topology file (its TOML, or the user's own with
  ``--topology FILE``) and checks that it has what the example needs (nodes by name, which of
  them are sites, hosts and routers, links), naming everything it lacks in one message
  (:class:`TopologyLacks`);
* :func:`sim_network` builds the simulator's network (:mod:`pcsite_lite.sim`) from the same
  file, with the addresses the testbed gives the same nodes: an example's topology exists once;
  :func:`tap` sees the frames a simulated link carries; :class:`SimSite` is the PSP's handle
  on a simulated site, with the calls of :class:`pcsock.control.SiteHandle` (so an example's
  control plane drives either);
* :class:`ExampleTestbed` builds the testbed and starts the real site daemon (``pcsite run``)
  in a site's namespace on demand; the PSP reaches it through :class:`pcsock.control.SiteHandle`
  (signed uploads to the site's repository, circuits, FIS and sign-ups through the control API);
* :class:`Capture`, :func:`capture`, :func:`raw_sender`, :func:`iface`, :func:`tx_packets`:
  packets seen on, and sent from, a node's namespace; :func:`circuit_packets`, the form-1
  packets among captured frames;
* an example's demo (``examples/<name>/demo.py``) says what it needs (``TOPOLOGY``,
  ``NEEDS``, ``PREFIX``) and what it does in each world (``on_testbed(etb, topo)``,
  ``on_simulator(path)``); :func:`run_testbed` and :func:`run_simulator` run it there (the
  topology loaded and checked, the testbed built and torn down), :func:`main` is its command
  line (``python -m examples.<name>.demo [--topology FILE] [--world ...]``, ``--help``: runs
  it as root, else in the simulator, and prints its figures as JSON), and
  :func:`pcdemo.scenarios.example_scenario` makes it a row of ``python -m pcdemo``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from pcdemo.rig import render_toml, start_cluster_site, wait_until
from pcsock.control import ControlClient, SiteHandle
from pcsock.wire import FORM_CIRCUIT, WireError, parse

__all__ = [
    "Capture",
    "ExampleTestbed",
    "Needs",
    "SimSite",
    "TopologyLacks",
    "addresses",
    "capture",
    "circuit_packets",
    "iface",
    "load_topology",
    "main",
    "probe_until",
    "raw_sender",
    "run_simulator",
    "run_testbed",
    "sim_network",
    "tap",
    "tx_packets",
    "wait_until",
    "write_atomic",
]

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33  # Linux; not exported by the socket module
SO_TIMESTAMPNS = 35  # Linux: each packet's arrival time (CLOCK_REALTIME) as a cmsg
_TIMESPEC = struct.Struct("@qq")
CONTROL = "127.0.0.1:8080"  #: each site daemon's control API, on its namespace's loopback
ADMIN_TOKEN = "example-isp-admin-0123456789abcdef"
#: the ``[services]`` settings of the examples' site daemons: the default per-packet budget
#: (10 ms) and batch deadline (20 ms) are tripped when other jobs preempt a site on a loaded
#: 2-vCPU machine (measured: congestion and redundancy demos at load average ~10)
SERVICES: dict[str, Any] = {"packet_budget_ms": 50, "deadline_ms": 200}


def psp_token(psp: str) -> str:
    return f"example-{psp}-token-0123456789abcdef"


# --- topology
class TopologyLacks(ValueError):
    """A topology file lacks what an example needs (every missing part in one message)."""


@dataclass(frozen=True)
class Needs:
    """What an example needs of its topology: node names by kind, and links (pairs)."""

    hosts: tuple[str, ...] = ()
    routers: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()  #: sites (each on a router)
    links: tuple[tuple[str, str], ...] = ()  #: links the demo captures on

    def check(self, topo: Any, source: str) -> None:
        lacks = []
        for kind, names in (("host", self.hosts), ("router", self.routers), ("site", self.sites)):
            for n in names:
                spec = topo.nodes.get(n)
                if spec is None:
                    lacks.append(f"a {kind} named {n!r}")
                elif spec.kind != kind:
                    lacks.append(f"{n!r} to be a {kind} (it is a {spec.kind})")
        have = {frozenset((lk.a, lk.b)) for lk in topo.links}
        for a, b in self.links:
            if frozenset((a, b)) not in have:
                lacks.append(f"a link {a} -- {b}")
        if lacks:
            raise TopologyLacks(f"{source}: this example needs " + "; ".join(lacks))


def load_topology(path: str | Path, needs: Needs) -> Any:
    """The topology in ``path`` (``testbed.topology.Topology``), checked against ``needs``."""
    from testbed.topology import load

    topo = load(path)
    needs.check(topo, str(path))
    return topo


def addresses(topology: Any) -> dict[str, str]:
    """Every node's address in ``topology`` (a ``testbed.topology.Topology`` or the path of its
    file; a site's: its public IP), as the testbed and :func:`sim_network` assign them."""
    from testbed.plan import make
    from testbed.topology import Topology, load

    topo = topology if isinstance(topology, Topology) else load(topology)
    return {n: str(p.address) for n, p in make(topo).nodes.items() if p.address}


@dataclass
class SimNetwork:
    """A topology in the simulator: ``nodes`` by name (hosts, routers, sites) and the links
    by their two ends (``links[("A", "B")]`` and ``links[("B", "A")]`` are the same link)."""

    net: Any
    nodes: dict[str, Any]
    links: dict[tuple[str, str], Any]
    addresses: dict[str, str]  #: host/router address, site public IP


def sim_network(
    path: str | Path,
    *,
    seed: int = 1,
    site_kwargs: Callable[[str, Any], dict[str, Any]] | None = None,
) -> SimNetwork:
    """The simulator's network of the topology in ``path`` (same names and addresses as the
    testbed's; hosts own their topology prefix; links keep their delay). ``site_kwargs(name,
    net)``: further arguments of a site (``pcsite_lite.sim.Network.site``, e.g. its FIS)."""
    from pcsite_lite import sim
    from testbed.plan import make
    from testbed.topology import load

    topo = load(path)
    plan = make(topo)
    net = sim.Network(seed=seed, trace=False)
    nodes: dict[str, Any] = {}
    addresses: dict[str, str] = {}
    for name, spec in topo.nodes.items():
        p = plan.nodes[name]
        if spec.kind == "router":
            nodes[name] = net.router(name, str(p.address))
        elif spec.kind == "host":
            prefix = str(spec.prefix) if getattr(spec, "prefix", None) else None
            nodes[name] = net.host(name, str(p.address), prefix=prefix)
        else:
            continue
        addresses[name] = str(p.address)
    for name, spec in topo.nodes.items():
        if spec.kind == "site":
            extra = site_kwargs(name, net) if site_kwargs is not None else {}
            nodes[name] = net.site(
                name, str(plan.nodes[name].public_ip), router=nodes[spec.router], **extra
            )
            addresses[name] = str(plan.nodes[name].public_ip)
    links: dict[tuple[str, str], Any] = {}
    for lk in topo.links:
        if lk.a in nodes and lk.b in nodes and "site" not in (topo.nodes[lk.a].kind,
                                                              topo.nodes[lk.b].kind):  # fmt: skip
            link = net.link(nodes[lk.a], nodes[lk.b], delay=lk.delay_ms / 1e3)
            links[(lk.a, lk.b)] = links[(lk.b, lk.a)] = link
    net.compute_routes()
    return SimNetwork(net, nodes, links, addresses)


def tap(link: Any, seen: Callable[[Any, bytes], None]) -> Callable[[], None]:
    """Have ``seen(sender, frame)`` called with every frame the simulated ``link`` carries
    (either way, before it travels on); returns the call that removes the tap."""
    send = link.transmit

    def tapped(sender: Any, data: bytes) -> None:
        seen(sender, data)
        send(sender, data)

    def untap() -> None:
        link.transmit = send

    link.transmit = tapped
    return untap


class SimSite:
    """A PSP's handle on a simulated site (a :class:`pcsite_lite.site.Site`, or the
    ``pcsite_lite.sim`` node holding one): the calls of :class:`pcsock.control.SiteHandle`,
    made on the site object in process. The simulator's ISP takes ownership proofs as
    validated (a site daemon validates them against its trust anchor) and approves every
    redirect prefix asked for; with ``router``, a destination sign-up also has that simulated
    router divert the prefix (the ISP's part)."""

    def __init__(self, site: Any, psp: str, *, router: Any = None, lifetime: float = 1e9) -> None:
        self.node = site if hasattr(site, "pipeline") else None  #: the sim node, if given
        self.site = site.site if self.node is not None else site
        self.psp = psp
        self.router = router
        self.lifetime = lifetime
        self.public_ip: str = self.site.public_ip
        self.name: str = self.site.name

    def _ns(self, service: str) -> str:
        from pcsite_lite.fis import namespace

        return namespace(self.psp, service)

    # --- services, destinations, service IDs
    def deploy(self, service: str, source: str) -> None:
        self.site.deploy(self.psp, service, source)

    def register_destination(
        self, prefix: str, service: str, proof: str = "", *, redirect_prefixes: Any = None
    ) -> None:
        self.site.register_destination(
            prefix, self.psp, service, redirect_prefixes=list(redirect_prefixes or ())
        )
        if self.router is not None:
            self.router.divert_prefix(prefix)

    def register_service_id(
        self, service_id: int, service: str, redirect_prefixes: list[str] | None = None
    ) -> None:
        self.site.register_service_id(
            service_id, self.psp, service, redirect_prefixes=tuple(redirect_prefixes or ())
        )

    # --- FIS
    def fis_put(self, service: str, key: str, value: Any) -> None:
        self.site.fis.put(self._ns(service), key, value, writer=self.psp)

    def fis_get(self, service: str, key: str) -> Any:
        return self.site.fis.get(self._ns(service), key)

    def fis_delete(self, service: str, key: str) -> None:
        self.site.fis.delete(self._ns(service), key, writer=self.psp)

    def fis_lpm_put(self, service: str, table: str, prefix: str, value: Any) -> None:
        self.site.fis.lpm_put(self._ns(service), table, prefix, value, writer=self.psp)

    def fis_lpm_delete(self, service: str, table: str, prefix: str) -> None:
        self.site.fis.lpm_delete(self._ns(service), table, prefix, writer=self.psp)

    def isp_lpm_put(self, table: str, prefix: str, value: Any) -> None:
        from pcsite_lite.fis import ISP

        self.site.fis.lpm_put(ISP, table, prefix, value, writer=ISP)

    # --- circuits
    def allocate_label(self, service: str) -> int:
        return int(self.site.circuits.allocate(self.psp, now=self.site.now))

    def install(self, label: int, service: str, in_key: bytes, out: list[Any]) -> None:
        """Install the hop at ``label``: ``out`` as (label, next hop, key or None) tuples or
        :class:`pcsock.control.OutHop`."""
        from pcsite_lite.circuits import OutHopEntry
        from pcsock.wire import HopKey

        hops = []
        for o in out:
            lb, nh, k = (o.label, o.next_hop, o.key) if hasattr(o, "next_hop") else o
            hops.append(OutHopEntry(label=lb, next_hop=nh, key=None if k is None else HopKey(k)))
        now = self.site.now
        self.site.circuits.install(label, psp=self.psp, service=service, in_key=in_key,
                                   out_hops=hops, expires=now + self.lifetime, now=now)  # fmt: skip

    def counters(self, service: str) -> dict[str, int]:
        return dict(self.site.runtime.slot(self.psp, service).ctx.counters.as_dict())


# --- the testbed, with real site daemons
class ExampleTestbed:
    """An example's namespace testbed (always torn down) with site daemons on demand; its
    work directory ``tmp`` (configs, state, FIS files) is made once the testbed is up.

    >>> with ExampleTestbed(TOPOLOGY, prefix="pce") as etb:       # doctest: +SKIP
    ...     ca = etb.site("CA", "webco", trust_anchor=anchor)
    ...     ca.deploy("firewall", source)
    """

    def __init__(
        self, topology: Any, *, prefix: str, progress: Callable[[str], None] | None = None,
        nodes: int = 1, fis_replicas: int = 0,
    ) -> None:  # fmt: skip
        from pcsite_lite.repository import generate_key
        from testbed.net import Testbed
        from testbed.topology import Topology, load

        topo = topology if isinstance(topology, Topology) else load(topology)
        if nodes > 1:  # every site spans machines: an LB + ``nodes`` compute nodes (cluster.md)
            for spec in topo.of_kind("site"):
                spec.nodes, spec.fis_replicas = nodes, fis_replicas
        self.prefix = prefix
        self.tb = Testbed(topo, prefix=prefix, progress=progress)
        self.key = generate_key()  #: the PSPs' repository signing key (one for the demo)
        #: (site, PSP, ISP credential?) -> handle
        self.sites: dict[tuple[str, str, bool], SiteHandle] = {}
        self.daemons: set[str] = set()  #: sites whose daemon runs
        self.procs: list[Any] = []

    def __enter__(self) -> ExampleTestbed:
        self.tb.up()  # on a failure it removes what it built, and re-raises
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-ex-"))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()
        try:
            self.tb.down()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def node(self, name: str) -> Any:
        return self.tb.node(name)

    def path(self, name: str) -> Path:
        """A path in this testbed's work directory (removed with it)."""
        return self.tmp / name

    def address(self, name: str) -> str:
        addr = self.tb.node(name).address
        if addr is None:
            raise TopologyLacks(f"{name} has no address")
        return str(addr)

    def site(
        self,
        name: str,
        psp: str,
        *,
        trust_anchor: str | None = None,
        others: Iterable[str] = (),
        fis: Path | None = None,
        services: dict[str, Any] | None = None,
        isp: bool = False,
    ) -> SiteHandle:
        """Start ``pcsite run`` in site ``name``'s namespace (once) and return ``psp``'s handle
        on it. ``others``: further PSPs the site serves; ``fis``: a SQLite FIS file (sites given
        the same file share their FIS); ``services``: ``[services]`` settings over
        :data:`SERVICES` (e.g. ``{"trusted": ["isp-re/re"]}``); ``isp``: the handle holds the ISP's
        credential, acting for ``psp`` (what only the ISP may do: redirect prefixes, its own
        FIS namespace)."""
        from pcsite_lite.repository import public_key_bytes, sign_service

        if (name, psp, isp) in self.sites:
            return self.sites[(name, psp, isp)]
        info = self.tb.site(name)
        node = self.tb.node(name)
        if name not in self.daemons:
            state = self.tmp / f"{name}-state"
            state.mkdir()
            anchor = None
            if trust_anchor is not None:
                anchor = self.tmp / f"{name}-anchor.txt"
                anchor.write_text(trust_anchor + "\n")
            signing = public_key_bytes(self.key).hex()
            config = {
                "site": {
                    "name": name,
                    "public_ip": str(info.public_ip),
                    "workers": 1,
                    "state_dir": str(state),
                    "repository": str(state / "repo"),
                    "fis": None if fis is None else f"sqlite://{fis}",
                },
                "dataplane": {"tun_prefix": "pcew"},
                "control": {
                    "listen": CONTROL,
                    "admin_token": ADMIN_TOKEN,
                    "trust_anchor_file": None if anchor is None else str(anchor),
                    "psps": {
                        p: {"token": psp_token(p), "signing_key": signing}
                        for p in dict.fromkeys([psp, *others])
                    },
                },
                "services": {**SERVICES, **(services or {})},
            }
            cfg = self.tmp / f"{name}.toml"
            cfg.write_text(render_toml(config))
            # ready once its control API answers. (Waiting for the log's "site up" instead, as
            # the rig does: in one of four encryption demo runs on this loaded machine C1
            # dropped 22 of 100 packets; four runs with this wait dropped none.)
            health = ControlClient(f"http://{CONTROL}", token=ADMIN_TOKEN, timeout=2.0)

            def up() -> bool:
                try:
                    return bool(node.call(health.health, timeout=5.0)["ok"])
                except Exception:
                    return False

            if name in self.tb.clusters:  # ``nodes = N``: an LB + controller, N compute nodes
                start_cluster_site(self.tb, name, config, self.tmp, secret=ADMIN_TOKEN,
                                   ready=up, procs=self.procs,
                                   fis=None if fis is None else f"sqlite://{fis}")  # fmt: skip
            else:
                argv = [sys.executable, "-m", "pcsite_lite.cli", "run", "--config", str(cfg)]
                self.procs.append(node.start(argv, name="pcsite", ready=up, timeout=30))
            self.daemons.add(name)
        token = ADMIN_TOKEN if isp else psp_token(psp)
        client = ControlClient(f"http://{CONTROL}", token=token, psp=psp)
        handle = SiteHandle(
            client,
            public_ip=str(info.public_ip),
            name=name,
            signer=functools.partial(sign_service, self.key, psp),
            via=node.call,
        )
        self.sites[(name, psp, isp)] = handle
        return handle

    def capture(self, node: str, peer: str) -> Capture:
        """IPv4 packets arriving at ``node`` on its interface toward ``peer``."""
        return capture(self.tb, node, peer)

    def raw_sender(self, node: str) -> socket.socket:
        """A raw IPv4 socket in ``node``'s namespace (send whole packets with ``sendto``)."""
        return raw_sender(self.tb.node(node))

    @staticmethod
    def wait_served(site: SiteHandle, service: str, packets: int, timeout: float = 10.0) -> bool:
        """Wait until ``service`` at ``site`` has run on ``packets`` packets (its usage
        counter): what a demo waits for before it reads its captures, since a loaded site may
        still be busy when a capture's quiet period ends. Whether it got there."""
        return wait_until(lambda: site.counters(service).get("packets", 0) >= packets, timeout)

    @staticmethod
    def settled_count(site: SiteHandle, service: str, timeout: float = 10.0) -> int:
        """``service``'s packet count at ``site`` once it is at least 1 and held across a
        usage report (workers, and a multi-machine site's nodes, report every 0.25 s): what a
        demo subtracts to leave its probes out of a figure."""
        last = [-1, 0.0]

        def held() -> bool:
            n = int(site.counters(service).get("packets", 0))
            now = time.monotonic()
            if n != last[0]:
                last[:] = [n, now]
                return False
            return n >= 1 and now - last[1] >= 0.3

        wait_until(held, timeout, interval=0.1)
        return int(last[0])

    def divert(self, site: str, prefix: str) -> None:
        """The ISP's router part of a sign-up: ``site``'s router diverts ``prefix`` to it."""
        self.tb.divert(self.tb.site(site).router, prefix)


def probe_until(send: Callable[[int], None], arrived: Callable[[int], bool], *,
                timeout: float = 20.0, every: float = 0.25) -> int:  # fmt: skip
    """Send probe 0, 1, 2, ... (``send(i)``) until ``arrived(i)`` says probe ``i`` got where
    the demo's packets should go (each probe waited for up to ``every`` s); returns how many
    were sent, or raises TimeoutError after ``timeout`` s.

    What an example waits for before it sends the packets it measures, instead of sleeping
    past the FIS staleness bound: a circuit's hops, a service's FIS entries and routes are
    written through the control API, but a worker applies FIS changes only when it next polls
    (every 5 ms, if it gets a CPU), and on a multi-machine site on the compute node that
    serves the circuit or flow. A probe that gets through went the same way (same circuit,
    same flow: the LB sends it to the same node) through the same state. Probes carry their
    own payloads, so a demo leaves them out of its figures."""
    end = time.monotonic() + timeout
    i = 0
    while time.monotonic() < end:
        send(i)
        i += 1
        if wait_until(lambda k=i - 1: arrived(k), min(every, max(0.0, end - time.monotonic()))):
            return i
    raise TimeoutError(f"no probe got through in {timeout:.0f} s ({i} sent)")


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path``'s content at once (temp file + rename): a process polling the file
    reads the old content or the new, never a truncated or half-written one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- packets
@dataclass
class Capture:
    """IPv4 packets arriving on an interface (an AF_PACKET socket in the node's namespace,
    16 MiB receive buffer so a demo can send its whole burst before draining); ``times`` has
    the kernel's arrival time (``time.time()`` clock) of each packet in ``seen``."""

    sock: socket.socket
    seen: list[bytes] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    @classmethod
    def open(cls, node: Any, iface: str) -> Capture:
        def mk() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
            s.bind((iface, ETH_P_IP))
            s.settimeout(0.05)
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            return s

        return cls(node.call(mk))

    def drain(self, quiet: float = 0.3) -> list[bytes]:
        """Everything seen so far, reading until nothing arrives for ``quiet`` seconds."""
        deadline = time.monotonic() + quiet
        while time.monotonic() < deadline:
            try:
                data, anc, _flags, addr = self.sock.recvmsg(65535, 64)
            except TimeoutError:
                continue
            if addr[2] != PACKET_OUTGOING:
                self.seen.append(data)
                self.times.append(_arrival(anc))
                deadline = time.monotonic() + quiet
        return self.seen

    def saw(self, marker: bytes, quiet: float = 0.02) -> bool:
        """Whether a packet containing ``marker`` arrived (reading what is there now)."""
        return any(marker in d for d in self.drain(quiet))

    def forget(self, quiet: float = 0.3) -> None:
        """Drain until quiet and forget everything seen (e.g. the probes before a burst)."""
        self.drain(quiet)
        self.seen.clear()
        self.times.clear()

    def take(self, quiet: float = 0.3, *, proto: int | None = None) -> list[bytes]:
        """Drain and hand over what was seen (only IP protocol ``proto`` if given)."""
        out = [d for d in self.drain(quiet) if proto is None or (len(d) >= 20 and d[9] == proto)]
        self.seen.clear()
        self.times.clear()
        return out

    def count(self, *, dst: str, srcs: set[str]) -> int:
        """Drain, count the packets from ``srcs`` to ``dst``, and forget what was seen."""
        n = 0
        for d in self.drain():
            if socket.inet_ntoa(d[16:20]) == dst and socket.inet_ntoa(d[12:16]) in srcs:
                n += 1
        self.seen.clear()
        self.times.clear()
        return n

    def close(self) -> None:
        self.sock.close()


def _arrival(ancillary: list[tuple[int, int, bytes]]) -> float:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return sec + nsec / 1e9
    return time.time()


def circuit_packets(frames: Iterable[bytes]) -> list[Any]:
    """The form-1 (circuit) packets among captured IPv4 ``frames``, parsed
    (:class:`pcsock.wire.Packet`); frames that are not PacketCloud packets are skipped."""
    out = []
    for f in frames:
        try:
            p = parse(f)
        except WireError:
            continue
        if p.form == FORM_CIRCUIT:
            out.append(p)
    return out


def iface(tb: Any, node: str, peer: str) -> str:
    """The name of ``node``'s interface toward ``peer``."""
    plan = tb.node(node).plan.iface_to(peer)
    if plan is None:
        raise TopologyLacks(f"{node} has no link to {peer}")
    return str(plan.name)


def capture(tb: Any, node: str, peer: str) -> Capture:
    """IPv4 packets arriving at ``node`` on its interface toward ``peer``."""
    return Capture.open(tb.node(node), iface(tb, node, peer))


def raw_sender(node: Any) -> socket.socket:
    """A raw IPv4 socket in ``node``'s namespace (send whole packets with ``sendto``)."""
    return node.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW))


def tx_packets(node: Any, iface: str) -> int:
    """The kernel's count of packets ``node`` sent on ``iface`` (-1 if unreadable)."""
    rc, out, _ = node.run(["ip", "-s", "-j", "link", "show", "dev", iface])
    return int(json.loads(out)[0]["stats64"]["tx"]["packets"]) if rc == 0 else -1


# --- running an example's demo in either world, and its command line
def run_testbed(
    demo: ModuleType,
    *,
    prefix: str | None = None,
    progress: Callable[[str], None] | None = None,
    topology: str | Path | None = None,
    nodes: int = 1,
    fis_replicas: int = 0,
    **params: Any,
) -> dict[str, Any]:
    """Run an example's demo with real packets: its topology (``topology``, default the
    demo's ``TOPOLOGY``) checked against its ``NEEDS`` and built as a testbed (name prefix
    ``prefix``, default its ``PREFIX``, + a run id; always torn down; ``nodes > 1``: every
    site an LB and ``nodes`` compute nodes, with ``fis_replicas`` FIS machines); then its
    ``on_testbed(etb, topo, **params)`` gives the figures."""
    topo = load_topology(topology or demo.TOPOLOGY, demo.NEEDS)
    with ExampleTestbed(topo, prefix=prefix or demo.PREFIX, progress=progress, nodes=nodes,
                        fis_replicas=fis_replicas) as etb:  # fmt: skip
        result: dict[str, Any] = demo.on_testbed(etb, topo, **params)
    return result


def run_simulator(
    demo: ModuleType, *, topology: str | Path | None = None, **params: Any
) -> dict[str, Any]:
    """Run an example's demo in the simulator (:mod:`pcsite_lite.sim`) on the same topology
    file, checked against its ``SIM_NEEDS`` (or ``NEEDS``): its ``on_simulator(path,
    **params)`` gives the figures."""
    path = Path(topology or demo.TOPOLOGY)
    load_topology(path, getattr(demo, "SIM_NEEDS", demo.NEEDS))
    result: dict[str, Any] = demo.on_simulator(path, **params)
    return result


def main(demo: ModuleType, argv: list[str] | None = None) -> int:
    """``python -m examples.<name>.demo [--topology FILE] [--world ...]``: run the example's
    demo (``demo``: its module, with ``TOPOLOGY``, ``NEEDS``, ``PREFIX``, ``on_testbed``,
    ``on_simulator`` and ``passed``) and print its figures as JSON; exit 0 if it passed, 1 if
    not, 2 if the topology lacks what the example needs."""
    default = Path(demo.TOPOLOGY)
    # run as ``python -m examples.<name>.demo`` the module is ``__main__``; its spec has the name
    name = demo.__spec__.name if getattr(demo, "__spec__", None) else demo.__name__
    ap = argparse.ArgumentParser(
        prog=f"python -m {name}",
        description=(demo.__doc__ or "").strip().split("\n")[0]
        + " Real packets on the site daemons as root, else the simulator; prints JSON.",
    )
    ap.add_argument(
        "--topology",
        metavar="FILE",
        type=Path,
        default=default,
        help=f"the testbed topology (default: {default.name}, the example's own)",
    )
    ap.add_argument(
        "--world",
        choices=("auto", "testbed", "simulator"),
        default="auto",
        help="real packets in a namespace testbed (needs root) or the simulator "
        "(default: the testbed as root, else the simulator)",
    )
    ap.add_argument("--prefix", help="testbed name prefix (default: the example's)")
    ap.add_argument("--nodes", type=int, default=1, choices=range(1, 17), metavar="N",
                    help="testbed: compute-node machines per site (> 1: an LB in front, "
                    "docs/cluster.md)")  # fmt: skip
    ap.add_argument("--fis-replicas", type=int, default=0, choices=range(5), metavar="M",
                    help="testbed, with --nodes > 1: each site's FIS on M machines")  # fmt: skip
    args = ap.parse_args(argv)
    if args.fis_replicas and args.nodes <= 1:
        ap.error("--fis-replicas needs --nodes > 1")
    from testbed.topology import TopologyError

    kind = args.world
    if kind == "auto":
        kind = "testbed" if os.geteuid() == 0 else "simulator"
    kw: dict[str, Any] = {"topology": args.topology}
    try:
        if kind == "testbed":
            if args.prefix:
                kw["prefix"] = args.prefix
            kw.update(nodes=args.nodes, fis_replicas=args.fis_replicas)
            result = run_testbed(demo, progress=print, **kw)
        else:
            result = run_simulator(demo, **kw)
    except (TopologyLacks, TopologyError) as exc:
        print(f"python -m {name}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"world": kind, **result}, indent=2, default=str))
    return 0 if demo.passed(result) else 1
