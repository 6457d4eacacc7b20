"""A replicated Redis FIS on one machine: a primary, replicas and Sentinels on loopback.

For tests, benchmarks and a one-machine trial of the replicated FIS (a real site runs each
server on its own machine; see ``docs/cluster-fis.md``). Every process binds 127.0.0.1 only,
keeps its files in a directory of the caller's, dies with its parent (``PR_SET_PDEATHSIG``)
and is killed by PID when the ``with`` block ends, even on failure.

>>> import tempfile  # doctest: +SKIP
>>> with LocalRedisGroup(tempfile.mkdtemp(), replicas=1) as group:  # doctest: +SKIP
...     fis = open_engine(group.url(wait=1))
...     group.kill_primary()          # Sentinel promotes the replica
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from pcsite_lite.daemon.kernel import die_with_parent
from pcsite_lite.fis.redis_engine import SENTINEL_SCHEME

__all__ = ["GroupError", "LocalRedisGroup", "free_port"]

HOST = "127.0.0.1"
PRIMARY_NAME = "pcfis"


class GroupError(RuntimeError):
    """A server of the group did not start or did not reach the expected state in time."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _binary(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not os.path.exists(path):
        raise GroupError(f"{name} not found (apt-get install redis-server redis-sentinel)")
    return path


class LocalRedisGroup:
    """``replicas`` Redis replicas of one primary and ``sentinels`` Sentinels (quorum: a
    majority) under ``workdir``. ``down_after_ms``: how long the primary must be silent before
    Sentinel calls it down (the larger part of the failover time). ``cpus``: pin the servers."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        replicas: int = 1,
        sentinels: int = 1,
        down_after_ms: int = 500,
        failover_timeout_ms: int = 3000,
        cpus: set[int] | None = None,
    ) -> None:
        if not 1 <= replicas <= 8 or not 1 <= sentinels <= 5:
            raise ValueError("replicas must be 1..8 and sentinels 1..5")
        self.dir = Path(workdir)
        self.replicas = replicas
        self.n_sentinels = sentinels
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.cpus = cpus  #: pin every server to these vCPUs (benchmarks), or None
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  #: port -> server process
        self.sentinel_ports: list[int] = []
        self.primary_port = 0

    # --- life cycle ---------------------------------------------------------------------------
    def __enter__(self) -> LocalRedisGroup:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, port: int, args: list[str], *, sentinel: bool = False) -> None:
        d = self.dir / str(port)
        d.mkdir(parents=True, exist_ok=True)
        if sentinel:
            conf = d / "sentinel.conf"
            quorum = self.n_sentinels // 2 + 1
            conf.write_text(
                f"port {port}\nbind {HOST}\nprotected-mode yes\ndir {d}\n"
                f"sentinel monitor {PRIMARY_NAME} {HOST} {self.primary_port} {quorum}\n"
                f"sentinel down-after-milliseconds {PRIMARY_NAME} {self.down_after_ms}\n"
                f"sentinel failover-timeout {PRIMARY_NAME} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {PRIMARY_NAME} {self.replicas}\n"
            )
            cmd = [_binary("redis-sentinel"), str(conf), "--logfile", str(d / "log")]
        else:
            cmd = [
                _binary("redis-server"),
                "--port", str(port),
                "--bind", HOST,
                "--dir", str(d),
                "--logfile", str(d / "log"),
                "--save", "",
                "--appendonly", "no",
                "--repl-diskless-sync", "yes",
                "--repl-diskless-sync-delay", "0",
                *args,
            ]  # fmt: skip
        self.procs[port] = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=self._child_setup,
        )

    def _child_setup(self) -> None:
        die_with_parent()
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)

    def start(self) -> None:
        self.primary_port = free_port()
        self._spawn(self.primary_port, [])
        self._wait(lambda: self._ping(self.primary_port), "the primary to start")
        for _ in range(self.replicas):
            port = free_port()
            self._spawn(port, ["--replicaof", HOST, str(self.primary_port)])
        self._wait(
            lambda: self._connected_replicas(self.primary_port) >= self.replicas,
            "the replicas to sync",
        )
        for _ in range(self.n_sentinels):
            port = free_port()
            self.sentinel_ports.append(port)
            self._spawn(port, [], sentinel=True)
        self._wait(lambda: self.primary() == self.primary_port, "the Sentinels")
        self._wait(self._sentinels_see_replicas, "the Sentinels to find the replicas")

    def stop(self) -> None:
        """Kill every process of the group by PID (idempotent)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    # --- queries and faults ---------------------------------------------------------------------
    def url(self, *, wait: int = 0, wait_ms: int = 1000, prefix: str = "pcfis") -> str:
        """The FIS URL of the group (``open_engine`` opens it)."""
        hosts = ",".join(f"{HOST}:{p}" for p in self.sentinel_ports)
        return (
            f"{SENTINEL_SCHEME}://{hosts}/{PRIMARY_NAME}?prefix={prefix}"
            f"&wait={wait}&wait_ms={wait_ms}"
        )

    def primary(self) -> int | None:
        """The port every Sentinel names as the primary now (None while they disagree)."""
        seen = set()
        for port in self.sentinel_ports:
            try:
                r = redis.Redis(host=HOST, port=port, socket_timeout=0.5)
                addr = r.sentinel_get_master_addr_by_name(PRIMARY_NAME)
                r.close()
            except (redis.RedisError, OSError):
                return None
            if not addr:
                return None
            seen.add(int(addr[1]))
        return seen.pop() if len(seen) == 1 else None

    def kill_primary(self) -> int:
        """SIGKILL the current primary (as a crash would); returns its port."""
        port = self.primary() or self.primary_port
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        return port

    def wait_failover(self, old: int, timeout: float = 30.0) -> int:
        """Wait until the Sentinels name a live primary other than ``old``; return its port."""
        found: list[int] = []

        def moved() -> bool:
            p = self.primary()
            if p is None or p == old or not self._is_primary(p):
                return False
            found.append(p)
            return True

        self._wait(moved, "a failover", timeout)
        return found[-1]

    def _sentinels_see_replicas(self) -> bool:
        for port in self.sentinel_ports:
            try:
                r = redis.Redis(host=HOST, port=port, socket_timeout=0.5)
                seen = int(r.sentinel_master(PRIMARY_NAME).get("num-slaves", 0))
                others = int(r.sentinel_master(PRIMARY_NAME).get("num-other-sentinels", 0))
                r.close()
            except (redis.RedisError, OSError, ValueError):
                return False
            if seen < self.replicas or others < self.n_sentinels - 1:
                return False
        return True

    def _ping(self, port: int) -> bool:
        try:
            return bool(redis.Redis(host=HOST, port=port, socket_timeout=0.5).ping())
        except (redis.RedisError, OSError):
            return False

    def _info(self, port: int) -> dict[str, Any]:
        try:
            return dict(redis.Redis(host=HOST, port=port, socket_timeout=0.5).info("replication"))
        except (redis.RedisError, OSError):
            return {}

    def _is_primary(self, port: int) -> bool:
        return self._info(port).get("role") == "master"

    def _connected_replicas(self, port: int) -> int:
        info = self._info(port)
        online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return sum(1 for v in online if v.get("state") == "online")

    def _wait(self, pred: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            dead = [p for p, proc in self.procs.items() if proc.poll() is not None]
            if dead and "failover" not in what:
                log = self.dir / str(dead[0]) / "log"
                tail = log.read_text()[-400:] if log.exists() else ""
                raise GroupError(f"a Redis process (port {dead[0]}) exited: {tail}")
            if time.monotonic() > deadline:
                raise GroupError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.02)
