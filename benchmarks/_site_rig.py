"""The live benchmarks' rigs: site daemons in line on a small testbed (:mod:`pcdemo.rig`).

* :class:`SiteRig`: sender S -- site A -- receiver D (``pcdemo/topologies/site-line1.toml``),
  ``pcsite run`` on A started at once, pinned to ``daemon_cpus`` while the caller's load
  generator runs on another vCPU (:func:`pin`), as the benchmark rules ask; the fault
  benchmarks (survival, metering_stop, fuzz_site) use it;
* :class:`SiteChain`: S -- A -- B -- D (``site-line2.toml``), B forwarding in the kernel and A
  the device under test: plain kernel forwarding, or ``pcsite run`` with a config the
  benchmark writes (:meth:`SiteChain.site_config`); benchmarks.site_forwarding uses it.

Namespaces are named ``pcr<run id>-<node>``/``pcb<run id>-<node>``, addresses in
198.18.0.0/15; everything is removed on exit, also after the daemon was SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

from pcdemo.rig import LINE1, LINE2, pin, render_toml
from pcdemo.rig import SiteRig as _Rig

__all__ = ["SiteChain", "SiteRig", "pin"]

T = TypeVar("T")
ADMIN = "bench-admin-token-0123456789abcdef"
PSP = "acme"
PSP_TOKEN = "bench-acme-token-0123456789abcdef"


def _make_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def _add_owned_prefix(rig: _Rig) -> None:
    rig.ip("D", "addr", "add", f"{SiteRig.OWNED_HOST}/24", "dev", "lo")
    rig.ip("A", "route", "add", SiteRig.OWNED, "via", SiteRig.D)


class SiteRig(_Rig):
    """S -- A -- D; the site daemon on A answers at :attr:`SITE`."""

    S = "198.18.91.2"
    SITE = "198.18.94.1"
    D = "198.18.92.2"
    OWNED = "198.18.95.0/24"  #: a prefix behind D (on D's loopback) a destination may own
    OWNED_HOST = "198.18.95.2"

    def __init__(self, tmp: Path, *, workers: int = 1, metering_interval: float = 0.5,
                 daemon_cpus: str = "1", trust_anchor: str | None = None) -> None:  # fmt: skip
        super().__init__(LINE1, tmp, prefix="pcr", admin_token=ADMIN, psp=PSP,
                         psp_token=PSP_TOKEN, setup=_add_owned_prefix)  # fmt: skip
        self.workers = workers
        self.metering_interval = metering_interval
        self.trust_anchor = trust_anchor  #: DS text enabling destination sign-up (form 3)
        self.daemon_cpus = daemon_cpus if (os.cpu_count() or 1) > 1 else "0"
        self.state = tmp / "state"
        self.ledger = self.state / "usage.ledger"
        self.config = tmp / "site-a.toml"

    def __enter__(self) -> Self:
        super().__enter__()
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    @property
    def proc(self) -> Any:
        """The daemon's process (None when stopped)."""
        return self.procs.get("a")

    @property
    def log(self) -> Path:
        return self.logs["a"]

    def in_ns(self, node: str, fn: Callable[[], T]) -> T:
        return self.call(node, fn)

    def start(self) -> None:
        self.state.mkdir(exist_ok=True)
        self.config.write_text(render_toml({
            "site": {"name": f"{self.id}-site", "public_ip": self.SITE, "workers": self.workers,
                     "state_dir": str(self.state)},
            "dataplane": {"tun_prefix": f"{self.id}w"},
            "metering": {"interval": self.metering_interval},
            "control": {"listen": "127.0.0.1:8080", "admin_token": ADMIN,
                        "trust_anchor": self.trust_anchor, "psps": {PSP: {"token": PSP_TOKEN}}},
        }))  # fmt: skip
        self.start_daemon("a", self.config, cpus=self.daemon_cpus)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        """Send ``sig`` to the daemon and wait for it (and its workers) to exit."""
        return self.stop_daemon("a", sig, timeout) if "a" in self.procs else None

    def raw_sender(self, node: str = "s") -> socket.socket:
        return super().raw_sender(node)

    def udp_receiver(self, port: int, addr: str = "0.0.0.0", *, node: str = "d",
                     rcvbuf: int | None = 8 << 20) -> socket.socket:  # fmt: skip
        return super().udp_receiver(port, addr, node=node, rcvbuf=rcvbuf)


class SiteChain(_Rig):
    """S - A - B - D; :meth:`start_site` runs the daemon on A."""

    S = "198.18.61.2"
    SITE = "198.18.64.1"  #: A's public (site) address
    D = "198.18.63.2"

    def __init__(self, tmp: Path) -> None:
        super().__init__(LINE2, tmp, prefix="pcb", admin_token=ADMIN, psp=PSP,
                         psp_token=PSP_TOKEN, psp_key=_make_key())  # fmt: skip

    def site_config(self, workers: int, *, mode: str = "site", **dataplane: Any) -> str:
        state = self.tmp / "state"
        state.mkdir(exist_ok=True)
        return render_toml({
            "site": {"name": "bench-a", "public_ip": self.SITE, "workers": workers,
                     "mode": mode, "bare_next_hop": self.D if mode == "bare" else None,
                     "state_dir": str(state), "repository": str(state / "repo")},
            "dataplane": {"tun_prefix": "pcbw", **dataplane},
            # the operator's trusted lane (docs/security.md): this benchmark measures the
            # dataplane, so the source-routing service runs in the worker;
            # benchmarks.isolation measures confinement
            "services": {"trusted": [f"{PSP}/srcroute"]},
            "control": {"listen": "127.0.0.1:8080", "admin_token": ADMIN,
                        "psps": {PSP: {"token": PSP_TOKEN, "signing_key": self.psp_public_hex()}}},
        })  # fmt: skip

    def start_site(self, config: str, env: dict[str, str] | None = None) -> None:
        """Run ``pcsite run`` on A with ``config`` (TOML text) and ``env`` added."""
        self.start_daemon("a", config, env=env)

    def stop_site(self) -> None:
        if "a" in self.procs:
            self.stop_daemon("a")
