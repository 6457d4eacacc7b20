"""The site daemon's main process: kernel setup, worker processes, control API, signals.

Lifecycle::

    start   take the state directory's lock, remove what a killed previous instance left in
            the kernel, restore the site state from the durable store (store.py), open one
            TUN device per worker, claim the public IP, load the nft split and policy routes
            (kernel.py), spawn the workers, serve the control API
    SIGHUP  reload: re-read the config; credentials, trust anchor and limits change in place,
            a changed worker count or address is refused with a message (restart for that)
    SIGTERM stop: tell workers to stop, wait, remove every kernel object, close TUN devices
    crash   a worker's exit is seen at once (pidfd); its buckets move to the survivors in one
            nft transaction, and it is restarted after ``restart_delay`` and given its share
            back once it acknowledged the full state snapshot

Workers converge by snapshot + change stream: a starting worker says hello, is streamed the
master state (``SiteState.iter_snapshot_ops``) and then every change, in frames of bounded
size (``channel.py``) through a bounded per-worker outbox; the snapshot ends with a
``synced`` op. Only when the worker acknowledges it does it read its TUN queue and get its
buckets. A worker that falls :data:`MAX_OUTBOX` bytes behind is restarted (and resyncs).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from pcsite_lite.cluster.engine import uses_engine
from pcsite_lite.cluster.feed import merge_usage, valid_report
from pcsite_lite.confine import sweep_cgroups
from pcsite_lite.control.app import ControlApp, Request, Response
from pcsite_lite.control.auth import Credentials
from pcsite_lite.lb import BucketTable
from pcsite_lite.metrics import WorkerStats
from pcsock.httpserver import serve

from . import channel
from .config import ConfigError, SiteConfig, load
from .kernel import Kernel, KernelError
from .kstats import KernelDrops, Sample, fold, site_drops
from .store import DB_NAME, SiteStore, StateLock, StoreError
from .usage import UsageRecorder, drain_reports, export_since, totals

__all__ = ["StartupError", "Supervisor", "run_daemon"]


#: the supervisor's GIL switch interval (s): how long a thread running Python may keep the
#: control API's event loop waiting
SWITCH_INTERVAL: Final = 0.0005
#: nice value of the threads that answer uploads and activations off the event loop: a
#: control-API call that wakes while one of them computes on its CPU preempts it
OFFLOAD_NICE: Final = 19
#: compute nodes a controller keeps usage and acknowledgements of
MAX_NODES: Final = 256
#: the roles of a one-machine site (``pcsite run`` without ``--role``)
ALL_IN_ONE: Final = frozenset({"node", "controller"})
#: seconds without a message from a worker (it sends stats every 0.25 s) before the
#: supervisor's watchdog kills it
WATCHDOG_S: Final = 5.0
#: bytes of state changes queued for one worker before it is restarted instead (it resyncs)
MAX_OUTBOX: Final = 64 << 20
#: longest pause between checks of expiring circuits and ownership proofs (seconds)
TICK: Final = 1.0
#: ownership proofs are validated again this often (and on SIGHUP), besides at expiry
PROOF_RECHECK: Final = 300.0
#: the master forgets expired circuits this often (workers expire their own on their clock)
CIRCUIT_EXPIRY_SCAN: Final = 5.0


class StartupError(Exception):
    """The site could not start (its kernel state has been removed again)."""


@dataclass
class WorkerSlot:
    index: int
    tun: Any  # pytun.TunTapDevice
    proc: subprocess.Popen[bytes] | None = None
    sock: socket.socket | None = None
    pidfd: int = -1
    ready: bool = False
    stats: WorkerStats = field(default_factory=WorkerStats)
    base: WorkerStats = field(default_factory=WorkerStats)  #: counts of earlier incarnations
    restarts: int = 0
    usage: dict[str, Any] = field(default_factory=dict)
    usage_base: dict[str, dict[str, int]] = field(default_factory=dict)  #: earlier incarnations
    acked: int = 0  #: highest state op sequence number this worker applied
    last_seen: float = 0.0  #: trio clock of the worker's last message (its heartbeat)
    watchdog_kills: int = 0
    hello: bool = False  #: this incarnation asked for its state
    marker: int | None = None  #: seq of its snapshot's ``synced`` op, once queued
    outbox: deque[bytes] = field(default_factory=deque)  #: frames not yet sent
    out_bytes: int = 0
    wake: Any = None  #: trio.Event the sender waits on while the outbox is empty
    synced_at: float = 0.0


def _open_tun(name: str) -> Any:
    import pytun

    return pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI)


class Supervisor:
    """Owns the kernel state, the workers and the control API of one site."""

    def __init__(self, cfg: SiteConfig, *, log: Any = None,
                 roles: frozenset[str] = ALL_IN_ONE) -> None:  # fmt: skip
        self.cfg = cfg
        #: "node": TUN devices, kernel split, workers; "controller": the control API and the
        #: master state (streamed to remote nodes when [cluster] is set); both: one machine
        self.roles = roles
        self.is_node = "node" in roles
        self.is_controller = "controller" in roles
        self.feed: Any = None  #: cluster.feed.FeedServer (controller with [cluster])
        self.feed_client: Any = None  #: cluster.feed.FeedClient (node without controller)
        self.heartbeater: Any = None  #: cluster.node.Heartbeater (node with [cluster])
        #: cluster.engine.ControllerSide / NodeSide: the roles meet on a Redis FIS engine
        self.engine_role: Any = None
        self.deploys_refused: Counter[str] = Counter()  #: deploy ops a node refused, by reason
        self.journal: Any = None  #: cluster.usage.NodeJournal (a compute node)
        self.usage_collector: Any = None  #: cluster.usage.Collector (a controller with nodes)
        #: node name -> {"inc": its process's id, "usage": cumulative, "base": earlier ones}
        self.remote_usage: dict[str, dict[str, Any]] = {}
        #: node name -> (highest op seq it acknowledged, time.monotonic() it was last heard)
        self.remote_acked: dict[str, tuple[int, float]] = {}
        self.watchdog_s = WATCHDOG_S
        self.kernel = Kernel(cfg)
        self.slots: list[WorkerSlot] = []
        self.table = BucketTable(range(cfg.workers), cfg.dataplane.buckets)
        self.events: list[tuple[float, str]] = []  #: (monotonic time, what) for tests/status
        self._log = log or (lambda msg: print(f"pcsite[{cfg.name}]: {msg}", file=sys.stderr))
        self._stopping = False
        self._seq = 0  #: sequence number of the last broadcast state op
        #: set (and replaced) whenever a worker acks state ops or stops being ready: what
        #: settle() waits on instead of polling
        self._acks = trio.Event()
        self.kstats: KernelDrops | None = None  #: the kernel's drop counters (after start)
        self.recorder: UsageRecorder | None = None  #: the usage ledger writer (after start)
        self._ksample: Sample | None = None
        self._lb_lock = threading.Lock()  #: serialises bucket-map updates (see _rebalance)
        from pcsite_lite.control.site_backend import SiteBackend

        self.store = SiteStore(os.path.join(cfg.state_dir, DB_NAME))
        self.backend = SiteBackend(cfg, broadcast=self.broadcast, status=self.status_json,
                                   worker_stats=self.worker_stats,
                                   worker_usage=self.worker_usage, kernel=self.kernel,
                                   site_drops=self.site_drops,
                                   usage_export=self.usage_export,
                                   store=self.store, log_line=self.log)  # fmt: skip
        if not self.is_node:
            self.backend._kernel = None  # no nft table here: the nodes divert form 3
        self._snapshot = self.backend.iter_snapshot_ops  #: what a starting worker is streamed
        self.app = self._make_app(cfg)

    def log(self, msg: str) -> None:
        self.events.append((time.monotonic(), msg))
        self._log(msg)

    def _make_app(self, cfg: SiteConfig) -> ControlApp:
        creds = Credentials(
            admin_token=cfg.control.admin_token,
            psp_tokens={p.name: p.token for p in cfg.control.psps},
        )
        return ControlApp(
            self.backend, creds, trust_anchor=cfg.control.trust_anchor, limits=cfg.limits,
        )  # fmt: skip

    # --- buckets
    def marks(self) -> list[int]:
        return [self.kernel.mark(int(w)) for w in self.table.assignment]  # type: ignore[call-overload]

    def _rebalance(self) -> None:
        # Rebalances run in worker threads (trio.to_thread), one per readiness or exit event,
        # so two can overlap when workers come up together. Without the lock, one that read
        # the live set early (only worker 0 ready) could write its map after one that read it
        # late (workers 0 and 1): the kernel then kept sending every packet to worker 0 and
        # worker 1 received nothing. Serialised, the last writer always read the latest set.
        with self._lb_lock:
            live = [s.index for s in self.slots if s.ready]
            if not live:
                self.log("no live worker: keeping the last bucket map")
                return
            table = self.table.with_workers(live)
            if table.assignment != self.table.assignment:
                self.table = table
                self.kernel.set_buckets(self.marks())
                self.log(f"buckets now on workers {live}")

    # --- workers
    def _spawn(self, slot: WorkerSlot) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        tun_fd = slot.tun.fileno()
        cmd = [sys.executable, "-m", "pcsite_lite.daemon.worker", "--config", self.cfg.source,
               "--index", str(slot.index), "--tun-fd", str(tun_fd),
               "--ctl-fd", str(child.fileno())]  # fmt: skip
        slot.proc = subprocess.Popen(cmd, pass_fds=(tun_fd, child.fileno()))
        child.close()
        parent.setblocking(False)
        slot.sock = parent
        slot.pidfd = os.pidfd_open(slot.proc.pid)
        slot.ready = False
        slot.hello = False
        slot.marker = None
        slot.acked = 0
        slot.outbox.clear()
        slot.out_bytes = 0

    def _enqueue(self, slot: WorkerSlot, doc: dict[str, Any]) -> None:
        frames = channel.frames(doc)
        slot.outbox.extend(frames)
        slot.out_bytes += sum(len(f) for f in frames)
        if slot.wake is not None:
            slot.wake.set()
        if slot.out_bytes > MAX_OUTBOX and slot.proc is not None:
            self.log(f"worker {slot.index} is {slot.out_bytes} bytes of state behind: restarting")
            slot.outbox.clear()
            slot.out_bytes = 0
            slot.proc.kill()

    def broadcast(self, op: dict[str, Any]) -> None:
        """Queue a state change for every worker that has asked for its state (each applies
        it to its replica and acks); the others receive it in their snapshot."""
        self._seq += 1
        doc = {**op, "seq": self._seq}
        if self.feed is not None:
            self.feed.publish(doc)
        for s in self.slots:
            if s.sock is not None and s.hello:
                self._enqueue(s, doc)

    async def _send_frame(self, sock: socket.socket, frame: bytes) -> None:
        while True:
            try:
                sock.send(frame)
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)

    async def _sender(self, slot: WorkerSlot, sock: socket.socket) -> None:
        """Stream the snapshot once the worker said hello, then its outbox, forever."""
        while not slot.hello:
            slot.wake = trio.Event()
            await slot.wake.wait()
        t0 = time.monotonic()
        n = 0
        for op in self._snapshot():
            for frame in channel.frames(op):
                await self._send_frame(sock, frame)
            n += 1
            if n % 256 == 0:
                await trio.sleep(0)  # let the control API run during a long snapshot
        # after every change queued meanwhile: its ack means the replica is complete
        slot.marker = self._seq
        self._enqueue(slot, {"op": "synced", "seq": self._seq, "ops": n})
        self.log(f"worker {slot.index}: snapshot of {n} ops streamed in "
                 f"{(time.monotonic() - t0) * 1000:.0f} ms")  # fmt: skip
        while True:
            while slot.outbox:
                frame = slot.outbox.popleft()
                slot.out_bytes -= len(frame)
                await self._send_frame(sock, frame)
            slot.wake = trio.Event()
            await slot.wake.wait()

    async def _guarded(self, slot: WorkerSlot, what: str, fn: Any, *args: Any) -> None:
        """Run one of a worker's tasks; an error ends that worker (it restarts and resyncs),
        never the daemon."""
        try:
            await fn(slot, *args)
        except OSError:
            pass  # the worker went away: its pidfd reports it
        except Exception as exc:
            self.log(f"worker {slot.index}: {what} failed ({type(exc).__name__}: {exc}): "
                     "restarting it")  # fmt: skip
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.kill()

    def worker_stats(self) -> dict[int, WorkerStats]:
        out: dict[int, WorkerStats] = {}
        for s in self.slots:
            st = WorkerStats(
                rx_packets=s.base.rx_packets + s.stats.rx_packets,
                rx_bytes=s.base.rx_bytes + s.stats.rx_bytes,
                tx_packets=s.base.tx_packets + s.stats.tx_packets,
                tx_bytes=s.base.tx_bytes + s.stats.tx_bytes,
                tx_errors=s.base.tx_errors + s.stats.tx_errors,
                native_packets=s.base.native_packets + s.stats.native_packets,
                drops={
                    k: s.base.drops.get(k, 0) + s.stats.drops.get(k, 0)
                    for k in {*s.base.drops, *s.stats.drops}
                },
                alive=s.ready,
                restarts=s.restarts,
            )
            out[s.index] = st
        if self.kstats is not None:  # drops only the kernel saw (TUN queues, NICs, sockets)
            self._ksample = self.kstats.sample()
            out = {i: fold(st, self._ksample.workers.get(i, {})) for i, st in out.items()}
        return out

    def usage_export(self, since: float) -> str:
        """The usage ledger's records from ``since`` on (``GET /v1/isp/usage/{since}``)."""
        return export_since(self.cfg.metering.ledger, since)

    def site_drops(self) -> list[tuple[str, str, int]]:
        """Site-wide kernel drops ``(dev, reason, packets)`` as of the last worker_stats()."""
        return site_drops(self._ksample) if self._ksample is not None else []

    def worker_usage(self, *, local: bool = False) -> list[dict[str, Any]]:
        """Per worker: ``"psp/service" -> counters``, monotonic across worker restarts; then
        per compute node (their live reports) unless ``local``."""
        out = []
        for s in self.slots:
            merged: dict[str, dict[str, int]] = {}
            for src in (s.usage_base, s.usage):
                for name, doc in src.items():
                    acc = merged.setdefault(name, {})
                    for k, v in doc.items():
                        acc[k] = acc.get(k, 0) + int(v)
            out.append(merged)
        if local:
            return out
        for r in self.remote_usage.values():  # compute nodes (their live reports)
            out.append(merge_usage([r["base"], r["usage"]]))
        return out

    def _node_report(self, doc: dict[str, Any]) -> None:
        """A compute node's report. Its cumulative usage is the live view (``usage``,
        metrics): a new incarnation (restart) starts from zero, so the last report of the old
        one is folded into the base and counters stay monotonic. Billing does not use it: the
        node's journaled batches (``batches``, over the TCP feed) go to the collector."""
        node, ack = doc.get("node"), doc.get("ack")
        if isinstance(node, str) and "batches" in doc and self.usage_collector is not None:
            self.usage_collector.offer(node, doc["batches"], MAX_NODES)
        if (
            isinstance(node, str)
            and node not in self.remote_acked
            and (len(self.remote_acked) >= MAX_NODES)
        ):
            return
        if isinstance(node, str) and isinstance(ack, int) and not isinstance(ack, bool):
            prev = self.remote_acked.get(node, (0, 0.0))[0]
            self.remote_acked[node] = (max(prev, ack), time.monotonic())
            self._acked()  # wake settle()
            return
        if not valid_report(doc):
            self.log("feed: malformed node report dropped")
            return
        self.remote_acked[doc["node"]] = (self.remote_acked.get(doc["node"], (0, 0.0))[0],
                                          time.monotonic())  # fmt: skip
        cur = self.remote_usage.get(doc["node"])
        if cur is None and len(self.remote_usage) >= MAX_NODES:
            self.log(f"feed: report of a {MAX_NODES + 1}th node {doc['node']!r} dropped")
            return
        if cur is None:
            self.remote_usage[doc["node"]] = {"inc": doc["inc"], "usage": doc["usage"],
                                              "base": {}}  # fmt: skip
            return
        if cur["inc"] != doc["inc"]:
            cur["base"] = merge_usage([cur["base"], cur["usage"]])
            cur["inc"] = doc["inc"]
        cur["usage"] = doc["usage"]

    def status_json(self) -> dict[str, Any]:
        return {
            "site": self.cfg.name,
            "public_ip": self.cfg.public_ip,
            "mode": self.cfg.mode,
            "workers": [
                {"index": s.index, "pid": s.proc.pid if s.proc else None, "up": s.ready,
                 "restarts": s.restarts, "watchdog_kills": s.watchdog_kills,
                 "buckets": self.table.shares().get(s.index, 0),
                 "tun": self.cfg.tun_name(s.index)}
                for s in self.slots
            ],
            "buckets": self.cfg.dataplane.buckets,
            "roles": sorted(self.roles),
            "nodes": {  # compute nodes on the state feed (a controller with [cluster])
                name: {"acked": acked, "heard_s_ago": round(time.monotonic() - seen, 3)}
                for name, (acked, seen) in sorted(self.remote_acked.items())
            } if self.engine_role is None or not self.is_controller
            else self.engine_role.status(),
            # state stream entries this node refused (forged, unsigned, malformed), by reason
            "state_refused": dict(self.engine_role.replica.refused)
            if self.engine_role is not None and not self.is_controller else {},
            "deploys_refused": dict(self.deploys_refused),
            "usage_collection": self._collection_status(),
        }  # fmt: skip

    async def _watch_worker(self, slot: WorkerSlot) -> None:
        while not self._stopping:
            assert slot.proc is not None and slot.sock is not None
            sock = slot.sock
            async with trio.open_nursery() as n:
                n.start_soon(self._watchdog, slot)
                n.start_soon(self._guarded, slot, "reading its messages", self._read_worker,
                             sock)  # fmt: skip
                n.start_soon(self._guarded, slot, "sending its state", self._sender, sock)
                await trio.lowlevel.wait_readable(slot.pidfd)
                n.cancel_scope.cancel()
            rc = slot.proc.wait()
            os.close(slot.pidfd)
            slot.pidfd = -1
            sock.close()
            slot.sock = None
            was_ready = slot.ready
            slot.ready = False
            self._acked()  # settle() no longer waits for this worker
            slot.hello = False
            slot.outbox.clear()
            slot.out_bytes = 0
            if self._stopping:
                return
            self.log(f"worker {slot.index} (pid {slot.proc.pid}) exited with {rc}")
            # the cgroups of its confined processes (they died with it)
            await trio.to_thread.run_sync(sweep_cgroups, slot.proc.pid)
            # fold this incarnation's counters into the base so counters stay monotonic
            for k in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "tx_errors",
                      "native_packets"):  # fmt: skip
                setattr(slot.base, k, getattr(slot.base, k) + getattr(slot.stats, k))
            for k, v in slot.stats.drops.items():
                slot.base.drops[k] = slot.base.drops.get(k, 0) + v
            slot.stats = WorkerStats()
            for name, doc in slot.usage.items():
                acc = slot.usage_base.setdefault(name, {})
                for k, v in doc.items():
                    acc[k] = acc.get(k, 0) + int(v)
            slot.usage = {}
            if was_ready:
                await trio.to_thread.run_sync(self._rebalance)
            await trio.sleep(self.cfg.dataplane.restart_delay)
            if self._stopping:
                return
            slot.restarts += 1
            self._spawn(slot)

    async def _watchdog(self, slot: WorkerSlot) -> None:
        """A worker that stops making progress (no message, i.e. no stats heartbeat, for
        :attr:`watchdog_s`) is killed; its exit is then handled as any crash."""
        slot.last_seen = trio.current_time()
        while True:
            await trio.sleep(min(1.0, self.watchdog_s / 4))
            silent = trio.current_time() - slot.last_seen
            if silent > self.watchdog_s and slot.proc is not None and slot.proc.poll() is None:
                slot.watchdog_kills += 1
                self.log(f"worker {slot.index} made no progress for {silent:.1f} s: killed")
                slot.proc.kill()
                return

    async def _read_worker(self, slot: WorkerSlot, sock: socket.socket) -> None:
        while True:
            await trio.lowlevel.wait_readable(sock)
            slot.last_seen = trio.current_time()
            while True:
                try:
                    msg = sock.recv(1 << 20)
                except BlockingIOError:
                    break
                except OSError:
                    return
                if not msg:
                    return
                doc = json.loads(msg)
                if "ack" in doc:
                    slot.acked = max(slot.acked, int(doc["ack"]))
                    self._acked()
                    if not slot.ready and slot.marker is not None and slot.acked >= slot.marker:
                        # its replica holds the whole state: now it may take traffic
                        slot.ready = True
                        pid = slot.proc.pid if slot.proc else "?"
                        self.log(f"worker {slot.index} ready (pid {pid}) with its state applied")
                        await trio.to_thread.run_sync(self._rebalance)
                elif "ready" in doc:
                    # the new incarnation asks for its state: the sender streams it
                    slot.hello = True
                    if slot.wake is not None:
                        slot.wake.set()
                elif "stats" in doc:
                    slot.stats = WorkerStats.from_json(doc["worker"])
                    slot.usage = doc.get("usage") or {}

    # --- the control API dispatches through here, so a reload swaps credentials in place
    @property
    def max_body(self) -> int:
        return self.app.max_body

    @property
    def limits(self) -> Any:  # the server reads them at every connection: reload applies
        return self.app.limits

    def handle(self, req: Request) -> Response:
        if not self.is_controller and req.method not in ("GET", "HEAD"):
            from pcsite_lite.control.app import error_response
            from pcsite_lite.control.errors import ApiError

            cl = self.cfg.cluster
            where = f" at {cl.controller[0]}" if cl is not None else ""
            return error_response(ApiError(
                "forbidden", f"this is a compute node: send state changes to the controller{where}"
            ))  # fmt: skip
        return self.app.handle(req)

    def offload(self, req: Request) -> bool:
        return self.app.offload(req)

    def _acked(self) -> None:
        """Wake settle(): a worker acked state ops, or stopped being ready."""
        self._acks.set()
        self._acks = trio.Event()

    async def settle(self, timeout: float = 1.0) -> None:
        """Wait (bounded) until every live worker applied every broadcast state op (and, on
        a controller whose nodes follow the engine, every live node)."""
        if self.is_controller and self.engine_role is not None:
            t0 = trio.current_time()
            await self.engine_role.settle(self._seq, timeout)
            timeout = max(0.0, timeout - (trio.current_time() - t0))
        with trio.move_on_after(timeout):
            while any(s.ready and s.acked < self._seq for s in self.slots) or any(
                acked < self._seq and time.monotonic() - seen < 1.0  # connected nodes
                for acked, seen in self.remote_acked.values()
            ):
                # woken by an ack (a worker's or a node's); a node that fell silent stops
                # counting after 1 s, which no event marks: look again every 50 ms
                with trio.move_on_after(0.05):
                    await self._acks.wait()

    # --- reload
    def reload(self) -> None:
        try:
            new = load(self.cfg.source)
        except ConfigError as exc:
            self.log(f"reload refused, keeping the running config: {exc}")
            return
        fixed = ("public_ip", "public_dev", "workers", "mode", "fis_url", "dataplane", "tls",
                 "cluster")  # fmt: skip
        changed = [k for k in fixed if getattr(new, k) != getattr(self.cfg, k)]
        if changed:
            self.log(f"reload refused: {', '.join(changed)} need a restart")
            return
        self.app = self._make_app(new)
        self.cfg = new
        self.backend.reconfigure(new)
        self.log("reloaded configuration")
        try:
            self.backend.recheck_proofs()  # the trust anchor may have changed
        except Exception as exc:  # a failing check must not stop the site
            self.log(f"re-checking ownership proofs: {type(exc).__name__}: {exc}")

    # --- main
    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.cfg
        # The control API's event loop shares the GIL with the threads it offloads uploads
        # and rebalances to; with CPython's default switch interval (5 ms) a thread running
        # Python holds the loop up to 5 ms at each of its wake-ups.
        sys.setswitchinterval(SWITCH_INTERVAL)
        try:
            left = self.kernel.clear_leftovers() if self.is_node else []
            if self.is_node:
                left += [f"cgroup {d}" for d in sweep_cgroups()]  # of workers killed before
            if left:
                self.log(f"removed what a previous instance left: {', '.join(left)}")
            if self.is_controller:
                restored = self.backend.restore()
                if any(restored.values()):
                    self.log("restored " + ", ".join(f"{v} {k}" for k, v in restored.items()))
            if self.is_node:
                for i in range(cfg.workers):
                    self.slots.append(WorkerSlot(i, _open_tun(cfg.tun_name(i))))
                self.kstats = KernelDrops({s.index: cfg.tun_name(s.index) for s in self.slots})
                self.kernel.setup(self.marks())
                self.backend.apply_divert()
                for s in self.slots:
                    self._spawn(s)
            elif self.backend._kernel is not None:  # the LB's kernel (lb,controller)
                self.backend.apply_divert()
            self._cluster_setup()
            # a compute node journals its usage for the controller; a site's own ledger gets
            # its own workers' usage (the nodes' comes through the collector, once)
            self.recorder = UsageRecorder(
                cfg.name, cfg.metering.ledger, lambda: totals(self.worker_usage(local=True)),
                sink=None if self.journal is None else self.journal.sink,
            )  # fmt: skip
            # what startup made (modules, configuration, restored state) lives as long as
            # the daemon: out of the cyclic collector's reach, a full collection scans only
            # what came after (one over all of it held the control API 20-30 ms)
            gc.freeze()
            async with trio.open_nursery() as nursery:
                for s in self.slots:
                    nursery.start_soon(self._watch_worker, s)
                nursery.start_soon(self.recorder.run, cfg.metering.interval, self.log)
                nursery.start_soon(self._maintain)
                if self.feed is not None and self.engine_role is None:
                    assert cfg.cluster is not None
                    await nursery.start(self.feed.serve, *cfg.cluster.controller)
                    self.log("state feed on {}:{}".format(*cfg.cluster.controller))
                # a node's engine role is also its feed client: one follower per node
                follower = self.engine_role if self.engine_role is not None else self.feed_client
                for task in (follower, self.heartbeater):
                    if task is not None:
                        nursery.start_soon(task.run)
                if self.usage_collector is not None:
                    nursery.start_soon(self.usage_collector.run, cfg.metering.interval,
                                       self.log, None, self._billed_tcp)  # fmt: skip

                tls = cfg.tls.server_context() if cfg.tls is not None else None

                async def serve_api(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                    await serve(self, cfg.control.host, cfg.control.port, tls=tls,
                                log=self.log, offload_nice=OFFLOAD_NICE,
                                task_status=task_status)  # fmt: skip

                port = await nursery.start(serve_api)
                scheme = "https" if tls is not None else "http (no [tls] configured: plain)"
                self.log(f"control API on {cfg.control.host}:{port}, {scheme}")
                deadline = trio.current_time() + 10
                # up = every worker ready and the bucket map already spread over all of them
                # (a load that starts at "site up" must not find one worker with every bucket)
                while (
                    self.is_node
                    and (
                        not all(s.ready for s in self.slots)
                        or set(self.table.workers) != {s.index for s in self.slots}
                    )
                    and trio.current_time() < deadline
                ):
                    await trio.sleep(0.02)
                if self.is_node and not any(s.ready for s in self.slots):
                    raise StartupError(
                        "no worker came up within 10 s (see the worker errors above)"
                    )
                self.log(f"site up: {cfg.public_ip}, {cfg.workers} worker(s)")
                task_status.started(cfg.control.port)
                with trio.open_signal_receiver(
                    signal.SIGTERM, signal.SIGINT, signal.SIGHUP
                ) as sigs:
                    async for signum in sigs:
                        if signum == signal.SIGHUP:
                            self.reload()
                            continue
                        self.log(f"stopping on signal {signal.Signals(signum).name}")
                        if self.heartbeater is not None:
                            await self.heartbeater.drain()  # planned stop: lose nothing
                        await self._bill_before_stop()
                        break
                self._stopping = True
                nursery.cancel_scope.cancel()
        finally:
            self._stopping = True
            self._stop_workers()
            self._final_usage()
            if self.engine_role is not None and hasattr(self.engine_role, "close"):
                self.engine_role.close()  # a node ships its final usage
            elif self.journal is not None:
                self.journal.close()
            if self.is_node:  # a controller alone changed nothing in the kernel
                self.kernel.teardown()
            for s in self.slots:
                s.tun.close()
            self.backend.close()
            self.log("stopped")

    def _cluster_setup(self) -> None:
        """The parts of a multi-machine site this process runs (nothing without [cluster]).

        With a Redis FIS engine the roles meet on it (``cluster/engine.py``: state stream,
        deployments, acknowledgements, usage); with another FIS (one SQLite file, e.g. the
        testbed's) the controller's TCP feed (``cluster/feed.py``) carries state and usage."""
        cl = self.cfg.cluster
        if cl is None:
            return
        from pcsite_lite.cluster.node import Heartbeater

        interval = self.cfg.metering.interval
        inc = os.urandom(8).hex()  #: this process: a node's restart is told apart by it

        def report() -> dict[str, Any]:  # a node's live usage (its journal is billed)
            doc = {"node": cl.node, "inc": inc,
                   "usage": merge_usage(self.worker_usage(local=True))}  # fmt: skip
            if self.journal is not None and self.engine_role is None:  # over the TCP feed
                doc["batches"] = self.journal.unbilled()
            return doc

        if uses_engine(self.cfg.fis_url):
            from pcsite_lite.cluster.engine import ControllerSide, NodeSide
            from pcsite_lite.fis import RedisFIS, open_engine

            engine = open_engine(self.cfg.fis_url)
            assert isinstance(engine, RedisFIS)
            if self.is_controller:
                self.engine_role = self.feed = ControllerSide(self, engine, cl.secret, interval)
            elif self.is_node:
                side = NodeSide(self, engine, cl, interval, report)
                self.engine_role = self.feed_client = side
                self.journal = side.journal
                self._snapshot = side.worker_snapshot
        else:
            from pcsite_lite.cluster.feed import FeedClient, FeedServer
            from pcsite_lite.cluster.usage import Collector, NodeJournal

            if self.is_controller:
                self.feed = FeedServer(self.backend.iter_snapshot_ops, cl.secret, self.log,
                                       on_report=self._node_report)  # fmt: skip
                self.usage_collector = Collector(self.cfg.metering.ledger, self.cfg.name)
            if self.is_node and not self.is_controller:
                self.journal = NodeJournal(
                    os.path.join(self.cfg.state_dir, "usage-journal.db"), cl.node
                )
                client = FeedClient(*cl.controller, cl.secret, on_op=self._remote_op,
                                    on_synced=lambda: None, log=self.log, report=report,
                                    node=cl.node, settle=self.settle)  # fmt: skip
                self.feed_client = client
                self._snapshot = lambda: client.replica.iter_snapshot_ops()
        if self.is_node:
            fc = self.feed_client

            def ready() -> bool:
                return any(s.ready for s in self.slots) and (fc is None or fc.synced)

            self.heartbeater = Heartbeater(cl, ready, self.log)

    def _remote_op(self, op: dict[str, Any]) -> None:
        """A change from the controller's feed: to this node's workers (and its divert set);
        a deployment to this node's repository (its workers load from there)."""
        if op.get("op") in ("deploy", "undeploy"):
            self._deploy(op)
            return
        if op.get("op") == "billed":  # the controller billed our journal up to seq
            cl = self.cfg.cluster
            if self.journal is not None and cl is not None and op.get("node") == cl.node:
                try:
                    self.journal.mark_billed(int(op["seq"]))
                except (ValueError, TypeError, KeyError) as exc:
                    self.log(f"usage journal: bad billed mark {op!r}: {exc}")
            return
        self.broadcast(op)
        if op.get("op") in ("destination", "release_destination"):
            try:
                self.kernel.set_divert(self.feed_client.replica.divert_prefixes())
            except KernelError as exc:
                self.log(f"divert set: {exc}")

    def _deploy(self, op: dict[str, Any]) -> None:
        from pcsite_lite.cluster.engine import apply_deploy
        from pcsite_lite.repository import RepositoryError

        name = f"{op.get('psp')}/{op.get('service')}"
        repo = self.backend.repo
        if repo is None:
            self.deploys_refused["no_repository"] += 1
            self.log(f"deployment of {name} ignored: this node has no site.repository")
            return
        try:
            self.log(f"deployment: {apply_deploy(repo, op)}")
        except (RepositoryError, ValueError, KeyError, TypeError) as exc:
            self.deploys_refused[getattr(exc, "reason", type(exc).__name__)] += 1
            self.log(f"deployment of {name} refused: {exc}")

    async def _bill_before_stop(self, timeout: float = 3.0) -> None:
        """A compute node on the TCP feed journals its usage so far and waits (bounded) until
        the controller billed it; what it metered after stays journaled for its next start."""
        if self.journal is None or self.engine_role is not None or self.recorder is None:
            return  # over the engine the controller collects a stopped node's stream
        try:
            self.recorder.flush()
        except Exception as exc:  # stop anyway: the journal keeps what it has
            self.log(f"usage journal: {type(exc).__name__}: {exc}")
            return
        last = self.journal.log.last_seq()
        with trio.move_on_after(timeout):
            while self.journal.billed < last:
                await trio.sleep(0.05)

    def _collection_status(self) -> dict[str, Any]:
        """A controller's billing of its nodes' usage: batches billed by this process, the
        last sequence number billed per node, batches refused and nodes skipped, by reason."""
        col = self.usage_collector
        skipped: dict[str, str] = {}
        if self.engine_role is not None and self.is_controller:
            col, skipped = self.engine_role.collector, self.engine_role.collect_skipped
        if col is None:
            return {}
        return {"batches_billed": col.taken, "last_seq": dict(col.last_seq),
                "refused": dict(col.refused), "skipped": dict(skipped)}  # fmt: skip

    def _billed_tcp(self, last_seq: dict[str, int]) -> None:
        """Tell the nodes on the TCP feed how far their journals were billed."""
        for node, seq in last_seq.items():
            self.feed.publish({"op": "billed", "node": node, "seq": seq})

    def _final_usage(self) -> None:
        """Append the usage the workers reported up to their stop (SIGTERM loses none)."""
        if self.recorder is None:
            return
        try:
            n = self.recorder.flush()
            self.log(f"usage ledger: {n} final record(s) appended")
        except Exception as exc:  # stop anyway, saying what was lost
            self.log(f"usage ledger: final append failed: {type(exc).__name__}: {exc}")
        self.recorder.close()

    async def _maintain(self) -> None:
        """Forget expired circuits; lapse destinations whose ownership proof expired (at
        that time) and re-validate every proof on a timer."""
        next_recheck = time.time() + PROOF_RECHECK
        next_expire = 0.0
        while True:
            now = time.time()
            try:
                if now >= next_recheck:
                    next_recheck = now + PROOF_RECHECK
                    self.backend.recheck_proofs()
                expire = now >= next_expire  # a scan of the table: not every tick
                if expire:
                    next_expire = now + CIRCUIT_EXPIRY_SCAN
                due = self.backend.tick(now, circuits=expire)
            except Exception as exc:  # a failing check must not stop the site
                self.log(f"maintenance: {type(exc).__name__}: {exc}")
                due = None
            wait = TICK if due is None else min(TICK, max(0.05, due - time.time()))
            await trio.sleep(wait)

    def _stop_workers(self) -> None:
        for s in self.slots:
            if s.sock is not None:
                try:
                    s.sock.send(channel.frames({"op": "stop"})[0])
                except OSError:
                    pass
        deadline = time.monotonic() + 2
        for s in self.slots:
            if s.proc is None:
                continue
            try:
                s.proc.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait()
            stats, usage = drain_reports(s.sock)  # the report a worker sends as it stops
            if stats is not None:
                s.stats, s.usage = stats, usage or {}
            if s.sock is not None:
                s.sock.close()
            if s.pidfd >= 0:
                os.close(s.pidfd)
                s.pidfd = -1


def run_daemon(cfg: SiteConfig, roles: frozenset[str] = ALL_IN_ONE) -> int:
    """Run the site (or the given roles of it) until SIGTERM/SIGINT; the exit status."""
    if roles != ALL_IN_ONE and cfg.cluster is None:
        print("pcsite: --role needs a [cluster] section in the configuration", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("pcsite: running a site needs root (TUN, nftables, policy routing)", file=sys.stderr)
        return 2
    try:
        os.makedirs(cfg.state_dir, exist_ok=True)
    except OSError as exc:
        print(f"pcsite: site.state_dir {cfg.state_dir}: {exc.strerror}", file=sys.stderr)
        return 2
    lock = StateLock(cfg.state_dir)
    try:
        lock.acquire()
    except StoreError as exc:
        print(f"pcsite: {exc}", file=sys.stderr)
        return 2
    try:
        return _run_locked(cfg, roles)
    finally:
        lock.release()


def _run_locked(cfg: SiteConfig, roles: frozenset[str]) -> int:
    if roles == {"lb"}:
        from pcsite_lite.cluster.lb import LoadBalancer, leaf, run_until_signal

        try:
            trio.run(run_until_signal, LoadBalancer(cfg, follow_feed=True))
        except (KernelError, OSError, BaseExceptionGroup) as exc:
            print(f"pcsite: load balancer: {leaf(exc)}", file=sys.stderr)
            return 1
        return 0
    try:
        sup = Supervisor(cfg, roles=roles - {"lb"})
    except StoreError as exc:
        print(f"pcsite: site.state_dir: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # FIS or repository unusable: name what failed
        print(f"pcsite: cannot open the site's stores (site.fis = {_redacted(cfg.fis_url)!r}, "
              f"site.repository = {cfg.repository!r}): {type(exc).__name__}: {exc}",
              file=sys.stderr)  # fmt: skip
        return 1  # may be passing (the FIS engine restarting): a service manager retries
    try:
        if "lb" in roles:  # lb + controller in one process (one state directory, one lock)
            from pcsite_lite.cluster.lb import LoadBalancer, leaf, run_until_signal

            lb = LoadBalancer(cfg)
            sup.backend._kernel = lb.kernel  # form-3 prefixes: the LB diverts them too
            try:
                trio.run(run_until_signal, lb, sup.run)
            except BaseExceptionGroup as eg:
                raise leaf(eg) from None
        else:
            trio.run(sup.run)
    except (StartupError, KernelError) as exc:
        print(f"pcsite: {exc}", file=sys.stderr)
        return 1
    return 0


def _redacted(url: str) -> str:
    """``url`` without its password (an error message must not carry the FIS credentials)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "(unparsable URL)"


def cleanup(cfg: SiteConfig) -> tuple[int, list[str]]:
    """``pcsite cleanup``: remove what a dead instance left in the kernel. Refused (exit 1)
    while a daemon runs this site. Returns (exit status, what was found or why refused)."""
    lock = StateLock(cfg.state_dir)
    try:
        lock.acquire()
    except StoreError as exc:
        return 1, [str(exc)]
    try:
        return 0, Kernel(cfg).clear_leftovers() + [f"cgroup {d}" for d in sweep_cgroups()]
    finally:
        lock.release()
