"""A multi-node site on a testbed, for the netns tests and ``benchmarks/cluster.py``.

``h1 -- r1 -- h2`` with site ``s1`` beside ``r1``: the LB and the controller run in
``s1``'s namespace (``pcsite run --role lb,controller``), compute node ``s1_n<i>`` runs
``pcsite run --role node``. :class:`Load` sends form-1 packets on many circuits from ``h1``
and records what ``h2`` receives, per circuit and sequence number.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pcsock import wire
from pcsock.control import ControlClient
from testbed.net import Testbed
from testbed.netns import call_in
from testbed.topology import parse

ADMIN = "isp-admin-token-0123456789"
PSP = "acme-token-0123456789abcdef"
SECRET = "cluster-secret-0123456789"
KEY = bytes(range(16))
PORT = 9999
_SEQ = struct.Struct("!HId")

TOPOLOGY = """
name = "cluster{n}"
[[node]]
name = "h1"
kind = "host"
[[node]]
name = "h2"
kind = "host"
[[node]]
name = "r1"
kind = "router"
[[node]]
name = "s1"
kind = "site"
router = "r1"
control = false
nodes = {n}
fis_replicas = {m}
[[link]]
a = "h1"
b = "r1"
[[link]]
a = "r1"
b = "h2"
[[link]]
a = "r1"
b = "s1"
"""


def _config(tmp: Path, public_ip: str, lb: str, me: str, node: str, workers: int,
            fis: str) -> Path:  # fmt: skip
    state = tmp / node
    state.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{node}.toml"
    path.write_text(f"""
[site]
name = "s1"
public_ip = "{public_ip}"
public_dev = "lo"
workers = {workers}
state_dir = "{state}"
fis = "{fis}"

[dataplane]
tun_prefix = "pccw"
nft_table = "pccl"
restart_delay = 0.3

[services]
isolation = "inprocess"

[control]
listen = "{me}:8080"
admin_token = "{ADMIN}"

[control.psps.acme]
token = "{PSP}"

