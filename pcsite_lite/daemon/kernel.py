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
:meth:`Kernel.setup` added.

**Idempotent start.** A daemon killed with SIGKILL cannot clean up. What it changed that a
successor could not tell from the system's own state (whether it added the public address,
the sysctl values before it) is written to ``state_dir/kernel.json`` *before* the change is
made; :meth:`Kernel.clear_leftovers` (run first at every start, and by ``pcsite cleanup``)
reads it and removes the previous instance's nft table, fwmark rules, moved ``local`` rule,
routes, TUN devices and address, and restores the sysctls. Workers die with their supervisor
(``PR_SET_PDEATHSIG``), so the TUN devices they hold vanish with it.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from pcsock.wire import FORM_CIRCUIT, IPPROTO_PACKETCLOUD, UDP_PORT, VERSION

from .config import SiteConfig

__all__ = ["Kernel", "KernelError", "die_with_parent", "render_ruleset"]

_VF = VERSION << 4 | FORM_CIRCUIT  # 0x11: a form-1 shim's first byte
LOCAL_PREF_MOVED = 100
JOURNAL = "kernel.json"
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the worker still stops when its control socket closes


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
        self._journal = Path(cfg.state_dir) / JOURNAL

    # --- the journal of what only this instance knows it changed
    def _write_journal(self) -> None:
        doc = {"added_addr": self._added_addr, "sysctls": self._sysctl_saved}
        try:
            self._journal.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._journal.with_suffix(".tmp")
            with open(tmp, "w") as f:
                json.dump(doc, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._journal)
        except OSError as exc:
            raise KernelError(f"cannot write {self._journal}: {exc}") from exc

    def _read_journal(self) -> None:
        """Adopt what a previous instance recorded (it did not live to undo it)."""
        try:
            doc = json.loads(self._journal.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(doc, dict):
            return
        self._added_addr = self._added_addr or bool(doc.get("added_addr"))
        saved = doc.get("sysctls")
        if isinstance(saved, dict):
            for k, v in saved.items():
                if isinstance(k, str) and isinstance(v, str) and ".." not in k:
                    self._sysctl_saved.setdefault(k, v)

    def _stale_tuns(self) -> list[str]:
        """TUN devices named like this site's (``<tun_prefix><n>``) in this namespace."""
        pat = re.compile(rf"^{re.escape(self.cfg.dataplane.tun_prefix)}\d+$")
        out = []
        for line in _run(["ip", "-o", "-d", "link", "show"], check=False).splitlines():
            parts = line.split(":", 2)
            if len(parts) < 3:
                continue
            name = parts[1].strip().split("@")[0]
            if pat.match(name) and " tun type tun " in line:
                out.append(name)
        return out

    def clear_leftovers(self) -> list[str]:
        """Remove every kernel object a previous instance of this site left (SIGKILL, power
        loss of a machine without reboot, ...). Call before opening the TUN devices.
        Returns what was found (empty: nothing was left)."""
        found = self.leftovers()
        self._read_journal()
        for dev in self._stale_tuns():
            _run(["ip", "link", "del", dev], check=False)
        self.teardown(quiet=True)
        return found

    def leftovers(self, *, running_workers: int = 0) -> list[str]:
        """Kernel objects of this site beyond what ``running_workers`` workers need (0: a
        stopped site, which should have none)."""
        cfg = self.cfg
        dp = cfg.dataplane
        out: list[str] = []
        tables = _run(["nft", "list", "tables"], check=False).split()
        n_tables = sum(1 for i, w in enumerate(tables) if w == dp.nft_table and i >= 2
                       and tables[i - 2] == "table" and tables[i - 1] == "ip")  # fmt: skip
        if n_tables > (1 if running_workers else 0):
            out.append(f"nft table ip {dp.nft_table}")
        rules = _rules()
        listed = [line.strip() for line in _run(["ip", "rule", "show"], check=False).splitlines()]
        seen: set[int] = set()
        for r in listed:  # a list: a duplicated rule counts twice
            pref, _, sel = r.partition(":")
            if not pref.isdigit():
                continue
            i = int(pref) - dp.rule_pref
            if 0 <= i < 64 and f"fwmark {self.mark(i):#x} lookup {self.table(i)}" in sel:
                if i >= running_workers or i in seen:
                    out.append(f"rule {r}")
                seen.add(i)
        moved = f"{LOCAL_PREF_MOVED}:\tfrom all lookup local" in rules
        if moved != bool(running_workers):
            out.append("local rule at pref 100" if moved else "no local rule at pref 100")
        at0 = "0:\tfrom all lookup local" in rules
        if at0 == bool(running_workers):
            out.append("local rule at pref 0" if at0 else "no local rule at pref 0")
        for dev in self._stale_tuns():
            m = re.search(r"\d+$", dev)
            if m is None or int(m.group()) >= running_workers:
                out.append(f"TUN device {dev}")
        if not running_workers and self._journal.exists():
            out.append(f"journal {self._journal}")
        return out

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
            self._write_journal()  # before the change: a successor can undo it
        if old != value:
            p.write_text(value)

    # --- lifecycle
    def setup(self, marks: Sequence[int]) -> None:
        """Claim the public IP, route marks to TUN devices (which must exist), load nft."""
        self._read_journal()  # leftovers of a run that was killed (TUN devices: see
        self.teardown(quiet=True, keep_journal=True)  # clear_leftovers, before opening ours)
        cfg = self.cfg
        dp = cfg.dataplane
        self._write_journal()
        if f" {cfg.public_ip}/" not in _run(["ip", "-4", "-o", "addr", "show"]):
            self._added_addr = True
            self._write_journal()  # before the change: a successor removes the address
            _run(["ip", "addr", "add", f"{cfg.public_ip}/32", "dev", cfg.public_dev])
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

    def teardown(self, *, quiet: bool = False, keep_journal: bool = False) -> None:
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
        if not keep_journal:
            try:
                self._journal.unlink()
            except OSError:
                pass
        del quiet
