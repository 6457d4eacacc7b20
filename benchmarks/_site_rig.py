"""A live site for the fault benchmarks: sender S -- site A -- receiver D, ``pcsite run`` on A.

Namespaces are ``pcr<run id>{s,a,d}`` (made with :mod:`testbed.netns`), addresses in
198.18.0.0/15; everything is removed on exit, also after the daemon was SIGKILLed (its kernel
state lives in A's namespace). The daemon is pinned to ``daemon_cpus`` and the caller's load
generator to another vCPU (:func:`pin`), as the benchmark rules ask.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from testbed import netns

T = TypeVar("T")
ADMIN = "pcr-isp-admin-token-0123456789"
PSP = "pcr-acme-token-0123456789abcdef"


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def pin(cpu: int) -> None:
    """Pin the calling process to one vCPU (if there is more than one)."""
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


class SiteRig:
    """S -- A -- D; the site daemon on A answers at :attr:`SITE`."""

    S = "198.18.91.1"
    SITE = "198.18.94.1"
    D = "198.18.92.2"
    OWNED = "198.18.95.0/24"  #: a prefix behind D (on D's loopback) a destination may own
    OWNED_HOST = "198.18.95.2"

    def __init__(self, tmp: Path, *, workers: int = 1, metering_interval: float = 0.5,
                 daemon_cpus: str = "1", trust_anchor: str | None = None) -> None:  # fmt: skip
        self.id = f"pcr{secrets.token_hex(2)}"
        self.tmp = tmp
        self.workers = workers
        self.metering_interval = metering_interval
        self.trust_anchor = trust_anchor  #: DS text enabling destination sign-up (form 3)
        self.daemon_cpus = daemon_cpus if (os.cpu_count() or 1) > 1 else "0"
        self.ns = {n: f"{self.id}{n}" for n in "sad"}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / f"{self.id}.log"
        self.ledger = tmp / f"{self.id}-state" / "usage.ledger"

    def __enter__(self) -> SiteRig:
        with ExitStack() as undo:  # a failed build or start removes what was made
            undo.callback(self.close)
            self._build()
            self.start()
            undo.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def in_ns(self, node: str, fn: Callable[[], T]) -> T:
        return netns.call_in(self.ns[node], fn)

    def _build(self) -> None:
        for name in self.ns.values():
            netns.call_in(None, partial(netns.create, name))
        for a, aaddr, b, baddr in (("s", "198.18.91.1/24", "a", "198.18.91.2/24"),
                                   ("a", "198.18.92.1/24", "d", "198.18.92.2/24")):  # fmt: skip
            x, y = f"{self.id}{a}{b}", f"{self.id}{b}{a}"
            _ip("link", "add", x, "netns", self.ns[a], "type", "veth", "peer", "name", y,
                "netns", self.ns[b])  # fmt: skip
            for node, dev, addr in ((a, x, aaddr), (b, y, baddr)):
                _ip("-n", self.ns[node], "addr", "add", addr, "dev", dev)
                _ip("-n", self.ns[node], "link", "set", dev, "up")
        for node in "sad":
            _ip("-n", self.ns[node], "link", "set", "lo", "up")
        _ip("-n", self.ns["s"], "route", "add", "default", "via", "198.18.91.2")
        _ip("-n", self.ns["d"], "route", "add", "default", "via", "198.18.92.1")
        _ip("-n", self.ns["d"], "addr", "add", f"{self.OWNED_HOST}/24", "dev", "lo")
        _ip("-n", self.ns["a"], "route", "add", self.OWNED, "via", self.D)

    def start(self) -> None:
        state = self.ledger.parent
        state.mkdir(exist_ok=True)
        cfg = self.tmp / f"{self.id}.toml"
        cfg.write_text(
            f'[site]\nname = "{self.id}-site"\npublic_ip = "{self.SITE}"\n'
            f'workers = {self.workers}\nstate_dir = "{state}"\n\n'
            f'[dataplane]\ntun_prefix = "{self.id}w"\n\n'
            f"[metering]\ninterval = {self.metering_interval}\n\n"
            f'[control]\nlisten = "127.0.0.1:8080"\nadmin_token = "{ADMIN}"\n'
            + (f"trust_anchor = {json.dumps(self.trust_anchor)}\n" if self.trust_anchor else "")
            + "\n"
            f'[control.psps.acme]\ntoken = "{PSP}"\n'
        )
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns["a"], "taskset", "-c", self.daemon_cpus,
             sys.executable, "-m", "pcsite_lite.cli", "run", "--config", str(cfg)],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while "site up" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"site did not come up: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def worker_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"ready \(pid (\d+)\)", self.log.read_text())]

    def client(self, *, admin: bool = False) -> Any:
        """A control API client whose calls run inside A's namespace."""
        from pcsite_lite.control.client import ControlClient

        c = ControlClient("http://127.0.0.1:8080", token=ADMIN if admin else PSP,
                          psp=None if admin else "acme")  # fmt: skip
        rig = self

        class InNs:
            def __getattr__(self, name: str) -> Any:
                fn = getattr(c, name)
                return lambda *a, **k: rig.in_ns("a", lambda: fn(*a, **k))

        return InNs()

    def raw_sender(self) -> socket.socket:
        return self.in_ns("s", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                                     socket.IPPROTO_RAW))  # fmt: skip

    def udp_receiver(self, port: int) -> socket.socket:
        def mk() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            s.bind(("0.0.0.0", port))
            s.settimeout(0.2)
            return s

        return self.in_ns("d", mk)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        """Send ``sig`` to the daemon and wait for it (and its workers) to exit."""
        if self.proc is None:
            return None
        pids = self.worker_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        deadline = time.monotonic() + 10  # workers leave once their control socket closes
        while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.proc = None
        return rc

    def close(self) -> None:
        self.stop(signal.SIGTERM)
        for name in self.ns.values():
            netns.remove(name)
