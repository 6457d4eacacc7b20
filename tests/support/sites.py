"""Site daemons in line on a small testbed, for the live tests (:mod:`pcdemo.rig`).

* :class:`Chain`: S -- A -- B -- D (``pcdemo/topologies/site-line2.toml``, namespaces
  ``pcd<run id>-<node>``), daemons started per test on A and/or B (:meth:`Chain.start_site`);
* :class:`LiveSite`: S -- A -- D (``site-line1.toml``, ``pcb<run id>-<node>``), a daemon on
  A started at once, in an ISP whose prefixes are :attr:`LiveSite.ISP_PREFIXES`.

Also the tests' ISP and PSP tokens and acme's signing key. Work inside a namespace runs in a
short thread there (:func:`in_ns`, :func:`testbed.netns.call_in`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pcdemo.rig import LINE1, LINE2, SiteRig, render_toml
from testbed.netns import call_in

__all__ = ["ACME_KEY", "ADMIN", "OTHER_TOKEN", "PSP_TOKEN", "Chain", "LiveSite", "acme_public_hex",
           "deploy_source_routing", "have_tools", "in_ns", "site_config"]  # fmt: skip

T = TypeVar("T")
ADMIN = "isp-admin-token-0123456789"
PSP_TOKEN = "acme-token-0123456789abcdef"
OTHER_TOKEN = "evil-token-0123456789abcdef"
ACME_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def have_tools() -> bool:
    return all(shutil.which(t) for t in ("ip", "nft")) and os.path.exists("/dev/net/tun")


def in_ns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread inside namespace ``ns``; return its result (or raise)."""
    return call_in(ns, fn, timeout=None)


def acme_public_hex() -> str:
    from pcsite_lite.repository import public_key_bytes

    return public_key_bytes(ACME_KEY).hex()


def deploy_source_routing(client: Any) -> None:
    """Upload and activate the shipped source-routing service as acme's ``srcroute``."""
    from pcsite_lite.repository import sign_service
    from pcsite_lite.services import source

    code = source("source_routing").encode()
    client.upload_service(
        "srcroute", "1", code, sign_service(ACME_KEY, "acme", "srcroute", "1", code)
    )
    client.activate_service("srcroute", "1")


def site_config(name: str, public_ip: str, workers: int, state: Path, fis: str | None = None,
                **extra: Any) -> str:  # fmt: skip
    """A site config as the tests' daemons run it: control API on 127.0.0.1:8080, PSPs acme
    (``signing_key``: with a service repository) and evil. ``extra``: ``signing_key``,
    ``trust_anchor_file``, ``tx``, ``restart_delay``, ``isp_prefixes``, ``tun_prefix``,
    ``metering_interval``."""
    key = extra.get("signing_key")
    metering = extra.get("metering_interval")
    doc: dict[str, Any] = {
        "site": {"name": name, "public_ip": public_ip, "workers": workers,
                 "state_dir": str(state), "fis": fis,
                 "repository": str(state / "repo") if key else None,
                 "isp_prefixes": extra.get("isp_prefixes")},
        "dataplane": {"tun_prefix": extra.get("tun_prefix", "pcdw"), "tx": extra.get("tx", "tun"),
                      "restart_delay": extra.get("restart_delay", 0.3)},
        "control": {"listen": "127.0.0.1:8080", "admin_token": ADMIN,
                    "trust_anchor_file": extra.get("trust_anchor_file"),
                    "psps": {"acme": {"token": PSP_TOKEN, "signing_key": key},
                             "evil": {"token": OTHER_TOKEN}}},
    }  # fmt: skip
    if metering is not None:
        doc["metering"] = {"interval": metering}
    return render_toml(doc)


class Chain(SiteRig):
    """S - A - B - D with sites on A and B (A and B forward in the kernel otherwise)."""

    SITE_A = "198.18.64.1"
    SITE_B = "198.18.64.2"
    S = "198.18.61.2"
    D = "198.18.63.2"
    D2 = "198.18.65.2"  #: a second receiver behind B (for FIS-chosen out hops)

    def __init__(self, tmp: Path) -> None:
        super().__init__(LINE2, tmp, prefix="pcd", admin_token=ADMIN, psp="acme",
                         psp_token=PSP_TOKEN, psp_key=ACME_KEY, setup=_chain_routes)  # fmt: skip

    def start_site(self, which: str, workers: int, fis: str | None = None,
                   signing_key: str | None = None, trust_anchor_file: str | None = None,
                   tx: str = "tun") -> None:  # fmt: skip
        """Start ``pcsite run`` for site ``which``; with ``signing_key`` (hex Ed25519 public
        key of PSP acme) the site gets a service repository."""
        state = self.tmp / f"state-{which}"
        state.mkdir(exist_ok=True)
        ip = self.SITE_A if which == "a" else self.SITE_B
        self.start_daemon(which, site_config(f"site-{which}", ip, workers, state, fis,
                                             signing_key=signing_key, tx=tx,
                                             trust_anchor_file=trust_anchor_file))  # fmt: skip

    def start_site_config(self, which: str, cfg: Path) -> None:
        self.start_daemon(which, cfg)

    def stop_site(self, which: str) -> int:
        return self.stop_daemon(which)


def _chain_routes(ch: SiteRig) -> None:
    """The sites' public IPs and D's second address (on its loopback) are routed too."""
    ch.ip("A", "route", "add", f"{Chain.SITE_B}/32", "via", ch.address("B", "A"))
    ch.ip("B", "route", "add", f"{Chain.SITE_A}/32", "via", ch.address("A", "B"))
    ch.ip("D", "addr", "add", f"{Chain.D2}/24", "dev", "lo")
    for node, via in (("A", ch.address("B", "A")), ("B", Chain.D)):
        ch.ip(node, "route", "add", "198.18.65.0/24", "via", via)


class LiveSite(SiteRig):
    """S -- A -- D; the site daemon on A (public IP :attr:`SITE`)."""

    S = "198.18.91.2"
    SITE = "198.18.94.1"
    D = "198.18.92.2"
    FAR = "198.19.85.2"  #: another ISP's site, behind D (outside ISP_PREFIXES)
    ISP_PREFIXES = ("198.18.0.0/16",)  #: the site's ISP: S, A, D are inside

    def __init__(self, tmp: Path, workers: int = 2) -> None:
        super().__init__(LINE1, tmp, prefix="pcb", admin_token=ADMIN, psp="acme",
                         psp_token=PSP_TOKEN, psp_key=ACME_KEY, setup=_far_site)  # fmt: skip
        self.workers = workers

    def __enter__(self) -> Self:
        super().__enter__()
        try:
            state = self.tmp / "state"
            state.mkdir(exist_ok=True)
            self.start_daemon("a", site_config(f"{self.id}-site", self.SITE, self.workers, state,
                                               isp_prefixes=list(self.ISP_PREFIXES),
                                               tun_prefix=f"{self.id}w"))  # fmt: skip
        except BaseException:
            self.close()
            raise
        return self

    @property
    def log(self) -> Path:
        return self.logs["a"]


def _far_site(site: SiteRig) -> None:
    site.ip("D", "addr", "add", f"{LiveSite.FAR}/24", "dev", "lo")
    site.ip("A", "route", "add", "198.19.85.0/24", "via", LiveSite.D)
