"""The forwarding benchmark's topology: S -- A -- B -- D in namespaces, a site daemon on A.

Namespaces come from :mod:`testbed.netns` (names ``pcb<id><node>``, addresses in
198.18.0.0/15); work inside one (sockets, the control API, ``/proc/net`` counters) runs in a
short thread there (:func:`testbed.netns.call_in`). A is the device under test: plain kernel
forwarding, or ``pcsite run`` with a config the benchmark writes; B forwards in the kernel; D
receives. Everything is removed on exit, also after a failure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from testbed import netns

T = TypeVar("T")

ADMIN = "bench-admin-token-0123456789abcdef"
PSP = "acme"
PSP_TOKEN = "bench-acme-token-0123456789abcdef"


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


class SiteChain:
    """S - A - B - D; :meth:`start_site` runs the daemon on A."""

    S = "198.18.61.1"
    SITE = "198.18.64.1"  #: A's public (site) address
    D = "198.18.63.2"
    #: (node, address on the link towards the next node, next node's address on it)
    _LINKS = (("s", "a", "198.18.61.1", "198.18.61.2"), ("a", "b", "198.18.62.1", "198.18.62.2"),
              ("b", "d", "198.18.63.1", "198.18.63.2"))  # fmt: skip

    def __init__(self, tmp: Path) -> None:
        self.id = secrets.token_hex(2)
        self.tmp = tmp
        self.ns = {n: f"pcb{self.id}{n}" for n in "sabd"}
        self.site: subprocess.Popen[bytes] | None = None
        self.log = tmp / "site.log"

    def __enter__(self) -> SiteChain:
        with contextlib.ExitStack() as undo:
            undo.callback(self.close)  # a half-built chain is removed again
            self._build()
            undo.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, node: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a thread inside ``node``'s namespace."""
        return netns.call_in(self.ns[node], fn)

    def _build(self) -> None:
        for name in self.ns.values():
            netns.call_in(None, lambda name=name: netns.create(name))  # type: ignore[misc]
        for a, b, aaddr, baddr in self._LINKS:
            x, y = f"pcb{self.id}{a}{b}", f"pcb{self.id}{b}{a}"
            _ip("link", "add", x, "netns", self.ns[a], "type", "veth", "peer", "name", y,
                "netns", self.ns[b])  # fmt: skip
            for node, dev, addr in ((a, x, aaddr), (b, y, baddr)):
                _ip("-n", self.ns[node], "addr", "add", f"{addr}/24", "dev", dev)
                _ip("-n", self.ns[node], "link", "set", dev, "up")
        for node in self.ns:
            _ip("-n", self.ns[node], "link", "set", "lo", "up")
        n = self.ns
        _ip("-n", n["s"], "route", "add", "default", "via", "198.18.61.2")
        _ip("-n", n["a"], "route", "add", "198.18.63.0/24", "via", "198.18.62.2")
        _ip("-n", n["b"], "route", "add", "default", "via", "198.18.62.1")
        _ip("-n", n["d"], "route", "add", "default", "via", "198.18.63.1")
        for node in ("a", "b"):
            self.call(node, lambda: netns.write_sysctl("net/ipv4/ip_forward", "1"))

    # --- the daemon on A
    def site_config(self, workers: int, *, mode: str = "site", **dataplane: Any) -> str:
        state = self.tmp / "state"
        state.mkdir(exist_ok=True)
        bare = f'bare_next_hop = "{self.D}"' if mode == "bare" else ""
        dp = "\n".join(f"{k} = {_toml(v)}" for k, v in dataplane.items())
        return f"""
[site]
name = "bench-a"
public_ip = "{self.SITE}"
workers = {workers}
mode = "{mode}"
{bare}
state_dir = "{state}"
repository = "{state / "repo"}"

[dataplane]
tun_prefix = "pcbw"
{dp}

[services]
# the operator's trusted lane (docs/security.md): this benchmark measures the dataplane, so
# the source-routing service runs in the worker; benchmarks.isolation measures confinement
trusted = ["{PSP}/srcroute"]

[control]
listen = "127.0.0.1:8080"
admin_token = "{ADMIN}"

[control.psps.{PSP}]
token = "{PSP_TOKEN}"
signing_key = "{_public_hex()}"
"""

    def start_site(self, config: str, env: dict[str, str] | None = None) -> None:
        """Run ``pcsite run`` on A with ``config`` (TOML text) and ``env`` added."""
        assert self.site is None
        path = self.tmp / "site.toml"
        path.write_text(config)
        self.site = subprocess.Popen(
            ["ip", "netns", "exec", self.ns["a"], sys.executable, "-m", "pcsite_lite.cli",
             "run", "--config", str(path)],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            preexec_fn=_unpin,  # not the benchmark's own vCPU: the config pins the workers
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.site.poll() is not None:
                self.site = None
                raise RuntimeError(f"site exited: {self.log.read_text()}")
            if "site up" in self.log.read_text():
                return
            time.sleep(0.05)
        raise RuntimeError(f"site did not come up: {self.log.read_text()}")

    def stop_site(self) -> None:
        p, self.site = self.site, None
        if p is None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def client(self, admin: bool = False) -> Any:
        """The site's control API client (calls run inside A's namespace)."""
        from pcsite_lite.control.client import ControlClient

        c = ControlClient("http://127.0.0.1:8080", token=ADMIN if admin else PSP_TOKEN,
                          psp=None if admin else PSP)  # fmt: skip
        chain = self

        class InA:
            def __getattr__(self, name: str) -> Any:
                fn = getattr(c, name)
                return lambda *a, **k: chain.call("a", lambda: fn(*a, **k))

        return InA()

    def deploy_source_routing(self) -> None:
        """Upload (signed) and activate the shipped source-routing service as ``srcroute``."""
        from pcsite_lite.repository import sign_service
        from pcsite_lite.services import source

        code = source("source_routing").encode()
        c = self.client()
        c.upload_service("srcroute", "1", code, sign_service(_KEY, PSP, "srcroute", "1", code))
        c.activate_service("srcroute", "1")

    def close(self) -> None:
        try:
            self.stop_site()
        finally:
            for name in self.ns.values():
                netns.remove(name)


def _unpin() -> None:
    os.sched_setaffinity(0, range(os.cpu_count() or 1))


def _toml(v: Any) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v).lower() if isinstance(v, bool) else str(v)


def _make_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


_KEY = _make_key()


def _public_hex() -> str:
    from pcsite_lite.repository import public_key_bytes

    return public_key_bytes(_KEY).hex()
