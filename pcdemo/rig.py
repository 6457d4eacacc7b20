"""Site daemons in line on a small testbed: the one harness of the live tests and benchmarks.

A :class:`SiteRig` builds a topology with the testbed's API (:class:`testbed.net.Testbed`;
``pcdemo/topologies/site-line1.toml`` is S -- A -- D, ``site-line2.toml`` is S -- A -- B -- D)
and runs ``pcsite run`` in router nodes' namespaces, in line with the traffic
(:meth:`SiteRig.start_daemon`, ready once its log says "site up"). Work inside a namespace
(sockets, control-API calls) runs in a short thread there (:func:`testbed.netns.call_in`).
Everything (daemons, namespaces, links) is removed on exit, also after a failure or a SIGKILLed
daemon (the testbed's run state records every process it started).

>>> with SiteRig(LINE2, tmp, prefix="pcx", admin_token=..., psp="acme",
...              psp_token=...) as rig:                    # doctest: +SKIP
...     rig.start_daemon("A", render_toml({"site": {...}, "control": {...}}))
...     rig.client("a").status()
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

from testbed import netns
from testbed.net import Node, Process, Testbed

__all__ = [
    "LINE1",
    "LINE2",
    "SiteRig",
    "in_namespace",
    "pin",
    "render_toml",
    "start_cluster_site",
    "start_pcsite",
    "toml_value",
    "wait_until",
]

T = TypeVar("T")
_TOPOLOGIES = Path(__file__).resolve().parent / "topologies"
LINE1 = _TOPOLOGIES / "site-line1.toml"  #: S -- A -- D
LINE2 = _TOPOLOGIES / "site-line2.toml"  #: S -- A -- B -- D
CONTROL_URL = "http://127.0.0.1:8080"  #: where the rig's daemons serve their control API


def pin(cpu: int) -> None:
    """Pin the calling process to one vCPU (if there is more than one)."""
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


def toml_value(v: Any) -> str:
    """``v`` as a TOML value (strings, numbers, booleans, lists of them)."""
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return str(v).lower() if isinstance(v, bool) else str(v)


def render_toml(doc: dict[str, Any]) -> str:
    """``doc`` (tables of values; a dict value inside a table is a sub-table, ``None`` values
    are left out) as TOML text: how the rig's users write a site config."""
    out: list[str] = []

    def table(name: str, body: dict[str, Any]) -> None:
        out.append(f"[{name}]")
        out.extend(f"{k} = {toml_value(v)}" for k, v in body.items()
                   if v is not None and not isinstance(v, dict))  # fmt: skip
        out.append("")
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{name}.{k}", v)

    for name, body in doc.items():
        table(name, body)
    return "\n".join(out)


def start_pcsite(node: Node, config: Path, *, name: str = "pcsite",
                 env: dict[str, str] | None = None, cpus: str | None = None,
                 timeout: float = 30.0) -> Process:  # fmt: skip
    """Start ``pcsite run --config CONFIG`` on testbed ``node``; return once its log says
    "site up" (a daemon that exits or stays silent for ``timeout`` s raises, with its log).
    ``cpus`` (a ``taskset -c`` list) pins it; without it, it may use every vCPU (not the
    caller's pinning)."""
    every = f"0-{(os.cpu_count() or 1) - 1}"
    argv = ["taskset", "-c", cpus or every, sys.executable, "-m", "pcsite_lite.cli", "run",
            "--config", str(config)]  # fmt: skip

    def up() -> bool:  # the process is in the run's list before it is waited for
        proc = next(p for p in reversed(node.tb.processes) if (p.node, p.name) == (node.name, name))
        return "site up" in proc.log_text()

    return node.start(argv, name=name, ready=up, timeout=timeout, env=env)


