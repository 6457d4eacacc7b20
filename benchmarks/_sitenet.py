"""A one-site network for the daemon benchmarks: sender S -- site A -- receiver D.

Namespaces ``pcv<run id>{s,a,d}`` (addresses in 198.18.0.0/15) built with ``ip``; work inside
a namespace goes through :func:`testbed.netns.call_in`. A runs the real ``pcsite run``
(optionally pinned to CPUs with ``taskset``); everything is removed by :meth:`SiteNet.close`.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from testbed import netns

T = TypeVar("T")

ADMIN = "bench-admin-token-0123456789"
PSP = "bench-psp-token-0123456789ab"
SITE, S, D = "198.18.72.1", "198.18.71.1", "198.18.73.2"


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@contextmanager
def site_net(tmp: Path, *, workers: int = 2, cpus: str | None = None) -> Iterator[SiteNet]:
    """Build the network, yield it, and always remove it."""
    net = SiteNet(tmp, workers=workers, cpus=cpus)
    try:
        net.build()
        yield net
    finally:
        net.close()


class SiteNet:
    """S (198.18.71.1) -- A (site 198.18.72.1) -- D (198.18.73.2); use :func:`site_net`."""

    def __init__(self, tmp: Path, *, workers: int = 2, cpus: str | None = None) -> None:
        self.tmp = tmp
        self.id = secrets.token_hex(2)
        self.ns = {n: f"pcv{self.id}{n}" for n in "sad"}
        self.workers = workers
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None
        self.config = tmp / "site.toml"
        self.log = tmp / "site.log"
        from pcsock.ownership import ZoneKey

        self.root_key = ZoneKey.generate("in-addr.arpa.")  #: the site's DNSSEC trust anchor
        self.anchor_file = tmp / "anchor.ds"

    def ownership_proof(self, prefix: str, psp: str, service: str) -> str:
        """A proof, valid for an hour, that ``psp`` owns ``prefix`` for ``service``."""
        from pcsock.ownership import OwnershipClaim, ZoneKey, build_proof, reverse_zone

        now = time.time()
        zone = ZoneKey.generate(reverse_zone(prefix))
        claim = OwnershipClaim(prefix, psp, service, now - 60, now + 3600)
        proof = build_proof([claim], zone, chain=[self.root_key], inception=now - 60,
                            expiration=now + 3600)  # fmt: skip
        return str(proof)

    def build(self) -> None:
        for ns in self.ns.values():
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        for a, aaddr, b, baddr in (("s", "198.18.71.1/24", "a", "198.18.71.2/24"),
                                   ("a", "198.18.73.1/24", "d", "198.18.73.2/24")):  # fmt: skip
            x, y = f"pcv{self.id}{a}{b}", f"pcv{self.id}{b}{a}"
            _ip("link", "add", x, "netns", self.ns[a], "type", "veth", "peer", "name", y,
                "netns", self.ns[b])  # fmt: skip
            for ns, dev, addr in ((self.ns[a], x, aaddr), (self.ns[b], y, baddr)):
                _ip("-n", ns, "addr", "add", addr, "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", self.ns["s"], "route", "add", "default", "via", "198.18.71.2")
        _ip("-n", self.ns["d"], "route", "add", "default", "via", "198.18.73.1")
        self.anchor_file.write_text(self.root_key.ds_text())
        self.config.write_text(f"""
[site]
name = "bench-survival"
public_ip = "{SITE}"
workers = {self.workers}
state_dir = "{self.tmp / "state"}"

[dataplane]
tun_prefix = "pcvw"
restart_delay = 0.2

[control]
listen = "127.0.0.1:8080"
admin_token = "{ADMIN}"
trust_anchor_file = "{self.anchor_file}"

[control.psps.bench]
token = "{PSP}"
""")

    def call_in(self, which: str, fn: Callable[[], T]) -> T:
        return netns.call_in(self.ns[which], fn, timeout=None)

    def start(self, timeout: float = 30.0) -> float:
        """Run ``pcsite run`` in A (the same command every time); seconds until "site up"."""
        t0 = time.monotonic()
        cmd = ["ip", "netns", "exec", self.ns["a"]]
        if self.cpus:
            cmd += ["taskset", "-c", self.cpus]
        cmd += [sys.executable, "-m", "pcsite_lite.cli", "run", "--config", str(self.config)]
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"site exited: {self.log.read_text()[-2000:]}")
            if "site up" in self.log.read_text():
                return time.monotonic() - t0
            time.sleep(0.01)
        raise RuntimeError(f"site did not come up: {self.log.read_text()[-2000:]}")

    def kill(self) -> float:
        """SIGKILL the daemon; the monotonic time it was dead."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        return time.monotonic()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def client(self, psp: str | None = "bench") -> Any:
        """A control API client whose calls run inside A."""
        from pcsite_lite.control.client import ControlClient

        c = ControlClient("http://127.0.0.1:8080", token=PSP if psp else ADMIN, psp=psp)
        net = self

        class InA:
            def __getattr__(self, name: str) -> Any:
                fn = getattr(c, name)
                return lambda *a, **k: net.call_in("a", lambda: fn(*a, **k))

        return InA()

    def leftovers(self, running_workers: int) -> list[str]:
        from pcsite_lite.daemon.config import load
        from pcsite_lite.daemon.kernel import Kernel

        cfg = load(self.config)
        return self.call_in("a", lambda: Kernel(cfg).leftovers(running_workers=running_workers))

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        for ns in self.ns.values():
            for _ in range(20):
                if not netns.exists(ns):
                    break
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
                if netns.exists(ns):
                    time.sleep(0.1)
