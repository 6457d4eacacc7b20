"""The namespace-testbed site for the examples of part 2 (built on ``examples.firewall``).

* :func:`main` runs ``examples.firewall.netsite`` (the real pipeline and sandboxed services in
  a testbed site's namespace) with two additions its config lacks: form-2 service IDs
  (``"service_ids": [{"id": n, "service": s, "redirect_prefixes": [...]}]``) and the
  services' wall-clock deadline per packet (``"deadline_ms"``, default the site's 10 ms).
* :class:`PacketSite` is the PSP's handle on such a site process: the
  ``examples.firewall.demo.NetSite`` calls (deploy, FIS writes, labels, circuits) plus a FIS
  file shared by a site pair, the ISP's writes and service IDs.
* :func:`raw_sender` and :func:`capture` are the demos' packet I/O inside a node's namespace.

Run (inside the site's namespace): ``python -m examples.encryption.netsite CONFIG.json``.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

from examples.firewall import netsite as base
from examples.firewall.netsite import NetSite
from pcdemo.example_testbed import Capture

__all__ = ["PacketSite", "capture", "main", "raw_sender"]

_build_site = base.build_site
SO_RCVBUFFORCE = 33  # Linux; not exported by the socket module


def build_site(cfg: dict[str, Any]) -> Any:
    site = _build_site(cfg)
    for r in cfg.get("service_ids", []):
        site.register_service_id(
            int(r["id"]), cfg["psp"], r["service"], redirect_prefixes=tuple(r["redirect_prefixes"])
        )
    return site


def main(argv: list[str] | None = None) -> int:
    import json

    from pcsite_lite.sandbox import BUDGET

    args = sys.argv[1:] if argv is None else argv
    deadline = json.loads(Path(args[0]).read_text()).get("deadline_ms")
    if deadline is not None:  # this process's budget (one site per process)
        BUDGET.max_ns = int(float(deadline) * 1e6)
    base.build_site = build_site
    return base.main(args)


class PacketSite(NetSite):
    """A site process in a testbed site (``fis``: a FIS file shared with another site)."""

    def __init__(
        self, tb: Any, site: str, psp: str, workdir: Path, *, fis: Path | None = None
    ) -> None:
        super().__init__(tb, site, psp, workdir)
        self.name = site
        if fis is not None:
            from pcsite_lite.fis import SqliteFIS

            self.fis.close()
            self.fis_path = fis
            self.fis = SqliteFIS(str(fis))
            self.config["fis"] = str(fis)

    def isp_lpm_put(self, table: str, prefix: str, value: Any) -> None:
        from pcsite_lite.fis import ISP

        self.fis.lpm_put(ISP, table, prefix, value, writer=ISP)

    def register_service_id(
        self, service_id: int, service: str, redirect_prefixes: list[str] | None = None
    ) -> None:
        self.config.setdefault("service_ids", []).append(
            {"id": service_id, "service": service, "redirect_prefixes": redirect_prefixes or []}
        )

    def start(self) -> None:
        cfg = base.write_config(self.workdir / f"{self.info.name}.json", self.config)
        self.process = self.tb.node(self.info.name).start(
            [sys.executable, "-m", "examples.encryption.netsite", str(cfg)],
            name="netsite",
            ready=lambda: "netsite up" in self.process_log(),
            timeout=20,
        )


def raw_sender(node: Any) -> socket.socket:
    """A raw IPv4 socket in ``node``'s namespace (send whole packets with ``sendto``)."""
    return node.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW))


def capture(tb: Any, node: str, peer: str) -> Capture:
    """IPv4 packets arriving at ``node`` on its interface toward ``peer`` (a 16 MiB receive
    buffer, so a demo can send its whole burst before draining)."""
    from pcdemo.example_testbed import iface

    cap = Capture.open(tb.node(node), iface(tb, node, peer))
    cap.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    return cap


if __name__ == "__main__":
    sys.exit(main())