[cluster]
internal_dev = "int0"
internal_ip = "{me}"
lb = "{lb}:6254"
controller = "{lb}:6255"
node = "{node}"
secret = "{SECRET}"
heartbeat = 0.05
ttl = 0.3
""")
    return path


class ClusterSite:
    """``with ClusterSite(tmp, nodes=3) as cs:`` -- a built testbed with the site running."""

    def __init__(self, tmp: Path, nodes: int = 3, workers: int = 1, prefix: str = "pcq",
                 start: int | None = None, split: bool = False,
                 fis_replicas: int = 0, cpus: set[int] | None = None) -> None:  # fmt: skip
        """``start``: run only the first ``start`` compute nodes (default: all); ``split``:
        the LB and the controller as two processes (``--role lb``, ``--role controller``);
        ``fis_replicas``: the site's FIS replicated on that many machines (the testbed builds
        them; every machine of the site gets its Sentinel URL), else one SQLite file;
        ``cpus``: run every process of the site (LB, controller, nodes) on these vCPUs."""
        self.cpus = cpus
        self.split = split
        self.tmp = tmp
        self.n = nodes
        self.start = nodes if start is None else start
        self.workers = workers
        self.tb = Testbed(parse(TOPOLOGY.format(n=nodes, m=fis_replicas)), prefix=prefix,
                          services=fis_replicas > 0)  # fmt: skip
        self.procs: dict[str, Any] = {}

    def __enter__(self) -> ClusterSite:
        self.tb.up()
        try:
            self._start()
        except BaseException:
            self.tb.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.tb.down()

    @property
    def public_ip(self) -> str:
        return self.tb.site("s1").public_ip

    def node_names(self) -> list[str]:
        return [m.name for m in self.tb.cluster("s1").members]

    def running(self) -> list[str]:
        """The compute nodes started with the site."""
        return self.node_names()[: self.start]

    @property
    def fis(self) -> str:
        """The FIS URL every machine of the site is configured with."""
        return self.tb.site("s1").fis_redis or f"sqlite:///{self.tmp / 'fis.db'}"

    def _config(self, me: str, node: str, workers: int) -> Path:
        lb = self.tb.cluster("s1").lb_address
        return _config(self.tmp, self.public_ip, lb, me, node, workers, self.fis)

    def _cmd(self, cfg: Path, role: str) -> list[str]:
        pin = ["taskset", "-c", ",".join(map(str, sorted(self.cpus)))] if self.cpus else []
        return [*pin, sys.executable, "-m", "pcsite_lite.cli", "run", "--config", str(cfg),
                "--role", role]  # fmt: skip

    def _start(self) -> None:
        cp = self.tb.cluster("s1")
        cfg = self._config(cp.lb_address, "lb", 1)
        self.lb_state = self.tmp / "lb"
        if self.split:  # the controller has its own state directory (and lock)
            ctl = self._config(cp.lb_address, "ctl", 1)
            self.procs["ctl"] = self.tb.node("s1").start(
                self._cmd(ctl, "controller"), name="pcsite-ctl",
                ready=lambda: self.tb.node("s1").tcp_open(cp.lb_address, 8080), timeout=20,
            )  # fmt: skip
        self.procs["s1"] = self.tb.node("s1").start(
            self._cmd(cfg, "lb" if self.split else "lb,controller"), name="pcsite-lb",
            ready=lambda: (self.lb_state / "lb-status.json").exists(), timeout=20,
        )  # fmt: skip
        for m in cp.members[: self.start]:
            self.start_node(m.name)
        self.wait_table(set(self.node_names()[: self.start]))

    def start_node(self, name: str) -> None:
        cp = self.tb.cluster("s1")
        m = next(x for x in cp.members if x.name == name)
        cfg = self._config(m.address, name, self.workers)
        self.procs[name] = self.tb.node(name).start(self._cmd(cfg, "node"), name="pcsite-node")

    def lb_status(self) -> dict[str, Any]:
        try:
            return json.loads((self.lb_state / "lb-status.json").read_text())
        except (OSError, ValueError):
            return {}

    def in_table(self) -> set[str]:
        return {n["node"] for n in self.lb_status().get("nodes", []) if n["in_table"]}

    def wait_table(self, want: set[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.in_table() != want:
            if time.monotonic() > deadline:
                logs = {n: p.log_text()[-1500:] for n, p in self.procs.items()}
                raise AssertionError(f"LB table {self.in_table()} != {want}: {logs}")
            time.sleep(0.05)

    def client(self) -> Any:
        url = f"http://{self.tb.cluster('s1').lb_address}:8080"
        c = ControlClient(url, token=PSP, psp="acme")
        ns = self.tb.node("s1").ns

        class InNs:
            def __getattr__(self, name: str) -> Any:
                fn = getattr(c, name)
                return lambda *a, **k: call_in(ns, lambda: fn(*a, **k), timeout=None)

        return InNs()

    def circuits(self, k: int) -> list[int]:
        """``k`` one-hop circuits s1 -> h2 (the shipped no-op: deliver, shim stripped)."""
        c = self.client()
        h2 = self.tb.node("h2").address
        labels = []
        for _ in range(k):
            label = c.allocate_circuit("relay", lifetime=600)["label"]
            c.install_hop(label, in_key=KEY, deliver=h2, strip=True)
            labels.append(label)
        return labels

    def tun_rx(self, name: str) -> int:
        """Packets the kernel handed to compute node ``name``'s workers."""
        total = 0
        for i in range(self.workers):
            out = subprocess.run(["ip", "-n", self.tb.node(name).ns, "-j", "-s", "link", "show",
                                  f"pccw{i}"], capture_output=True, text=True)  # fmt: skip
            if out.returncode == 0:
                total += json.loads(out.stdout)[0]["stats64"]["tx"]["packets"]
        return total

    def journaled(self, name: str) -> int:
        """The last usage batch compute node ``name`` journaled (0: none yet), read-only (the
        node may hold the journal's write lock, even stopped)."""
        path = self.tmp / name / "usage-journal.db"
        if not path.exists():
            return 0
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            row = db.execute("SELECT v FROM meta WHERE k = 'seq'").fetchone()
        except sqlite3.OperationalError:  # not created yet
            return 0
        finally:
            db.close()
        return int(row[0]) if row else 0