def start_cluster_site(tb: Testbed, site: str, config: dict[str, Any], tmp: Path, *,
                       secret: str, ready: Callable[[], bool], procs: list[Process],
                       fis: str | None = None, timeout: float = 30.0) -> None:  # fmt: skip
    """Start a multi-machine site (a site node with ``nodes = N > 1``, docs/cluster.md) from
    the config a one-machine site would get (``config``, as :func:`render_toml` takes it):
    ``pcsite run --role lb,controller`` in the site's namespace (the control API where a
    one-machine site has it; ``ready()`` says it answers) and ``--role node`` in each compute
    node's; each started process is appended to ``procs`` (LB first) as it starts. Returns
    once every compute node is in the LB's table (RuntimeError after ``timeout`` s).

    Every machine of the site shares one FIS: ``fis`` (a URL) if given, else the site's
    replicated Redis (its Sentinel URL) when the testbed built one (``fis_replicas``), else a
    SQLite file in ``tmp``. Each machine gets its own state directory in ``tmp``."""
    cp = tb.cluster(site)
    if fis is None:
        fis = tb.site(site).fis_redis if cp.fis else f"sqlite:///{tmp}/fis-{site}.db"
    listen = str(config.get("control", {}).get("listen", ""))
    port = listen.rpartition(":")[2]

    def write(role: str, ip: str) -> Path:
        doc = copy.deepcopy(config)
        state = tmp / f"state-{site}-{role}"
        state.mkdir(parents=True, exist_ok=True)
        doc["site"] = {**doc["site"], "state_dir": str(state), "fis": fis}
        if role != "lb" and port:  # a node's own API (the site's is the controller's)
            doc["control"] = {**doc["control"], "listen": f"{ip}:{port}"}
        doc["cluster"] = {"internal_dev": "int0", "internal_ip": ip,
                          "lb": f"{cp.lb_address}:6254", "controller": f"{cp.lb_address}:6255",
                          "node": role, "secret": secret}  # fmt: skip
        path = tmp / f"{site}-{role}.toml"
        path.write_text(render_toml(doc))
        return path

    run = [sys.executable, "-m", "pcsite_lite.cli", "run", "--config"]
    lb_cfg = write("lb", cp.lb_address)
    procs.append(tb.node(site).start([*run, str(lb_cfg), "--role", "lb,controller"],
                                     name="pcsite-lb", ready=ready, timeout=timeout))  # fmt: skip
    for m in cp.members:
        argv = [*run, str(write(m.name, m.address)), "--role", "node"]
        procs.append(tb.node(m.name).start(argv, name="pcsite-node"))
    status = tmp / f"state-{site}-lb" / "lb-status.json"

    def all_in() -> bool:
        try:
            doc = json.loads(status.read_text())
        except (OSError, ValueError):
            return False
        return sum(bool(n.get("in_table")) for n in doc.get("nodes", [])) == len(cp.members)

    if not wait_until(all_in, timeout):
        raise RuntimeError(f"{site}: compute nodes not all in the LB table within {timeout:.0f} s")


def in_namespace(ns: str, target: Any) -> Any:
    """A proxy whose method calls run ``target``'s methods inside namespace ``ns``."""

    class InNs:
        def __getattr__(self, name: str) -> Any:
            fn = getattr(target, name)
            return lambda *a, **k: netns.call_in(ns, lambda: fn(*a, **k), timeout=None)

    return InNs()


