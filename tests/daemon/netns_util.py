"""Minimal namespace topology for the daemon tests (prefix "pcd" + a per-run id).

Sender S -- site A -- site B -- receiver D, each a network namespace; sites run the real
``pcsite run`` daemon. Work inside a namespace (sockets, control API calls) runs in a short
thread that ``setns``-es into it. Everything is removed in :meth:`Chain.close`.
"""

from __future__ import annotations

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
ADMIN = "isp-admin-token-0123456789"
PSP_TOKEN = "acme-token-0123456789abcdef"
OTHER_TOKEN = "evil-token-0123456789abcdef"


def _acme_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


ACME_KEY = _acme_key()


def sh(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def in_ns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread inside namespace ``ns``; return its result (or raise)."""
    return call_in(ns, fn, timeout=None)


def site_config(
    name: str, public_ip: str, workers: int, state: Path, fis: str | None = None, **extra: Any
) -> str:
    fis_line = f'fis = "{fis}"' if fis else ""
    repo_line = f'repository = "{state / "repo"}"' if extra.get("signing_key") else ""
    key_line = f'signing_key = "{extra["signing_key"]}"' if extra.get("signing_key") else ""
    anchor = extra.get("trust_anchor_file")
    anchor_line = f'trust_anchor_file = "{anchor}"' if anchor else ""
    return f"""
[site]
name = "{name}"
public_ip = "{public_ip}"
workers = {workers}
state_dir = "{state}"
{fis_line}
{repo_line}

[dataplane]
tun_prefix = "pcdw"
tx = "{extra.get("tx", "tun")}"
restart_delay = {extra.get("restart_delay", 0.3)}

[control]
listen = "127.0.0.1:8080"
admin_token = "{ADMIN}"
{anchor_line}

[control.psps.acme]
token = "{PSP_TOKEN}"
{key_line}

[control.psps.evil]
token = "{OTHER_TOKEN}"
"""


class Chain:
    """S - A - B - D with sites on A and B."""

    SITE_A = "198.18.64.1"
    SITE_B = "198.18.64.2"
    S = "198.18.61.1"
    D = "198.18.63.2"
    D2 = "198.18.65.2"  #: a second receiver behind B (for FIS-chosen out hops)

    def __init__(self, tmp: Path) -> None:
        self.id = secrets.token_hex(2)
        self.tmp = tmp
        self.ns = {n: f"pcd{self.id}{n}" for n in ("s", "a", "b", "d")}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self._links: list[str] = []

    def __enter__(self) -> Chain:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _veth(self, a: str, aaddr: str, b: str, baddr: str) -> None:
        x, y = f"pcd{self.id}{a}{b}", f"pcd{self.id}{b}{a}"
        sh("ip", "link", "add", x, "netns", self.ns[a], "type", "veth", "peer", "name", y,
           "netns", self.ns[b])  # fmt: skip
        for ns, dev, addr in ((self.ns[a], x, aaddr), (self.ns[b], y, baddr)):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")

    def _build(self) -> None:
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        self._veth("s", "198.18.61.1/24", "a", "198.18.61.2/24")
        self._veth("a", "198.18.62.1/24", "b", "198.18.62.2/24")
        self._veth("b", "198.18.63.1/24", "d", "198.18.63.2/24")
        sh("ip", "-n", self.ns["d"], "addr", "add", "198.18.65.2/24", "dev", "lo")
        n = self.ns
        sh("ip", "-n", n["s"], "route", "add", "default", "via", "198.18.61.2")
        sh("ip", "-n", n["a"], "route", "add", "198.18.64.2/32", "via", "198.18.62.2")
        sh("ip", "-n", n["a"], "route", "add", "198.18.63.0/24", "via", "198.18.62.2")
        sh("ip", "-n", n["a"], "route", "add", "198.18.65.0/24", "via", "198.18.62.2")
        sh("ip", "-n", n["b"], "route", "add", "default", "via", "198.18.62.1")
        sh("ip", "-n", n["b"], "route", "add", "198.18.65.0/24", "via", "198.18.63.2")
        sh("ip", "-n", n["d"], "route", "add", "default", "via", "198.18.63.1")

    def start_site(
        self,
        which: str,
        workers: int,
        fis: str | None = None,
        signing_key: str | None = None,
        trust_anchor_file: str | None = None,
        tx: str = "tun",
    ) -> None:
        """Start ``pcsite run`` for site ``which``; with ``signing_key`` (hex Ed25519 public
        key of PSP acme) the site gets a service repository."""
        ip = self.SITE_A if which == "a" else self.SITE_B
        state = self.tmp / f"state-{which}"
        state.mkdir(exist_ok=True)
        cfg = self.tmp / f"site-{which}.toml"
        cfg.write_text(
            site_config(
                f"site-{which}",
                ip,
                workers,
                state,
                fis,
                signing_key=signing_key,
                trust_anchor_file=trust_anchor_file,
                tx=tx,
            )
        )
        self.start_site_config(which, cfg)

    def start_site_config(self, which: str, cfg: Path) -> None:
        log = self.tmp / f"site-{which}.log"
        self.logs[which] = log
        self.procs[which] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns[which], sys.executable, "-m", "pcsite_lite.cli",
             "run", "--config", str(cfg)],
            stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.procs[which].poll() is not None:
                raise RuntimeError(f"site {which} exited: {log.read_text()}")
            if "site up" in log.read_text():
                return
            time.sleep(0.05)
        raise RuntimeError(f"site {which} did not come up: {log.read_text()}")

    def client(self, which: str, token: str = PSP_TOKEN, psp: str | None = "acme") -> Any:
        from pcsite_lite.control.client import ControlClient

        c = ControlClient("http://127.0.0.1:8080", token=token, psp=psp)
        ns = self.ns[which]

        class InNs:
            def __getattr__(self, name: str) -> Any:
                fn = getattr(c, name)
                return lambda *a, **k: in_ns(ns, lambda: fn(*a, **k))

        return InNs()

    def stop_site(self, which: str) -> int:
        p = self.procs.pop(which)
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.wait()

    def close(self) -> None:
        for which in list(self.procs):
            try:
                self.stop_site(which)
            except Exception:
                pass
        for ns in self.ns.values():
            for _ in range(20):
                if not os.path.exists(f"/run/netns/{ns}"):
                    break
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
                if os.path.exists(f"/run/netns/{ns}"):
                    time.sleep(0.1)

    # --- traffic
    def udp_receiver(self, port: int, addr: str = "0.0.0.0") -> socket.socket:
        def mk() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((addr, port))
            s.settimeout(0.2)
            return s

        return in_ns(self.ns["d"], mk)

    def raw_sender(self) -> socket.socket:
        def mk() -> socket.socket:
            return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

        return in_ns(self.ns["s"], mk)


def deploy_source_routing(client: Any) -> None:
    """Upload and activate the shipped source-routing service as acme's ``srcroute``."""
    from pcsite_lite.repository import sign_service
    from pcsite_lite.services import source

    code = source("source_routing").encode()
    client.upload_service(
        "srcroute", "1", code, sign_service(ACME_KEY, "acme", "srcroute", "1", code)
    )
    client.activate_service("srcroute", "1")


def acme_public_hex() -> str:
    from pcsite_lite.repository import public_key_bytes

    return public_key_bytes(ACME_KEY).hex()


def have_tools() -> bool:
    return all(shutil.which(t) for t in ("ip", "nft"))
