"""The testbed: build a topology into namespaces, run things in it, always tear it down.

>>> with Testbed.from_file("testbed/topologies/fig2.toml") as tb:   # doctest: +SKIP
...     rc, out, err = tb.node("S").run("ping -c1 -W1 198.18.254.2")
...     tb.site("C2").public_ip
'198.18.254.2'

Building is done by worker threads that enter the namespaces (see :mod:`testbed.netns`) and
send pre-encoded netlink batches (:mod:`testbed.netlink`); only traffic shaping (``tc``) and
the routers' nftables rulesets fork a tool, once per namespace that needs them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from testbed import cluster as clustermod
from testbed import netns, state
from testbed import plan as planmod
from testbed.netlink import Batch
from testbed.router import NFT_TABLE, Attachment, attachment_for, divert_argv
from testbed.topology import TESTBED_SPACE, LinkSpec, Topology, load

if TYPE_CHECKING:
    from testbed.dns import DnsServer

__all__ = ["Node", "Process", "Result", "SiteInfo", "Testbed"]

T = TypeVar("T")
REDIS_SERVER = "/usr/bin/redis-server"
REDIS_PORT = 6379
REDIS_ROLES = ("site", "isp")
#: users the replicated FIS's servers use among themselves (not handed to sites)
REDIS_INTERNAL_ROLES = ("replica", "sentinel")
REDIS_SENTINEL = "/usr/bin/redis-sentinel"
FIS_FILTER_TABLE = "pctb_fis"  #: bridge-family nft table in the control namespace
TAP_QUEUE = 10000  #: frames a delay line's TAP queues before dropping (bursts)
_BASE_SYSCTLS = {
    "net/ipv6/conf/all/disable_ipv6": "1",
    "net/ipv6/conf/default/disable_ipv6": "1",
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/default/rp_filter": "0",
}
_ROUTER_SYSCTLS = {**_BASE_SYSCTLS, "net/ipv4/ip_forward": "1"}


class Result(NamedTuple):
    """What a command returned: unpack as ``rc, out, err = node.run(...)``."""

    returncode: int
    stdout: str
    stderr: str


class Process:
    """A background process started in a node's namespace (stdout+stderr go to a log file)."""

    def __init__(
        self,
        tb: Testbed,
        node: str,
        name: str,
        popen: subprocess.Popen[bytes],
        argv: list[str],
        log: Path,
    ) -> None:
        self.tb, self.node, self.name, self.popen, self.argv, self.log = (
            tb,
            node,
            name,
            popen,
            argv,
            log,
        )
        self.start_time = state.proc_start_time(popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 2.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` s; returns the exit status."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self.tb._forget(self.pid)
        return self.popen.returncode


class Node:
    """A node of a built testbed: a network namespace you can run commands in."""

    def __init__(self, tb: Testbed, plan: planmod.NodePlan) -> None:
        self.tb = tb
        self.plan = plan
        self.name = plan.name
        self.kind = plan.kind
        self.ns = tb.run_state.ns(plan.name)

    def __repr__(self) -> str:
        return f"<Node {self.name} ({self.kind}) in netns {self.ns}>"

    @property
    def address(self) -> str | None:
        """Main data address (a site's public IP, else its first interface's address)."""
        return self.plan.address

    @property
    def control_address(self) -> str | None:
        return self.plan.control.address if self.plan.control else None

    def argv(self, cmd: str | Sequence[str]) -> list[str]:
        inner = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return ["nsenter", f"--net={netns.path(self.ns)}", "--", *inner]

    def run(
        self,
        cmd: str | Sequence[str],
        timeout: float = 30.0,
        input: str | None = None,
        check: bool = False,
    ) -> Result:
        """Run ``cmd`` (a shell string or an argv) in the namespace and wait for it.

        Output is collected by ``communicate`` (no pipe can fill up and deadlock); a command
        still running after ``timeout`` s is killed and reported with return code -9.
        """
        try:
            out = subprocess.run(
                self.argv(cmd),
                capture_output=True,
                text=True,
                input=input,
                timeout=timeout,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:

            def text(b: bytes | str | None) -> str:
                return b.decode(errors="replace") if isinstance(b, bytes) else b or ""

            return Result(
                -9, text(exc.stdout), text(exc.stderr) + f"\n[timed out after {timeout} s]"
            )
        result = Result(out.returncode, out.stdout, out.stderr)
        if check and out.returncode != 0:
            raise RuntimeError(
                f"{self.name}: {cmd!r} failed ({out.returncode}): {out.stderr.strip()}"
            )
        return result

    cmd = run  #: Mininet's spelling

    def start(
        self,
        cmd: str | Sequence[str],
        name: str | None = None,
        ready: Callable[[], bool] | None = None,
        timeout: float = 10.0,
        env: dict[str, str] | None = None,
    ) -> Process:
        """Start ``cmd`` in the background; return once ``ready()`` is true.

        Its PID (and start time) go into the run's state, so ``testbed clean`` can stop it
        even if this Python process dies. If the process exits or ``ready`` stays false for
        ``timeout`` s, it is stopped and RuntimeError carries the end of its log.
        """
        argv = self.argv(cmd)
        pname = name or (cmd.split()[0] if isinstance(cmd, str) else os.path.basename(cmd[0]))
        logdir = self.tb.run_state.dir / "logs"
        logdir.mkdir(exist_ok=True)
        log = logdir / f"{self.name}-{pname}-{len(self.tb.processes)}.log"
        with open(log, "wb") as fh:
            popen = subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        proc = Process(self.tb, self.name, pname, popen, argv, log)
        self.tb.processes.append(proc)
        self.tb.run_state.add_process(self.name, pname, popen.pid, argv)
        deadline = time.monotonic() + timeout
        while ready is not None:
            if popen.poll() is not None:
                proc.stop()
                raise RuntimeError(
                    f"{pname} on {self.name} exited ({popen.returncode}):\n"
                    f"{proc.log_text()[-2000:]}"
                )
            try:
                if ready():
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                proc.stop()
                raise RuntimeError(
                    f"{pname} on {self.name} not ready within {timeout} s:\n"
                    f"{proc.log_text()[-2000:]}"
                )
            time.sleep(0.02)
        return proc

    def call(self, fn: Callable[[], T], timeout: float | None = 60.0) -> T:
        """Run the Python callable ``fn`` inside this namespace (in a helper thread).

        Sockets it creates belong to the namespace and can be used afterwards from anywhere.
        """
        return netns.call_in(self.ns, fn, timeout)

    def tcp_open(self, host: str, port: int) -> bool:
        """True if a TCP connection to ``host:port`` succeeds from this namespace."""

        def probe() -> bool:
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return True
            except OSError:
                return False

        return self.call(probe)


@dataclass(frozen=True)
class SiteInfo:
    """What a site daemon needs to know about where it runs."""

    name: str
    netns: str
    public_ip: str
    router: str
    data_iface: str
    data_address: str
    gateway: str  # the router's address on the site link
    control_iface: str | None
    control_address: str | None
    control_subnet: str
    compute_nodes: int
    fis_redis: str | None  # "redis://198.19.0.x:6379/0" when the topology runs Redis
    dns: str | None


class Testbed:
    """A testbed run: ``with Testbed(topology) as tb:`` builds it and always tears it down.

    ``topology`` is a :class:`~testbed.topology.Topology` or a path to a TOML file.
    ``prefix`` starts every name of the run (namespaces ``<prefix><runid>-<node>``).
    ``progress`` receives one line per build step (the CLI prints them).
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        topology: Topology | str | Path,
        prefix: str = "pct",
        progress: Callable[[str], None] | None = None,
        persistent: bool = False,
        workers: int = 2,
        services: bool = True,
    ) -> None:
        self.topo = topology if isinstance(topology, Topology) else load(topology)
        self.prefix = prefix
        self.plan = planmod.make(self.topo)
        self.clusters = clustermod.plan(self.topo)  #: multi-node sites (testbed/cluster.py)
        self.progress = progress or (lambda _msg: None)
        self.persistent = persistent
        self.workers = workers
        self.with_services = services
        self.processes: list[Process] = []
        self.nodes: dict[str, Node] = {}
        self.dns: DnsServer | None = None
        self.redis_url: str | None = None  #: the FIS Redis address (no credentials)
        self.redis_passwords: dict[str, str] = {}  #: role -> password (this run's)
        self.redis_procs: dict[str, Process] = {}
        self._fis_filtered: dict[str, bool] = {}
        self.attachments: dict[str, Attachment] = {}
        self.timings: dict[str, float] = {}
        self.run_state: state.Run
        self._t0 = 0.0
        self._built = False

    @classmethod
    def from_file(cls, path: str | Path, **kw: Any) -> Testbed:
        return cls(load(path), **kw)

    # --- names ----------------------------------------------------------------------------------
    @property
    def run(self) -> str:
        """The run name (``<prefix><runid>``)."""
        return self.run_state.name

    @property
    def control_ns(self) -> str | None:
        return self.run_state.ns("ctl") if self.plan.control_ports else None

    def node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(f"no node {name!r} (nodes: {', '.join(self.nodes)})") from None

    def site(self, name: str) -> SiteInfo:
        node = self.node(name)
        if node.kind != "site":
            raise KeyError(f"{name!r} is a {node.kind}, not a site")
        p = node.plan
        spec = self.topo.nodes[name]
        assert spec.router and p.public_ip
        mine, router_side = planmod.site_link(p, self.plan.nodes[spec.router])
        return SiteInfo(
            name=name,
            netns=node.ns,
            public_ip=p.public_ip,
            router=spec.router,
            data_iface=mine.name,
            data_address=mine.address,
            gateway=router_side.address,
            control_iface=p.control.name if p.control else None,
            control_address=p.control.address if p.control else None,
            control_subnet=str(self.plan.control_subnet),
            compute_nodes=spec.compute_nodes,
            fis_redis=self.fis_url("site", site=name),
            dns=self.dns.address if self.dns else None,
        )

    # --- build ------------------------------------------------------------------------------------
    def _step(self, label: str, fn: Callable[[], object]) -> None:
        t = time.monotonic()
        self.progress(f"[{t - self._t0:6.2f}s] {label}")
        fn()
        self.timings[label] = time.monotonic() - t

    def __enter__(self) -> Testbed:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> Testbed:
        """Build everything and wait until ready; on any failure, tear down and re-raise."""
        if self._built:
            raise RuntimeError(f"run {self.run} is already up")
        self._t0 = time.monotonic()
        self.run_state = state.Run.new(self.prefix, self.topo.name)
        names = [self.run_state.ns(n) for n in self.plan.nodes]
        names += [self.run_state.ns(m.name) for c in self.clusters.values() for m in c.machines()]
        if self.control_ns:
            names.append(self.control_ns)
        self.run_state.data.update(
            namespaces=names, topology_data=self.topo_dict(), persistent=self.persistent
        )
        self.run_state.save()
        self.nodes = {name: Node(self, p) for name, p in self.plan.nodes.items()}
        for c in self.clusters.values():
            for m in c.machines():
                iface = planmod.IfacePlan(clustermod.INTERNAL_DEV, 0, m.address,
                                          c.subnet.prefixlen, "internal", c.site)  # fmt: skip
                kind = "fis" if m in c.fis else "compute"
                self.nodes[m.name] = Node(self, planmod.NodePlan(m.name, kind, [iface]))
        try:
            n_links = len(self.plan.links) + len(self.plan.control_ports)
            self._step(f"creating {len(names)} namespaces", self._create_namespaces)
            self._step(f"creating {n_links} links", self._create_links)
            lines = [lp for lp in self.plan.links if emulated(lp.spec)]
            if lines:
                self._step(f"starting {len(lines)} delay lines", lambda: self._delay_lines(lines))
            self._step("addresses, routes, router attachments", self._configure)
            if self.clusters:
                self._step(
                    f"internal networks of {len(self.clusters)} multi-node site(s)",
                    lambda: [clustermod.build(c, self._ns_map()) for c in self.clusters.values()],
                )
            shaped = [lp for lp in self.plan.links if lp.spec.rate_bps]
            if shaped:
                self._step(
                    f"rate-limiting {len(shaped)} links (tc tbf)", lambda: self._shape(shaped)
                )
            if self.attachments:
                self._step(f"nftables on {len(self.attachments)} routers", self._nft)
            if self.with_services:
                self._services()
            self.run_state.data["phase"] = "up"
            self.run_state.data["summary"] = self.summary()
            self.run_state.save()
        except BaseException:
            self.down()
            raise
        self._built = True
        self.timings["up"] = time.monotonic() - self._t0
        self.progress(f"[{self.timings['up']:6.2f}s] ready: run {self.run}")
        return self

    def down(self) -> state.CleanReport | None:
        """Stop every process and remove every namespace of this run (idempotent)."""
        if not hasattr(self, "run_state"):
            return None  # never built
        t = time.monotonic()
        for proc in reversed(self.processes):
            try:
                proc.stop()
            except Exception:
                pass
        report = state.clean(self.run_state.name)
        self.timings["down"] = time.monotonic() - t
        self._built = False
        return report

    def topo_dict(self) -> dict[str, Any]:
        """The topology in the dict form :func:`testbed.topology.from_dict` reads back."""
        nodes = []
        for spec in self.topo.nodes.values():
            d: dict[str, Any] = {"name": spec.name, "kind": spec.kind, "control": spec.control}
            if spec.kind == "site":
                d.update(
                    router=spec.router,
                    public_ip=str(self.plan.nodes[spec.name].public_ip),
                    compute_nodes=spec.compute_nodes,
                )
                if spec.nodes > 1:  # a multi-machine site (testbed/cluster.py)
                    d.update(nodes=spec.nodes, fis_replicas=spec.fis_replicas)
            if spec.kind == "dns":
                d.update(zone=spec.zone, signed_reverse=[str(p) for p in spec.signed_reverse])
            if spec.kind == "fis":
                d["engine"] = spec.engine
            if spec.kind == "host" and spec.prefix is not None:
                d["prefix"] = str(spec.prefix)
            nodes.append(d)
        links = []
        for lp in self.plan.links:
            s = lp.spec
            d = {"a": s.a, "b": s.b, "name": s.name, "subnet": str(lp.subnet)}
            if s.delay_ms:
                d["delay"] = f"{s.delay_ms}ms"
            if s.jitter_ms:
                d["jitter"] = f"{s.jitter_ms}ms"
            if s.loss_pct:
                d["loss"] = s.loss_pct
            if s.rate_bps:
                d["rate"] = f"{s.rate_bps}bit"
            links.append(d)
        return {
            "name": self.topo.name,
            "control": {"subnet": str(self.topo.control_subnet)},
            "node": nodes,
            "link": links,
        }

    def _pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix=f"{self.prefix}-build"
        )

    def _per_node(self, fn: Callable[[str], None], control: Callable[[], None]) -> None:
        """``fn(node)`` for every node and ``control()`` for the control namespace (if the
        topology has one), on the build pool; the first error is raised."""
        with self._pool() as pool:
            futures = [pool.submit(fn, n) for n in self.plan.nodes]
            if self.control_ns:
                futures.append(pool.submit(control))
            for f in futures:
                f.result()

    def _create_namespaces(self) -> None:
        jobs = [
            (self.run_state.ns(n), _ROUTER_SYSCTLS if p.forwards else _BASE_SYSCTLS)
            for n, p in self.plan.nodes.items()
        ]
        if self.control_ns:
            jobs.append((self.control_ns, _BASE_SYSCTLS))
        for c in self.clusters.values():
            jobs += [(self.run_state.ns(m.name), _BASE_SYSCTLS) for m in c.machines()]
        with self._pool() as pool:
            list(pool.map(lambda j: netns.create(*j), jobs))

    def _alias(self, link: str) -> str:
        return f"{self.run}/{link}"[:60]

    def _create_links(self) -> None:
        per_node: dict[str, list[planmod.LinkPlan]] = {}
        for lp in self.plan.links:
            if not emulated(lp.spec):
                per_node.setdefault(lp.spec.a, []).append(lp)
        ctl_ports = {node: (port, idx) for node, port, idx in self.plan.control_ports}

        def build(name: str) -> None:
            node_ns = self.run_state.ns(name)
            netns.enter(node_ns)
            fds: list[int] = []
            try:
                batch = Batch(label=node_ns)
                for lp in per_node.get(name, []):
                    fd = os.open(netns.path(self.run_state.ns(lp.spec.b)), os.O_RDONLY)
                    fds.append(fd)
                    batch.veth(
                        lp.a_if.name,
                        lp.a_if.index,
                        lp.b_if.name,
                        lp.b_if.index,
                        fd,
                        alias=self._alias(lp.spec.name),
                    )
                if name in ctl_ports and self.control_ns:
                    fd = os.open(netns.path(self.control_ns), os.O_RDONLY)
                    fds.append(fd)
                    port, idx = ctl_ports[name]
                    batch.veth(
                        planmod.CTL_IFACE,
                        planmod.CTL_INDEX,
                        port,
                        idx,
                        fd,
                        alias=self._alias(f"control-{name}"),
                    )
                batch.commit()
            finally:
                for fd in fds:
                    os.close(fd)

        def bridge() -> None:
            assert self.control_ns
            netns.enter(self.control_ns)
            batch = Batch(label=self.control_ns)
            batch.bridge(planmod.CTL_BRIDGE, planmod.CTL_BRIDGE_INDEX)
            batch.alias(planmod.CTL_BRIDGE_INDEX, self._alias("control"))
            batch.commit()

        self._per_node(build, bridge)

    def _configure(self) -> None:
        world = str(TESTBED_SPACE)
        for spec in self.topo.of_kind("site"):
            assert spec.router
            att = attachment_for(self.plan.nodes[spec.router], self.plan.nodes[spec.name], world)
            self.attachments[spec.router] = att

        emulated_links = {lp.spec.name for lp in self.plan.links if emulated(lp.spec)}

        def configure(name: str) -> None:
            p = self.plan.nodes[name]
            node_ns = self.run_state.ns(name)
            netns.enter(node_ns)
            batch = Batch(label=node_ns)
            batch.up(1)
            index: dict[int, int] = {}
            for iface in p.ifaces:
                # delay-line TAPs got their index from the kernel
                idx = iface.index
                txqlen = 0
                if iface.link in emulated_links:
                    idx = socket.if_nametoindex(iface.name)
                    txqlen = TAP_QUEUE  # a TAP's queue to its reader is 500 frames by default
                index[iface.index] = idx
                batch.up(idx, txqlen=txqlen)
                batch.addr(idx, iface.address, iface.prefixlen)
            if p.public_ip:
                batch.addr(index[p.ifaces[0].index], p.public_ip, 32)
            if p.control:
                batch.up(p.control.index)
                batch.addr(p.control.index, p.control.address, p.control.prefixlen)
            for r in p.routes:
                batch.route(r.dst, r.gateway, index.get(r.oif, r.oif), src=r.src)
            if name in self.attachments:
                self.attachments[name].netlink(batch)
            batch.commit()

        def ctl() -> None:
            assert self.control_ns
            netns.enter(self.control_ns)
            batch = Batch(label=self.control_ns)
            batch.up(1)
            for _node, _port, idx in self.plan.control_ports:
                batch.up(idx, master=planmod.CTL_BRIDGE_INDEX)
            batch.commit()

        self._per_node(configure, ctl)

    def _shape(self, links: list[planmod.LinkPlan]) -> None:
        per_node: dict[str, list[str]] = {}
        for lp in links:
            for node, iface in ((lp.spec.a, lp.a_if), (lp.spec.b, lp.b_if)):
                per_node.setdefault(node, []).extend(tc_commands(iface.name, lp.spec))
        for node, cmds in per_node.items():
            self.node(node).run(["tc", "-batch", "-"], input="\n".join(cmds) + "\n", check=True)

    def _delay_lines(self, links: list[planmod.LinkPlan]) -> None:
        procs = []
        for lp in links:
            s = lp.spec
            argv = [
                sys.executable,
                "-m",
                "testbed.delayline",
                lp.a_if.name,
                self.run_state.ns(s.b),
                lp.b_if.name,
                f"--delay-ms={s.delay_ms}",
                f"--jitter-ms={s.jitter_ms}",
                f"--loss={s.loss_pct}",
            ]
            procs.append(self.node(s.a).start(argv, name=f"delayline-{s.name}"))
        deadline = time.monotonic() + 15
        for proc in procs:
            while "ready" not in proc.log_text():
                if not proc.alive or time.monotonic() > deadline:
                    raise RuntimeError(f"{proc.name} failed:\n{proc.log_text()[-2000:]}")
                time.sleep(0.01)

    def _nft(self) -> None:
        for router, att in self.attachments.items():
            self.node(router).run(["nft", "-f", "-"], input=att.nft_ruleset(), check=True)

    def _services(self) -> None:
        for spec in self.topo.of_kind("fis"):
            if spec.engine == "redis":
                self._step(f"redis on {spec.name}", partial(self._start_redis, spec.name))
        for c in self.clusters.values():
            if c.fis:
                self._step(f"replicated FIS of {c.site}: {len(c.fis)} Redis + Sentinel",
                           partial(self._start_fis_group, c))  # fmt: skip
        for spec in self.topo.of_kind("dns"):
            self._step(f"knot DNS on {spec.name}", partial(self._start_dns, spec.name))
            break  # one DNS server per testbed

    def _start_redis(self, name: str) -> None:
        """Start (or restart) the FIS node's Redis: ACL users per role, the default user off,
        an append-only file fsynced on every write in the run's state, and on the control
        network a bridge filter that lets only the sites' ports reach the FIS node."""
        node = self.node(name)
        addr = node.control_address or node.address
        if addr is None:
            raise RuntimeError(f"FIS node {name} has no address for Redis")
        rundir = self.run_state.dir / "redis"
        acl = self._redis_acl()
        proc = node.start(
            [
                REDIS_SERVER,
                "--bind", addr,
                "--port", str(REDIS_PORT),
                "--aclfile", str(acl),
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "always",  # an acknowledged FIS write survives a SIGKILL
                "--dir", str(rundir),
                "--protected-mode", "no",  # no default user to protect: it is off
                "--daemonize", "no",
            ],
            name=f"redis-{name}",
            ready=lambda: node.tcp_open(addr, REDIS_PORT),
        )  # fmt: skip
        self.redis_procs[name] = proc
        self.redis_url = f"redis://{addr}:{REDIS_PORT}/0"
        if self.control_ns and node.plan.control and not self._fis_filtered.get(name):
            self._filter_fis(name)

    def _redis_acl(self) -> Path:
        """This run's Redis ACL file (written once, mode 0600): per-role users and passwords,
        shared by every Redis of the run."""
        rundir = self.run_state.dir / "redis"
        rundir.mkdir(mode=0o700, exist_ok=True)
        acl = rundir / "users.acl"
        if not self.redis_passwords:
            roles = REDIS_ROLES + REDIS_INTERNAL_ROLES
            self.redis_passwords = {role: secrets.token_hex(16) for role in roles}
            _write_private(acl, redis_acl(self.redis_passwords))
        return acl

    def _start_fis_group(self, cp: clustermod.ClusterPlan) -> None:
        """A site's replicated FIS: Redis on every FIS machine (the first the primary, the
        others its replicas), then a Sentinel on each; returns once every Sentinel sees the
        primary, its replicas and the other Sentinels."""
        self._redis_acl()
        for m in cp.fis:
            self._start_fis_member(m, primary=None if m is cp.fis[0] else cp.fis[0])
        for m in cp.fis:
            self._start_sentinel(cp, m, cp.fis[0])
        deadline = time.monotonic() + 30
        while not self._group_ready(cp):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replicated FIS of {cp.site} did not form within 30 s")
            time.sleep(0.05)

    def _member_dir(self, m: clustermod.MemberPlan) -> Path:
        d = self.run_state.dir / "redis" / m.name
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return d

    def _start_fis_member(self, m: clustermod.MemberPlan,
                          primary: clustermod.MemberPlan | None) -> None:  # fmt: skip
        d = self._member_dir(m)
        conf = d / "redis.conf"
        if not conf.exists():  # a restart keeps what Sentinel last wrote into it
            text = clustermod.redis_conf(m, str(d), str(self._redis_acl()), primary,
                                         self.redis_passwords["replica"])  # fmt: skip
            _write_private(conf, text)
        node = self.node(m.name)
        node.start([REDIS_SERVER, str(conf)], name="redis",
                   ready=lambda: node.tcp_open(m.address, REDIS_PORT))  # fmt: skip

    def _start_sentinel(self, cp: clustermod.ClusterPlan, m: clustermod.MemberPlan,
                        primary: clustermod.MemberPlan) -> None:  # fmt: skip
        d = self._member_dir(m)
        conf = d / "sentinel.conf"
        if not conf.exists():  # Sentinel keeps its view of the group in it
            text = clustermod.sentinel_conf(
                m,
                str(d),
                primary,
                len(cp.fis) // 2 + 1,
                self.redis_passwords["sentinel"],
                len(cp.fis) - 1,
            )
            _write_private(conf, text)
        node = self.node(m.name)
        node.start([REDIS_SENTINEL, str(conf)], name="sentinel",
                   ready=lambda: node.tcp_open(m.address, clustermod.SENTINEL_PORT))  # fmt: skip

    def _sentinel(self, m: clustermod.MemberPlan, *args: str) -> list[str]:
        """A Sentinel command's reply lines (``redis-cli`` from the FIS machine's namespace);
        [] if it cannot be reached."""
        argv = ["redis-cli", "--raw", "-h", m.address, "-p", str(clustermod.SENTINEL_PORT),
                "SENTINEL", *args]  # fmt: skip
        out = self.node(m.name).run(argv, timeout=5)
        return out.stdout.split("\n") if out.returncode == 0 else []

    def _group_ready(self, cp: clustermod.ClusterPlan) -> bool:
        for m in cp.fis:
            doc = self._sentinel(m, "master", clustermod.FIS_PRIMARY)
            fields = dict(zip(doc[0::2], doc[1::2], strict=False))
            if (fields.get("ip") != cp.fis[0].address
                    or int(fields.get("num-slaves", -1)) < len(cp.fis) - 1
                    or int(fields.get("num-other-sentinels", -1)) < len(cp.fis) - 1):  # fmt: skip
                return False
        return True

    def fis_primary(self, site: str) -> str | None:
        """The FIS machine the Sentinels of ``site`` name as the primary now (None while
        they cannot be reached or disagree)."""
        cp = self.cluster(site)
        seen = set()
        for m in cp.fis:
            if not self._running(m.name):
                continue
            reply = self._sentinel(m, "get-master-addr-by-name", clustermod.FIS_PRIMARY)
            if not reply or not reply[0]:
                return None
            seen.add(reply[0])
        by_addr = {m.address: m.name for m in cp.fis}
        return by_addr.get(seen.pop()) if len(seen) == 1 else None

    def _running(self, name: str) -> bool:
        """Whether a process the testbed started in node ``name`` is running."""
        return any(p.node == name and p.alive for p in self.processes)

    def _filter_fis(self, name: str) -> None:
        """Only site nodes' bridge ports may send IPv4 to the FIS node's port (by port, not
        by address: a PSP that takes a site's address is still stopped)."""
        assert self.control_ns
        ports = {node: port for node, port, _ in self.plan.control_ports}
        sites = [ports[s.name] for s in self.topo.of_kind("site") if s.name in ports]
        allowed = f"iifname != {{ {', '.join(sites)} }} " if sites else ""
        ruleset = (
            f"table bridge {FIS_FILTER_TABLE} {{\n"
            "  chain forward {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            f'    oifname "{ports[name]}" {allowed}meta protocol ip drop\n'
            "  }\n"
            "}\n"
        )
        subprocess.run(
            ["nsenter", f"--net={netns.path(self.control_ns)}", "--", "nft", "-f", "-"],
            input=ruleset.encode(),
            check=True,
            capture_output=True,
            timeout=30,
        )
        self._fis_filtered[name] = True

    def fis_url(self, role: str = "site", site: str | None = None) -> str | None:
        """The FIS Redis URL with ``role``'s credentials (``site`` or ``isp``), if any: for a
        ``site`` with a replicated FIS (``fis_replicas``), its Sentinel URL."""
        if role not in REDIS_ROLES:
            raise KeyError(f"no FIS role {role!r} (roles: {', '.join(REDIS_ROLES)})")
        cp = self.clusters.get(site) if site else None
        if cp is not None and cp.fis and role in self.redis_passwords:
            return clustermod.sentinel_url(cp, role, self.redis_passwords[role])
        if self.redis_url is None:
            return None
        host = self.redis_url.removeprefix("redis://")
        return f"redis://{role}:{self.redis_passwords[role]}@{host}"

    def kill_fis(self, name: str | None = None) -> None:
        """SIGKILL the FIS node's Redis (fault injection); :meth:`start_fis` brings it back
        with its data (append-only file)."""
        name = name or self._fis_node()
        proc = self.redis_procs.pop(name)
        proc.popen.kill()
        proc.popen.wait(10)
        self._forget(proc.pid)

    def start_fis(self, name: str | None = None) -> None:
        """Start the FIS node's Redis again after :meth:`kill_fis` (same address and users)."""
        name = name or self._fis_node()
        if name in self.redis_procs:
            raise RuntimeError(f"the Redis of {name} is running")
        self._start_redis(name)

    def _fis_public(self, site: str) -> str | None:
        """``site``'s FIS URL without credentials (for the state file and ``inspect``)."""
        cp = self.clusters.get(site)
        return clustermod.sentinel_url(cp) if cp is not None and cp.fis else self.redis_url

    def _fis_node(self) -> str:
        names = [s.name for s in self.topo.of_kind("fis") if s.engine == "redis"]
        if not names:
            raise KeyError("this topology runs no Redis FIS")
        return names[0]

    def _start_dns(self, name: str) -> None:
        from testbed.dns import DnsServer, reverse_zone_name  # dnspython: only when needed

        node = self.node(name)
        spec = self.topo.nodes[name]
        addrs = [i.address for i in node.plan.ifaces]
        if node.control_address:
            addrs.append(node.control_address)
        if not addrs:
            raise RuntimeError(f"DNS node {name} has no address")
        self.dns = DnsServer(node, addrs, self.run_state.dir / "dns")
        ns_name = f"ns.{spec.zone}"
        self.dns.zones[spec.zone] = self.discovery_zone(spec.zone, addrs[0])
        self.dns.start()
        for prefix in spec.signed_reverse:
            origin = reverse_zone_name(prefix)
            self.dns.set_signed_zone(origin, self.reverse_zone(prefix, ns_name))

    def discovery_zone(self, zone: str, dns_addr: str) -> str:
        """The topology's zone: an A record per node, and per site A, SRV and TXT records.

        ``<node>.<zone> A``; ``<site>.sites.<zone> A <public ip>``;
        ``_packetcloud._udp.<zone> SRV 10 10 6253 <site>.sites.<zone>``;
        ``<site>.sites.<zone> TXT "v=pcsite1 name=<C> forms=1,2,3 router=<R> compute_nodes=<n>"``
        (the formats of :mod:`pcsock.discovery`).
        """
        from testbed.dns import soa

        lines = [soa(zone, f"ns.{zone}"), f"ns.{zone} 300 IN A {dns_addr}"]
        for name, p in self.plan.nodes.items():
            if p.address:
                lines.append(f"{name.lower()}.{zone} 300 IN A {p.address}")
        for spec in self.topo.of_kind("site"):
            p = self.plan.nodes[spec.name]
            host = f"{spec.name.lower()}.sites.{zone}"
            lines += [
                f"{host} 300 IN A {p.public_ip}",
                f'{host} 300 IN TXT "v=pcsite1 name={spec.name} forms=1,2,3 router={spec.router} '
                f'compute_nodes={spec.compute_nodes}"',
                f"_packetcloud._udp.{zone} 300 IN SRV 10 10 6253 {host}",
            ]
        return "\n".join(lines) + "\n"

    def reverse_zone(self, prefix: ipaddress.IPv4Network, ns_name: str) -> str:
        """Reverse zone of ``prefix`` with a PTR for every testbed address inside it."""
        from testbed.dns import reverse_zone_name, soa

        origin = reverse_zone_name(prefix)
        lines = [soa(origin, ns_name)]
        for name, p in self.plan.nodes.items():
            for iface in p.ifaces:
                if ipaddress.IPv4Address(iface.address) in prefix:
                    ptr = ipaddress.IPv4Address(iface.address).reverse_pointer
                    lines.append(f"{ptr}. 300 IN PTR {name.lower()}.{ns_name.split('.', 1)[1]}")
        return "\n".join(lines) + "\n"

    # --- run time ----------------------------------------------------------------------------
    def divert(self, router: str, prefix: str, remove: bool = False) -> None:
        """Start (or stop) diverting traffic for destination ``prefix`` at ``router`` to its site.

        This is the run-time half of attachment 3; a site daemon triggers it after validating
        the prefix owner's DNSSEC proof (from another process: ``testbed divert``).
        """
        if router not in self.attachments:
            raise KeyError(f"{router!r} has no co-located site")
        self.node(router).run(divert_argv(prefix, remove), check=True)

    def diversions(self, router: str) -> list[str]:
        """The destination prefixes ``router`` currently diverts to its site."""
        out = self.node(router).run(
            ["nft", "-j", "list", "set", "ip", NFT_TABLE, "divert_dst"], check=True
        )
        found = []
        for item in json.loads(out.stdout)["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                if isinstance(elem, dict) and "prefix" in elem:
                    found.append(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
                else:
                    found.append(f"{elem}/32")
        return found

    def register_control(self, site: str, url: str, token: str, psps: list[str]) -> None:
        """Tell ``testbed graph`` / ``testbed top`` where ``site``'s daemon serves its control
        API (``url`` as seen from the site's namespace), with an ISP ``token`` and the PSPs
        whose circuits to draw (written to the run directory, mode 0600)."""
        from testbed.live import register_control

        self.site(site)  # a site of this run
        register_control(self.run_state.dir, site, url, token, psps)

    def _ns_map(self) -> dict[str, str]:
        return {name: node.ns for name, node in self.nodes.items()}

    def cluster(self, site: str) -> clustermod.ClusterPlan:
        """The internal network and compute nodes of a site with ``nodes > 1``."""
        try:
            return self.clusters[site]
        except KeyError:
            raise KeyError(f"site {site!r} has no compute-node namespaces (nodes = 1)") from None

    def fail(self, name: str, *, kill: bool = True) -> None:
        """Fail compute node or FIS machine ``name``: kill its processes (``kill``, SIGKILL:
        a crash) and cut its link. A FIS machine's Sentinels elect a new primary if it was
        the primary."""
        node = self.node(name)
        if node.kind not in CLUSTER_KINDS:
            raise KeyError(f"{name!r} is a {node.kind}, not a compute node or FIS machine")
        if kill:  # remembered for `testbed recover` (state.restart_node)
            mine = [p for p in self.run_state.data["processes"] if p["node"] == name]
            self.run_state.data.setdefault("killed", {}).setdefault(name, []).extend(mine)
            for proc in [p for p in self.processes if p.node == name]:
                proc.popen.kill()
                proc.popen.wait(5)
                self._forget(proc.pid)
        clustermod.set_link(node.ns, False, self._gateway(name))

    def recover(self, name: str) -> None:
        """Restore a failed machine's internal link. A compute node's processes are the
        caller's to restart; a FIS machine's Redis and Sentinel start again (the Redis as
        Sentinel last configured it; an old primary is turned into a replica)."""
        node = self.node(name)
        if node.kind not in CLUSTER_KINDS:
            raise KeyError(f"{name!r} is a {node.kind}, not a compute node or FIS machine")
        clustermod.set_link(node.ns, True, self._gateway(name))
        cp = self._cluster_of(name)
        m = cp.member(name)
        if node.kind == "fis" and m is not None and not self._running(name):
            self.run_state.data.get("killed", {}).pop(name, None)
            self._start_fis_member(m, primary=None)
            self._start_sentinel(cp, m, cp.fis[0])

    def _cluster_of(self, name: str) -> clustermod.ClusterPlan:
        return next(c for c in self.clusters.values() if c.member(name) is not None)

    def _gateway(self, name: str) -> str:
        return self._cluster_of(name).lb_address

    def _forget(self, pid: int) -> None:
        self.processes = [p for p in self.processes if p.pid != pid]
        try:
            self.run_state.drop_process(pid)
        except OSError:
            pass

    def summary(self) -> dict[str, Any]:
        """A JSON-able description of the run (``testbed inspect --json``)."""
        nodes = []
        for name, p in self.plan.nodes.items():
            nodes.append(
                {
                    "name": name,
                    "kind": p.kind,
                    "netns": self.run_state.ns(name),
                    "public_ip": p.public_ip,
                    "interfaces": [
                        {
                            "name": i.name,
                            "address": f"{i.address}/{i.prefixlen}",
                            "link": i.link,
                            "peer": i.peer,
                        }
                        for i in p.ifaces
                    ],
                    "control": f"{p.control.address}/{p.control.prefixlen}" if p.control else None,
                    "routes": len(p.routes),
                }
            )
        return {
            "run": self.run_state.name,
            "topology": self.topo.name,
            "control_netns": self.control_ns,
            "nodes": nodes,
            "links": [
                {
                    "name": lp.spec.name,
                    "a": f"{lp.spec.a}:{lp.a_if.name}",
                    "b": f"{lp.spec.b}:{lp.b_if.name}",
                    "subnet": str(lp.subnet),
                    "shaping": {
                        k: v
                        for k, v in asdict(lp.spec).items()
                        if k in ("delay_ms", "jitter_ms", "loss_pct", "rate_bps") and v
                    },
                }
                for lp in self.plan.links
            ],
            "sites": {
                s.name: {**asdict(self.site(s.name)), "fis_redis": self._fis_public(s.name)}
                for s in self.topo.of_kind("site")
            },  # credentials stay out of the state file (the sites get them from fis_url)
            "clusters": {
                site: {
                    **c.summary(),
                    "netns": {m.name: self.run_state.ns(m.name) for m in c.machines()},
                }
                for site, c in self.clusters.items()
            },
            "dns": self.dns.address if self.dns else None,
            "redis": self.redis_url,
            "processes": [{"node": p.node, "name": p.name, "pid": p.pid} for p in self.processes],
            "attachments": {r: a.snippet() for r, a in self.attachments.items()},
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (it holds passwords)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def redis_acl(passwords: dict[str, str], prefix: str = "pcfis") -> str:
    """The FIS Redis's ACL file: the default user off; ``site`` reads and writes the FIS keys
    and change channel; ``isp`` reads them and writes only the ISP namespace (network
    information) plus the change bookkeeping every write updates. With a replicated FIS,
    ``replica`` may only replicate and ``sentinel`` only run what Sentinel sends a server."""
    # ``info`` and ``wait`` (after ``-@dangerous``, which takes ``info``): a replicated FIS
    # acknowledges a write once every attached replica has it (RedisFIS.replicated)
    base = "+@connection +ping -@dangerous +info +wait"
    site = f"resetkeys ~{prefix}:* resetchannels &{prefix}:changes -@all +@read +@write "
    site += f"+@pubsub +@scripting {base}"
    return (
        # Off: nobody can authenticate as it. It carries the site's permissions only because
        # Redis (7.0 up to the fix of redis/redis#14541) re-checks EXEC blocks of the
        # append-only file (every FIS write is a script, logged as MULTI/EXEC) against the
        # default user while loading, and silently drops them if it may not run them.
        f"user default off {site}\n"
        f"user site on >{passwords['site']} {site}\n"
        f"user isp on >{passwords['isp']} resetkeys %R~{prefix}:* ~{prefix}:kv:isp "
        f"~{prefix}:lpm:isp:* ~{prefix}:version ~{prefix}:log ~{prefix}:epoch resetchannels "
        f"&{prefix}:changes -@all +@read +@write +@pubsub +@scripting {base}\n"
    ) + "".join(f"user {role} on >{passwords[role]} {INTERNAL_ACL[role]}\n"
                for role in REDIS_INTERNAL_ROLES if role in passwords)  # fmt: skip


#: what the replicated FIS's servers may do to one another (Redis's documented minimum)
INTERNAL_ACL = {
    "replica": "resetkeys resetchannels -@all +psync +replconf +ping",
    "sentinel": "resetkeys allchannels -@all +multi +exec +slaveof +replicaof +ping +info +role "
    "+publish +subscribe +config|rewrite +client|setname +client|kill +script|kill",
}
CLUSTER_KINDS = ("compute", "fis")  #: the machines of a multi-node site (testbed/cluster.py)


def emulated(spec: LinkSpec) -> bool:
    """Links with delay, jitter or loss run through a user-space delay line (see delayline)."""
    return bool(spec.delay_ms or spec.jitter_ms or spec.loss_pct)


def tc_commands(dev: str, spec: LinkSpec) -> list[str]:
    """``tc -batch`` lines limiting ``dev``'s egress rate with tbf."""
    cmds = []
    parent = "root"
    if spec.rate_bps:
        burst = max(1600, spec.rate_bps // 8 // 250)  # ~4 ms of traffic, at least one MTU
        latency = 50 + spec.delay_ms + 2 * spec.jitter_ms
        cmds.append(
            f"qdisc add dev {dev} {parent} handle 2: tbf rate {spec.rate_bps}bit "
            f"burst {burst} latency {latency:.0f}ms"
        )
    return cmds


def default_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
