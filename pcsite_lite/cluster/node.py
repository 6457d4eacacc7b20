"""A compute node's side of membership: heartbeats to the LB, and draining.

A node says ``up`` only while ``ready()`` (its workers hold the state) is true; on a planned
stop it says ``draining`` until the LB answers ``out`` (its positions moved to the other
nodes), keeps forwarding for ``drain_grace`` seconds (packets already on their way), and only
then stops: nothing is lost. The sequence number starts from the wall clock in microseconds,
so a restarted node's heartbeats are never taken for replays of the old one's.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import trio

from .config import ClusterConfig
from .membership import Heartbeat, encode

__all__ = ["Heartbeater"]


class Heartbeater:
    def __init__(self, cl: ClusterConfig, ready: Callable[[], bool], log: Callable[[str], None]):
        self.cl = cl
        self.ready = ready
        self.log = log
        self.seq = time.time_ns() // 1000
        self.draining = False
        self.in_table = False
        self._out = trio.Event()

    async def _beat(self, sock: Any) -> None:
        self.seq += 1
        state = "draining" if self.draining else "up"
        hb = Heartbeat(self.cl.node, self.cl.internal_ip, state, self.seq)
        try:
            await sock.sendto(encode(hb, self.cl.secret), self.cl.lb)
        except OSError:
            pass  # the LB is away: keep trying

    async def run(self) -> None:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            await sock.bind((self.cl.internal_ip, 0))
            async with trio.open_nursery() as n:
                n.start_soon(self._replies, sock)
                while True:
                    if self.draining or self.ready():
                        await self._beat(sock)
                    await trio.sleep(self.cl.heartbeat)

    async def _replies(self, sock: Any) -> None:
        while True:
            try:
                data = await sock.recv(16)
            except OSError:
                await trio.sleep(self.cl.heartbeat)
                continue
            was = self.in_table
            self.in_table = data == b"in"
            if was != self.in_table:
                self.log(f"node {self.cl.node}: {'in' if self.in_table else 'out of'} the LB table")
            if self.draining and data == b"out":
                self._out.set()

    async def drain(self, timeout: float = 5.0) -> bool:
        """Leave the table and wait until packets stop coming; False if the LB never
        confirmed (it may be down: then it sends us nothing anyway)."""
        self.draining = True
        self.log(f"node {self.cl.node}: draining")
        ok = False
        with trio.move_on_after(timeout):
            await self._out.wait()
            ok = True
        await trio.sleep(self.cl.drain_grace)
        return ok
