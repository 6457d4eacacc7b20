"""The load balancer role: the site's public IP, split in the kernel to compute nodes.

nftables hashes each packet for the public IP the same way a one-machine site splits it to
its workers (``kernel.render_ruleset``: ``jhash`` of the form-1 label, or of source .
destination for forms 2/3, ``mod table_size``) and maps the position through the kernel map
``buckets`` -- filled from the :class:`~.maglev.MaglevTable` -- to the firewall mark of a
compute node's slot. One policy-routing rule per slot sends that mark to a table whose
default route is ``via <node's internal address> dev <internal_dev>``: the packet leaves
unchanged (destination still the public IP; each node holds the public IP too and splits it
again to its workers), like LVS direct routing. Packets coming back from the nodes on the
internal interface are exempt from the split and routed on; they carry the public IP as
their source already (the nodes' pipelines set it), so everything that leaves the site says
the site's one address. Why policy routing and not a tunnel: see ``docs/daemon.md``.

Heartbeats (UDP, HMAC) arrive on ``cluster.lb``; :class:`~.membership.Membership` decides
the table, and every change replaces the kernel map in one nft transaction. Each heartbeat
is answered ``in`` or ``out`` so a draining node knows when it may stop.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from pcsite_lite.daemon.config import SiteConfig
from pcsite_lite.daemon.kernel import (
    LOCAL_PREF_MOVED,
    Kernel,
    KernelError,
    _rules,
    _run,
    render_ruleset,
)

from .config import ClusterConfig
from .engine import uses_engine
from .feed import leaf
from .membership import HeartbeatError, Membership, decode

__all__ = ["LbKernel", "LoadBalancer", "leaf", "run_until_signal"]

LB_JOURNAL = "lb-kernel.json"
STATUS = "lb-status.json"


class LbKernel(Kernel):
    """The LB's kernel state: public IP, the nft split, one rule + table per node slot."""

    def __init__(self, cfg: SiteConfig, cl: ClusterConfig) -> None:
        dp = replace(cfg.dataplane, tun_prefix=cl.internal_dev, buckets=cl.table_size,
                     nft_table=f"{cfg.dataplane.nft_table}_lb")  # fmt: skip
        super().__init__(replace(cfg, dataplane=dp, workers=0))
        self.cl = cl
        self._journal = Path(cfg.state_dir) / LB_JOURNAL

    def setup(self, marks: list[int]) -> None:  # type: ignore[override]
        self._read_journal()
        self.teardown(quiet=True, keep_journal=True)
        cfg = self.cfg
        self._write_journal()
        if f" {cfg.public_ip}/" not in _run(["ip", "-4", "-o", "addr", "show"]):
            self._added_addr = True
            self._write_journal()
            _run(["ip", "addr", "add", f"{cfg.public_ip}/32", "dev", cfg.public_dev])
        self._sysctl("ip_forward", "1")
        self._sysctl("conf/all/rp_filter", "0")
        dev = self.cl.internal_dev
        self._sysctl(f"conf/{dev}/rp_filter", "0")
        self._sysctl(f"conf/{dev}/accept_local", "1")  # node output has the public IP as source
        if f"{LOCAL_PREF_MOVED}:\tfrom all lookup local" not in _rules():
            _run(["ip", "rule", "add", "pref", str(LOCAL_PREF_MOVED), "lookup", "local"])
        _run(["ip", "rule", "del", "pref", "0", "lookup", "local"], check=False)
        script = render_ruleset(cfg, marks)
        if not marks:  # no node yet: an empty map (the packets stay unmarked, not split)
            script = "".join(ln for ln in script.splitlines(True) if "add element" not in ln)
        _run(["nft", "-f", "-"], stdin=script)

    def set_node(self, slot: int, addr: str) -> None:
        dp = self.cfg.dataplane
        _run(["ip", "route", "replace", "default", "via", addr, "dev", self.cl.internal_dev,
              "table", str(self.table(slot))])  # fmt: skip
        sel = f"fwmark {self.mark(slot):#x} lookup {self.table(slot)}"
        if not any(r.startswith(f"{dp.rule_pref + slot}:") and sel in r for r in _rules()):
            _run(["ip", "rule", "add", "pref", str(dp.rule_pref + slot), "fwmark",
                  f"{self.mark(slot):#x}", "lookup", str(self.table(slot))])  # fmt: skip

    def del_node(self, slot: int) -> None:
        _run(["ip", "rule", "del", "pref", str(self.cfg.dataplane.rule_pref + slot)], check=False)
        _run(["ip", "route", "flush", "table", str(self.table(slot))], check=False)

    def set_buckets(self, marks: list[int]) -> None:  # type: ignore[override]
        t = self.cfg.dataplane.nft_table
        script = f"flush map ip {t} buckets\n"
        if marks:
            elements = ", ".join(f"{i} : {m:#x}" for i, m in enumerate(marks))
            script += f"add element ip {t} buckets {{ {elements} }}\n"
        _run(["nft", "-f", "-"], stdin=script)


