"""A real site daemon in namespaces for the billing tests (names: "pcb" + a per-run id).

Sender S -- site A -- receiver D, each a network namespace; A runs ``pcsite run``. Work inside
a namespace (sockets, control API calls, ``pcbill collect``) runs in a short thread that
``setns``-es into it. Everything (daemon, namespaces with their links) is removed on exit.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from testbed.netns import call_in

T = TypeVar("T")
ADMIN = "pcb-isp-admin-token-0123456789"
PSP_TOKEN = "pcb-acme-token-0123456789abcdef"


def have_tools() -> bool:
    return all(shutil.which(t) for t in ("ip", "nft")) and os.path.exists("/dev/net/tun")


def _sh(*args: str) -> None:
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()}")


def in_ns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread inside namespace ``ns``; return its result (or raise)."""
    return call_in(ns, fn, timeout=None)


class LiveSite:
    """S -- A -- D; the site daemon on A (public IP :attr:`SITE`)."""

    S = "198.18.81.1"
    SITE = "198.18.84.1"
    D = "198.18.82.2"
    FAR = "198.19.85.2"  #: another ISP's site, behind D (outside ISP_PREFIXES)
    ISP_PREFIXES = ("198.18.0.0/16",)  #: the site's ISP: S, A, D are inside

    def __init__(self, tmp: Path, workers: int = 2) -> None:
        self.id = f"pcb{secrets.token_hex(2)}"
        self.tmp = tmp
        self.workers = workers
        self.ns = {n: f"{self.id}{n}" for n in ("s", "a", "d")}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "site.log"

    def __enter__(self) -> LiveSite:
        try:
            self._build()
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _veth(self, a: str, aaddr: str, b: str, baddr: str) -> None:
        x, y = f"{self.id}{a}{b}", f"{self.id}{b}{a}"
        _sh(
            "ip",
            "link",
            "add",
            x,
            "netns",
            self.ns[a],
            "type",
            "veth",
            "peer",
            "name",
            y,
            "netns",
            self.ns[b],
        )
        for ns, dev, addr in ((self.ns[a], x, aaddr), (self.ns[b], y, baddr)):
            _sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")

    def _build(self) -> None:
        for ns in self.ns.values():
            _sh("ip", "netns", "add", ns)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        self._veth("s", "198.18.81.1/24", "a", "198.18.81.2/24")
        self._veth("a", "198.18.82.1/24", "d", "198.18.82.2/24")
        n = self.ns
        _sh("ip", "-n", n["d"], "addr", "add", "198.19.85.2/24", "dev", "lo")
        _sh("ip", "-n", n["s"], "route", "add", "default", "via", "198.18.81.2")
        _sh("ip", "-n", n["d"], "route", "add", "default", "via", "198.18.82.1")
        _sh("ip", "-n", n["a"], "route", "add", "198.19.85.0/24", "via", "198.18.82.2")

    def _start(self) -> None:
        state = self.tmp / "state"
        state.mkdir(exist_ok=True)
        cfg = self.tmp / "site.toml"
        cfg.write_text(
            f"""
[site]
name = "{self.id}-site"
public_ip = "{self.SITE}"
workers = {self.workers}
state_dir = "{state}"
isp_prefixes = {json.dumps(list(self.ISP_PREFIXES))}

[dataplane]
tun_prefix = "{self.id}w"

[control]
listen = "127.0.0.1:8080"
admin_token = "{ADMIN}"

[control.psps.acme]
token = "{PSP_TOKEN}"
"""
        )
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns["a"],
                sys.executable,
                "-m",
                "pcsite_lite.cli",
                "run",
                "--config",
                str(cfg),
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"site exited: {self.log.read_text()}")
            if "site up" in self.log.read_text():
                return
            time.sleep(0.05)
        raise RuntimeError(f"site did not come up: {self.log.read_text()}")

    def client(self, token: str = PSP_TOKEN, psp: str | None = "acme") -> Any:
        """A control API client whose calls run inside A's namespace."""
        from pcsite_lite.control.client import ControlClient

        c = ControlClient("http://127.0.0.1:8080", token=token, psp=psp)
        ns = self.ns["a"]

        class InNs:
            def __getattr__(self, name: str) -> Any:
                fn = getattr(c, name)
                return lambda *a, **k: in_ns(ns, lambda: fn(*a, **k))

        return InNs()

    def raw_sender(self) -> socket.socket:
        return in_ns(
            self.ns["s"], lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        )

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        for ns in self.ns.values():
            for _ in range(20):
                if not os.path.exists(f"/run/netns/{ns}"):
                    break
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
                if os.path.exists(f"/run/netns/{ns}"):
                    time.sleep(0.1)
