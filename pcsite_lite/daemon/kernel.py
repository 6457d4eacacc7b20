"""The kernel half of the site: the public IP, per-worker TUN routing and the nftables split.

The load balancer runs in the kernel so that no packet pays an extra Python hop:

* nftables (prerouting, mangle priority) computes ``jhash`` over the circuit label bits (form 1,
  IP-protocol and UDP encapsulation) or over source . destination (forms 2 and 3) ``mod B`` and
  maps the bucket through the named map ``buckets`` to a firewall mark;
* one policy-routing rule per worker sends that mark to a table whose default route is the
  worker's TUN device; the worker reads the packet, runs the pipeline and writes the result
  back into its TUN device, and the kernel routes it on (``iifname <tun>*`` is exempt from the
  split, and ``accept_local`` lets the site's own source address in).
* The ``local`` routing rule is moved from preference 0 to 100 so that the marks are seen
  before the public IP is claimed as local.

The bucket map is replaced in one nft transaction (:meth:`Kernel.set_buckets`), which is how a
crashed worker's buckets move to survivors. :meth:`Kernel.teardown` removes everything
:meth:`Kernel.setup` added (also after a crash of a previous run: setup first tears down).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from pcsock.wire import FORM_CIRCUIT, IPPROTO_PACKETCLOUD, UDP_PORT, VERSION

from .config import SiteConfig

__all__ = ["Kernel", "KernelError", "render_ruleset"]

_VF = VERSION << 4 | FORM_CIRCUIT  # 0x11: a form-1 shim's first byte
LOCAL_PREF_MOVED = 100


class KernelError(Exception):
    """A kernel configuration step failed (the message holds the command and its stderr)."""


def _run(args: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(list(args), input=stdin, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise KernelError(f"{' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def _rules() -> set[str]:
    """The current policy routing rules, one ``pref:\tselector`` line each."""
    return {line.strip() for line in _run(["ip", "rule", "show"], check=False).splitlines()}


def render_ruleset(cfg: SiteConfig, marks: Sequence[int]) -> str:
    """The nft script that (re)creates the site's table with ``marks[b]`` for bucket ``b``."""
    dp = cfg.dataplane
    t = dp.nft_table
    ip = cfg.public_ip
    b = dp.buckets
    m = f"mod {b} map @buckets accept"  # accept: the first matching rule decides
    flow = f"meta mark set jhash ip saddr . ip daddr {m}"
    pc = IPPROTO_PACKETCLOUD
    elements = ", ".join(f"{i} : {mark:#x}" for i, mark in enumerate(marks))
    return f"""table ip {t} {{
  map buckets {{ typeof numgen inc mod {b} : meta mark; }}
  set divert {{ type ipv4_addr; flags interval; }}
  chain pre {{
    type filter hook prerouting priority mangle; policy accept;
    iifname "{dp.tun_prefix}*" return
    ip daddr {ip} ip protocol {pc} @th,0,8 {_VF:#x} meta mark set jhash @th,32,32 {m}
    ip daddr {ip} udp dport {UDP_PORT} @th,64,8 {_VF:#x} meta mark set jhash @th,96,32 {m}
    ip daddr {ip} ip protocol {pc} {flow}
    ip daddr {ip} udp dport {UDP_PORT} {flow}
    ip dscp 0x2b ip protocol {pc} {flow}
    ip dscp 0x2b udp dport {UDP_PORT} {flow}
    ip daddr @divert {flow}
  }}
}}
add element ip {t} buckets {{ {elements} }}
"""