class SiteRig:
    """A testbed of ``topology`` with ``pcsite run`` daemons on some of its router nodes.

    ``ns`` maps each node (upper case, as in the topology, and lower case) to its namespace;
    ``procs``/``logs`` hold each running daemon's process and log. ``setup`` runs once the
    testbed is up (extra addresses and routes: :meth:`ip`).
    """

    def __init__(self, topology: str | Path, tmp: Path, *, prefix: str, admin_token: str,
                 psp: str, psp_token: str, psp_key: Any = None,
                 setup: Callable[[SiteRig], None] | None = None) -> None:  # fmt: skip
        self.tmp = tmp
        self.admin_token, self.psp, self.psp_token = admin_token, psp, psp_token
        self.psp_key = psp_key  #: the PSP's Ed25519 private key (signs uploaded services)
        self.tb = Testbed(topology, prefix=prefix)
        self._setup = setup
        self.ns: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self._processes: dict[str, Process] = {}

    def __enter__(self) -> Self:
        with contextlib.ExitStack() as undo:
            undo.callback(self.close)  # a half-built rig is removed again
            self.tb.up()
            for name, node in self.tb.nodes.items():
                self.ns[name] = self.ns[name.lower()] = node.ns
            if self._setup:
                self._setup(self)
            undo.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def id(self) -> str:
        """This run's name (``<prefix><run id>``): unique per run, used in site names."""
        return self.tb.run

    # --- the network
    def address(self, node: str, peer: str | None = None) -> str:
        """``node``'s address (on the link to ``peer``, else its first)."""
        p = self.tb.node(node.upper()).plan
        iface = p.iface_to(peer.upper()) if peer else p.ifaces[0]
        assert iface is not None, f"{node} has no link to {peer}"
        return iface.address

    def iface(self, node: str, peer: str) -> str:
        """The name of ``node``'s interface towards ``peer``."""
        iface = self.tb.node(node.upper()).plan.iface_to(peer.upper())
        assert iface is not None, f"{node} has no link to {peer}"
        return iface.name

    def ip(self, node: str, *args: str) -> None:
        """Run ``ip ARGS`` in ``node``'s namespace; raise on failure."""
        self.tb.node(node.upper()).run(["ip", *args], check=True)

    def call(self, node: str, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run ``fn`` in a thread inside ``node``'s namespace; return its result (or raise)."""
        return netns.call_in(self.ns[node], fn, timeout=timeout)

    def raw_sender(self, node: str = "s") -> socket.socket:
        """A raw IPv4 socket (``IP_HDRINCL``) in ``node``'s namespace."""
        return self.call(
            node, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        )

    def udp_receiver(self, port: int, addr: str = "0.0.0.0", *, node: str = "d",
                     rcvbuf: int | None = None) -> socket.socket:  # fmt: skip
        """A UDP socket bound to ``addr:port`` in ``node``'s namespace (0.2 s timeout)."""

        def mk() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.bind((addr, port))
            s.settimeout(0.2)
            return s

        return self.call(node, mk)

    # --- the daemons
    def start_daemon(self, node: str, config: str | Path, *, env: dict[str, str] | None = None,
                   cpus: str | None = None, timeout: float = 30.0) -> Path:  # fmt: skip
        """Run ``pcsite run`` in ``node``'s namespace with ``config`` (TOML text, or a file);
        return once it logged "site up". ``cpus`` (a ``taskset -c`` list) pins the daemon;
        without it the daemon may use every vCPU (not the caller's pinning). Returns the
        config file's path."""
        key = node.lower()
        if key in self.procs:  # one that was killed from outside is forgotten first
            if self.procs[key].poll() is None:
                raise RuntimeError(f"a daemon already runs on {node}")
            self.stop_daemon(key)
        if isinstance(config, Path):
            path = config
        else:
            path = self.tmp / f"site-{key}.toml"
            path.write_text(config)
        proc = start_pcsite(self.tb.node(node.upper()), path, name=f"pcsite-{key}", env=env,
                            cpus=cpus, timeout=timeout)  # fmt: skip
        self._processes[key] = proc
        self.procs[key] = proc.popen
        self.logs[key] = proc.log
        return path

    def log_has(self, node: str, text: str) -> bool:
        """Whether ``node``'s daemon log holds ``text`` (wait on it with a timeout)."""
        return text in self.logs[node.lower()].read_text(errors="replace")

    def worker_pids(self, node: str = "a") -> list[int]:
        """The PIDs of the workers ``node``'s daemon reported ready (from its log)."""
        text = self.logs[node.lower()].read_text(errors="replace")
        return [int(p) for p in re.findall(r"ready \(pid (\d+)\)", text)]

    def stop_daemon(self, node: str = "a", sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Send ``sig`` to ``node``'s daemon, wait for it (SIGKILL after ``timeout`` s) and for
        its workers to leave; its exit status."""
        key = node.lower()
        pids = self.worker_pids(key) if key in self.logs else []
        proc = self._processes.pop(key)
        p = self.procs.pop(key)
        if p.poll() is None:
            p.send_signal(sig)
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        proc.stop()  # forget it in the run state
        # workers leave once their control socket closes
        wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 10.0)
        return rc

    def client(self, node: str = "a", *, admin: bool = False, token: str | None = None,
               psp: str | None = "") -> Any:  # fmt: skip
        """A control-API client of ``node``'s daemon whose calls run inside its namespace: as
        the rig's PSP, as the ISP (``admin``), or with ``token`` as ``psp`` (None: the ISP)."""
        from pcsite_lite.control.client import ControlClient

        if admin:
            token, psp = self.admin_token, None
        c = ControlClient(CONTROL_URL, token=token or self.psp_token,
                          psp=self.psp if psp == "" else psp)  # fmt: skip
        return in_namespace(self.ns[node], c)

    def psp_public_hex(self) -> str:
        """The PSP's public key, hex (a site config's ``signing_key``)."""
        from pcsite_lite.repository import public_key_bytes

        return public_key_bytes(self.psp_key).hex()

    def deploy_source_routing(self, node: str = "a", name: str = "srcroute") -> None:
        """Upload (signed with the PSP's key) and activate the shipped source-routing service
        as the PSP's ``name``, version "1", on ``node``'s daemon."""
        from pcsite_lite.repository import sign_service
        from pcsite_lite.services import source

        code = source("source_routing").encode()
        c = self.client(node)
        c.upload_service(name, "1", code, sign_service(self.psp_key, self.psp, name, "1", code))
        c.activate_service(name, "1")

    def close(self) -> None:
        for key in list(self.procs):
            try:
                self.stop_daemon(key)
            except Exception:
                pass
        self.tb.down()


def wait_until(pred: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``pred`` every ``interval`` seconds until it is true or ``timeout`` seconds have
    passed; whether it became true. Tests, demos and the rig wait for the condition they need,
    with a generous timeout, instead of sleeping a fixed time and hoping a loaded machine kept
    up."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= end:
            return bool(pred())
        time.sleep(interval)
    return True
