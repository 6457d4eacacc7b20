"""A running testbed as an object: ``testbed.attach(run)`` for a run another process built.

``testbed up`` leaves a run up after it exits; its state (``/run/packetcloud-testbed/<run>``)
records the topology, the nodes' namespaces, the addresses and the DNS server's files. This
module turns that back into something to work with, from Python or the shell (``testbed dns``,
``testbed divert``, ``testbed exec``)::

    import testbed
    live = testbed.attach()                 # the only run up, or attach("pct3fa2")
    live.exec("D", ["ip", "-br", "addr"])   # a command in node D's namespace
    live.dns.set_zone("example.", text)     # add or replace a zone
    live.dns.publish_owner("198.18.64.0/24", "acme", "firewall", t0, t1)   # signed TXT
    print(live.dns.anchor_text("64.18.198.in-addr.arpa."))                 # its DS
    live.divert("R1", "198.18.64.0/24")     # the router step of form 3
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from testbed import netns, state
from testbed.router import divert_argv
from testbed.topology import Topology, from_dict

__all__ = ["LiveNode", "LiveTestbed", "attach"]

T = TypeVar("T")


class LiveNode:
    """A node of an attached run: its namespace, to run commands and Python in."""

    def __init__(self, run: state.Run, name: str) -> None:
        self.name = name
        self.ns = run.ns(name)

    def call(self, fn: Callable[[], T], timeout: float | None = 60.0) -> T:
        """Run ``fn`` inside the node's namespace (sockets it opens stay there)."""
        return netns.call_in(self.ns, fn, timeout=timeout)

    def run(
        self, argv: Sequence[str], check: bool = False, timeout: float | None = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the node's namespace; its exit code, stdout and stderr."""
        out = subprocess.run(
            ["nsenter", f"--net={netns.path(self.ns)}", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and out.returncode != 0:
            raise RuntimeError(
                f"{self.name}: {' '.join(argv)} exited {out.returncode}: {out.stderr.strip()}"
            )
        return out


class LiveTestbed:
    """A testbed run that is up (built by ``testbed up`` or another process)."""

    def __init__(self, run: state.Run) -> None:
        self.run_state = run
        self._dns: Any = None

    @property
    def run(self) -> str:
        return self.run_state.name

    @property
    def summary(self) -> dict[str, Any]:
        """What ``testbed inspect --json`` prints: nodes, addresses, links, processes."""
        return dict(self.run_state.data.get("summary") or {})

    @property
    def topology(self) -> Topology:
        data = self.run_state.data.get("topology_data")
        if not data:
            raise ValueError(f"run {self.run} recorded no topology")
        return from_dict(data, source=f"run {self.run}")

    def node(self, name: str) -> LiveNode:
        if not netns.exists(self.run_state.ns(name)):
            names = [n["name"] for n in self.summary.get("nodes", [])]
            raise KeyError(f"run {self.run} has no node {name!r} (nodes: {', '.join(names)})")
        return LiveNode(self.run_state, name)

    def exec(
        self, node: str, argv: Sequence[str], check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return self.node(node).run(argv, check=check)

    def divert(self, router: str, prefix: str, remove: bool = False) -> None:
        """Start (or stop) diverting destination ``prefix`` at ``router`` to its site."""
        if router not in self.summary.get("attachments", {}):
            raise KeyError(f"{router!r} has no co-located site")
        self.node(router).run(divert_argv(prefix, remove), check=True)

    @property
    def dns(self) -> Any:
        """The run's DNS server (a :class:`testbed.dns.DnsServer`), or None without one."""
        if self._dns is None:
            dns_dir = self.run_state.dir / "dns"
            names = [n["name"] for n in self.summary.get("nodes", []) if n.get("kind") == "dns"]
            if not names or not (dns_dir / "knot.conf").exists():
                return None
            from testbed.dns import DnsServer  # dnspython: only when needed

            self._dns = DnsServer.attach(self.node(names[0]), Path(dns_dir))  # type: ignore[arg-type]
        return self._dns


def attach(run: str | None = None) -> LiveTestbed:
    """The run named ``run``, or the only run that is up. Raises ``LookupError`` if there is
    no such run, none is up, or several are (then name one)."""
    if run:
        r = state.Run.load(run)
        if r.data.get("phase") != "up":
            raise LookupError(f"run {run} is {r.status}, not up")
        return LiveTestbed(r)
    runs = [r for r in state.list_runs() if r.data.get("phase") == "up"]
    if len(runs) == 1:
        return LiveTestbed(runs[0])
    if not runs:
        raise LookupError("no testbed is up (testbed up TOPOLOGY)")
    raise LookupError(f"several runs are up ({', '.join(r.name for r in runs)}): name one")