class Load:
    """Form-1 traffic on ``labels`` at ``rate`` rounds per second, h1 -> s1 -> h2."""

    def __init__(self, cs: ClusterSite, labels: list[int], rate: float = 100.0,
                 cpu: int | None = None) -> None:  # fmt: skip
        """``cpu``: run the sending and receiving threads on this vCPU."""
        self.cs, self.labels, self.rate, self.cpu = cs, labels, rate, cpu
        # written by the sending and receiving threads under the lock; readers get copies
        # (:attr:`sent`, :attr:`got`): iterating a dict another thread grows raises
        self._sent: dict[tuple[int, int], float] = {}
        self._got: dict[tuple[int, int], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_rx = threading.Event()
        h1, h2 = cs.tb.node("h1"), cs.tb.node("h2")
        self.src = h1.address
        self.tx = call_in(h1.ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                                       socket.IPPROTO_RAW))  # fmt: skip

        def mk() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            s.bind(("0.0.0.0", PORT))
            s.settimeout(0.1)
            return s

        self.rx = call_in(h2.ns, mk)
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._recv, daemon=True)]  # fmt: skip

    @property
    def sent(self) -> dict[tuple[int, int], float]:
        """(circuit index, sequence) -> when it was sent (a copy)."""
        with self._lock:
            return dict(self._sent)

    @property
    def got(self) -> dict[tuple[int, int], float]:
        """(circuit index, sequence) -> when it arrived (a copy)."""
        with self._lock:
            return dict(self._got)

    def probe(self, label: int, n: int = 3) -> None:
        for _ in range(n):
            self._one(0xFFFF, label, 0)

    def _one(self, i: int, label: int, seq: int) -> float:
        now = time.monotonic()
        payload = struct.pack("!HHHH", 5555, PORT, 8 + _SEQ.size, 0) + _SEQ.pack(i, seq, now)
        pkt = wire.build_circuit_packet(src=self.src, dst=self.cs.public_ip, label=label,
                                        key=KEY, payload=payload)  # fmt: skip
        try:
            self.tx.sendto(bytes(pkt), (self.cs.public_ip, 0))
        except OSError:
            pass
        return now

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, drain: float = 0.5) -> None:
        self._stop.set()
        time.sleep(drain)
        self._stop_rx.set()
        for t in self.threads:
            t.join(5)
        self.close()

    def close(self) -> None:
        """Close the sockets (a Load used only to :meth:`probe` is never started)."""
        self.tx.close()
        self.rx.close()

    def _pin(self) -> None:
        if self.cpu is not None:
            os.sched_setaffinity(0, {self.cpu})  # this thread only

    def _send(self) -> None:
        self._pin()
        seq = 0
        period = 1 / self.rate
        nxt = time.monotonic()
        while not self._stop.is_set():
            for i, label in enumerate(self.labels):
                at = self._one(i, label, seq)
                with self._lock:
                    self._sent[(i, seq)] = at
            seq += 1
            nxt += period
            time.sleep(max(0.0, nxt - time.monotonic()))

    def _recv(self) -> None:
        self._pin()
        while not self._stop_rx.is_set():
            try:
                data = self.rx.recv(2048)
            except (TimeoutError, OSError):
                continue
            if len(data) >= _SEQ.size:
                i, seq, _ = _SEQ.unpack_from(data)
                if i != 0xFFFF:
                    at = time.monotonic()
                    with self._lock:
                        self._got[(i, seq)] = at

    def lost(self, circuits: set[int], t0: float, t1: float) -> int:
        """Packets on ``circuits`` sent in [t0, t1] that never arrived."""
        sent, got = self.sent, self.got
        return sum(1 for (i, s), t in sent.items()
                   if i in circuits and t0 <= t <= t1 and (i, s) not in got)  # fmt: skip

    def delivered(self, circuits: set[int], after: float) -> int:
        """The fewest packets any circuit in ``circuits`` delivered of those sent after
        ``after`` (what a test waits on instead of letting traffic run a while)."""
        got = self.got
        counts = dict.fromkeys(circuits, 0)
        for k, t in self.sent.items():
            if k[0] in counts and t > after and k in got:
                counts[k[0]] += 1
        return min(counts.values(), default=0)

    def delivered_until(self, circuits: set[int]) -> float:
        """The latest send time by which every circuit in ``circuits`` delivered a packet: one
        sent before it that never arrived was lost, not still in flight (-inf if a circuit
        delivered nothing)."""
        last = dict.fromkeys(circuits, float("-inf"))
        sent = self.sent
        for k in self.got:
            if k[0] in last:
                last[k[0]] = max(last[k[0]], sent.get(k, float("-inf")))
        return min(last.values(), default=float("-inf"))

    def resumed(self, circuits: set[int], after: float) -> float:
        """Seconds from ``after`` until every circuit in ``circuits`` delivered a packet sent
        after it (inf if one never did)."""
        worst = 0.0
        sent, got = self.sent, self.got
        for i in circuits:
            firsts = [got[k] for k, t in sent.items() if k[0] == i and t > after and k in got]
            if not firsts:
                return float("inf")
            worst = max(worst, min(firsts) - after)
        return worst


def owners(cs: ClusterSite, load: Load, labels: list[int]) -> dict[int, str]:
    """Circuit index -> the compute node the LB sends it to (probed one circuit at a time,
    watching which node's TUN devices count the packets). Call it while no load runs
    (before ``with load:``): a circuit whose packets show up on more than one node is left
    out."""
    out = {}
    names = cs.node_names()
    for i, label in enumerate(labels):
        before = {n: cs.tun_rx(n) for n in names}
        load.probe(label)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            grew = [n for n in names if cs.tun_rx(n) > before[n]]
            if len(grew) == 1 and cs.tun_rx(grew[0]) >= before[grew[0]] + 3:
                out[i] = grew[0]
                break
            time.sleep(0.01)
    return out