class Kernel:
    """Apply and remove the site's kernel state in the current network namespace."""

    def __init__(self, cfg: SiteConfig) -> None:
        self.cfg = cfg
        self._added_addr = False
        self._sysctl_saved: dict[str, str] = {}

    # --- helpers
    def mark(self, worker: int) -> int:
        return self.cfg.dataplane.mark_base + worker

    def table(self, worker: int) -> int:
        return self.cfg.dataplane.table_base + worker

    def _sysctl(self, path: str, value: str) -> None:
        p = Path("/proc/sys/net/ipv4") / path
        old = p.read_text().strip()
        if path not in self._sysctl_saved:
            self._sysctl_saved[path] = old
        if old != value:
            p.write_text(value)

    # --- lifecycle
    def setup(self, marks: Sequence[int]) -> None:
        """Claim the public IP, route marks to TUN devices (which must exist), load nft."""
        self.teardown(quiet=True)  # leftovers of a run that was killed
        cfg = self.cfg
        dp = cfg.dataplane
        if f" {cfg.public_ip}/" not in _run(["ip", "-4", "-o", "addr", "show"]):
            _run(["ip", "addr", "add", f"{cfg.public_ip}/32", "dev", cfg.public_dev])
            self._added_addr = True
        self._sysctl("ip_forward", "1")
        self._sysctl("conf/all/rp_filter", "0")
        for i in range(cfg.workers):
            dev = cfg.tun_name(i)
            v6 = Path(f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6")
            if v6.exists():  # before the link is up: no IPv6 chatter into the workers
                v6.write_text("1")
            # txqueuelen bounds the packets that wait in the TUN device for their worker
            _run(["ip", "link", "set", dev, "mtu", str(dp.mtu), "txqueuelen", str(dp.queue_len),
                  "up"])  # fmt: skip
            self._sysctl(f"conf/{dev}/rp_filter", "0")
            self._sysctl(f"conf/{dev}/accept_local", "1")
            _run(["ip", "route", "replace", "default", "dev", dev, "table", str(self.table(i))])
            _run(["ip", "rule", "add", "pref", str(dp.rule_pref + i), "fwmark",
                  f"{self.mark(i):#x}", "lookup", str(self.table(i))])  # fmt: skip
        rules = _rules()
        if f"{LOCAL_PREF_MOVED}:\tfrom all lookup local" not in rules:
            _run(["ip", "rule", "add", "pref", str(LOCAL_PREF_MOVED), "lookup", "local"])
        _run(["ip", "rule", "del", "pref", "0", "lookup", "local"], check=False)
        _run(["nft", "-f", "-"], stdin=render_ruleset(cfg, marks))

    def set_buckets(self, marks: Sequence[int]) -> None:
        """Atomically replace the bucket -> mark map."""
        t = self.cfg.dataplane.nft_table
        elements = ", ".join(f"{i} : {mark:#x}" for i, mark in enumerate(marks))
        script = f"flush map ip {t} buckets\nadd element ip {t} buckets {{ {elements} }}\n"
        _run(["nft", "-f", "-"], stdin=script)

    def set_divert(self, prefixes: Sequence[str]) -> None:
        """Replace the set of destination prefixes (form 3) diverted into the workers."""
        t = self.cfg.dataplane.nft_table
        script = f"flush set ip {t} divert\n"
        if prefixes:
            script += f"add element ip {t} divert {{ {', '.join(prefixes)} }}\n"
        _run(["nft", "-f", "-"], stdin=script)

    def teardown(self, *, quiet: bool = False) -> None:
        """Remove the nft table, rules, routes and address this site added; restore sysctls."""
        cfg = self.cfg
        dp = cfg.dataplane
        _run(["nft", "delete", "table", "ip", dp.nft_table], check=False)
        rules = _rules()
        if "0:\tfrom all lookup local" not in rules:
            _run(["ip", "rule", "add", "pref", "0", "lookup", "local"], check=False)
        if f"{LOCAL_PREF_MOVED}:\tfrom all lookup local" in rules:
            _run(["ip", "rule", "del", "pref", str(LOCAL_PREF_MOVED), "lookup", "local"],
                 check=False)  # fmt: skip
        for i in range(64):
            pref = dp.rule_pref + i
            ours = f"{pref}:\tfrom all fwmark {self.mark(i):#x} lookup {self.table(i)}" in rules
            if ours:
                _run(["ip", "rule", "del", "pref", str(pref)], check=False)
            if ours or i < cfg.workers:
                _run(["ip", "route", "flush", "table", str(self.table(i))], check=False)
        if self._added_addr:
            _run(["ip", "addr", "del", f"{cfg.public_ip}/32", "dev", cfg.public_dev], check=False)
            self._added_addr = False
        for path, old in self._sysctl_saved.items():
            p = Path("/proc/sys/net/ipv4") / path
            if p.exists():
                p.write_text(old)
        self._sysctl_saved.clear()
        del quiet