class LoadBalancer:
    """The ``lb`` role of ``pcsite run``."""

    def __init__(self, cfg: SiteConfig, *, log: Any = None, follow_feed: bool = False) -> None:
        """``follow_feed``: an LB without a co-located controller subscribes to the
        controller's state feed for the form-3 prefixes it must divert."""
        if cfg.cluster is None:
            raise ValueError("the lb role needs a [cluster] section")
        self.cfg = cfg
        self.cl: ClusterConfig = cfg.cluster
        self.kernel = LbKernel(cfg, self.cl)
        self.members = Membership(ttl=self.cl.ttl, size=self.cl.table_size)
        self.routed: dict[int, str] = {}  #: slot -> node address installed in the kernel
        self.changes: list[tuple[float, list[str]]] = []  #: (time, nodes in the table)
        self._log = log or (lambda m: print(f"pcsite-lb[{cfg.name}]: {m}", file=sys.stderr))
        self._status = Path(cfg.state_dir) / STATUS
        self.feed: Any = None
        if follow_feed and uses_engine(cfg.fis_url):  # the state stream on the FIS engine
            import os

            from pcsite_lite.fis import RedisFIS, open_engine
            from pcsite_lite.statestream import SAVED_STATE, EngineFeedClient

            engine = open_engine(cfg.fis_url)
            assert isinstance(engine, RedisFIS)
            self.feed = EngineFeedClient(
                engine, on_op=self._feed_op, on_synced=lambda: None,
                log=self.log, key=self.cl.secret,
                state_file=os.path.join(cfg.state_dir, SAVED_STATE),
            )  # fmt: skip
        elif follow_feed:
            from .feed import FeedClient

            self.feed = FeedClient(*self.cl.controller, self.cl.secret, on_op=self._feed_op,
                                   on_synced=lambda: None, log=self.log)  # fmt: skip

    def _feed_op(self, op: dict[str, Any]) -> None:
        if op.get("op") in ("destination", "release_destination"):
            try:
                self.kernel.set_divert(self.feed.replica.divert_prefixes())
            except KernelError as exc:
                self.log(f"divert set: {exc}")

    def log(self, msg: str) -> None:
        self._log(msg)

    def _apply(self) -> None:
        """Bring the kernel in line with the membership (routes first, then the map)."""
        live = {m.slot: m.addr for m in self.members.members.values()}
        for slot, addr in live.items():
            if self.routed.get(slot) != addr:
                self.kernel.set_node(slot, addr)
                self.routed[slot] = addr
        table = self.members.table()
        if table is None:
            self.kernel.set_buckets([])
        else:
            slot_of = {m.node: m.slot for m in self.members.members.values()}
            self.kernel.set_buckets([self.kernel.mark(slot_of[n]) for n in table.entries])
        for slot in [s for s in self.routed if s not in live]:
            self.kernel.del_node(slot)
            del self.routed[slot]
        nodes = sorted(table.nodes) if table else []
        self.changes.append((time.time(), nodes))
        self.log(f"table v{self.members.version}: nodes {nodes}")
        self._write_status()

    def status(self) -> dict[str, Any]:
        table = self.members.table()
        shares = table.shares() if table else {}
        return {
            "site": self.cfg.name, "public_ip": self.cfg.public_ip, "role": "lb",
            "version": self.members.version, "table_size": self.cl.table_size,
            "nodes": [{"node": m.node, "addr": m.addr, "state": m.state, "slot": m.slot,
                       "in_table": m.node in shares, "positions": shares.get(m.node, 0)}
                      for m in sorted(self.members.members.values(), key=lambda m: m.slot)],
            "dropped": dict(self.members.dropped),
            "changed_at": self.changes[-1][0] if self.changes else None,
        }  # fmt: skip

    def _write_status(self) -> None:
        try:
            tmp = self._status.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.status()))
            os.replace(tmp, self._status)
        except OSError:
            pass

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        os.makedirs(self.cfg.state_dir, exist_ok=True)
        self.kernel.setup([])
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            await sock.bind(self.cl.lb)
            self.log(f"load balancer up: {self.cfg.public_ip}, heartbeats on "
                     f"{self.cl.lb[0]}:{self.cl.lb[1]}")  # fmt: skip
            self._write_status()
            task_status.started()
            async with trio.open_nursery() as n:
                if self.feed is not None:
                    n.start_soon(self.feed.run)
                await self._loop(sock)
        finally:
            sock.close()
            self.kernel.teardown()
            try:
                self._status.unlink()
            except OSError:
                pass
            self.log("stopped")

    async def _loop(self, sock: Any) -> None:
        while True:
            due = self.members.next_expiry()
            wait = 1.0 if due is None else max(0.0, due - time.monotonic()) + 0.005
            data = None
            with trio.move_on_after(wait):
                data, peer = await sock.recvfrom(2048)
            now = time.monotonic()
            if data is not None:
                try:
                    hb = decode(data, self.cl.secret)
                except HeartbeatError as exc:
                    self.members.dropped[exc.reason] = self.members.dropped.get(exc.reason, 0) + 1
                    continue
                before = self.members.version
                slot_addr = {m.slot: m.addr for m in self.members.members.values()}
                inside = self.members.heartbeat(hb, now)
                moved = {m.slot: m.addr for m in self.members.members.values()} != slot_addr
                if self.members.version != before or moved:
                    await trio.to_thread.run_sync(self._apply)
                try:
                    await sock.sendto(b"in" if inside else b"out", peer)
                except OSError:
                    pass
            if self.members.expire(now):
                await trio.to_thread.run_sync(self._apply)


async def run_until_signal(lb: LoadBalancer, then: Any = None) -> None:
    """Run the LB until SIGTERM/SIGINT, or (with ``then``, an async function: the
    controller's supervisor, which handles the signals itself) until ``then()`` returns."""
    async with trio.open_nursery() as n:
        await n.start(lb.run)
        if then is not None:
            await then()
            n.cancel_scope.cancel()
            return
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
            async for _ in sigs:
                break
        n.cancel_scope.cancel()
