"""Drops the kernel counts on the site's behalf: TUN queues, network interfaces, sockets.

A worker counts every packet it reads and every verdict; what it cannot count is a packet the
kernel dropped before the worker saw it (the TUN queue of ``txqueuelen`` packets was full) or
after the worker wrote it (the kernel refused it on the TUN's receive path). Those, and the
drops of the site's network interfaces and sockets, are read from the kernel's own counters and
served in ``pcsite_drops_total`` with reasons of their own:

=============== ========================================== ==================================
reason          kernel counter                             where
=============== ========================================== ==================================
``tun_queue``   TUN ``tx_dropped`` (+ ``tx_errors``)        per worker: never reached it
``tun_out``     TUN ``rx_dropped`` (+ ``rx_errors``)        per worker: written, then dropped
``nic_rx``      ``rx_dropped``, ``rx_missed_errors``,       per interface (``dev`` label)
                ``rx_fifo_errors``, ``rx_over_errors``
``nic_tx``      ``tx_dropped``, ``tx_fifo_errors``          per interface (``dev`` label)
``socket_rcvbuf`` ``Udp: RcvbufErrors`` (/proc/net/snmp)    site
``socket_sndbuf`` ``Udp: SndbufErrors``                     site
``tx_error``    (the worker's ``tx_errors``)                per worker: a send the kernel refused
=============== ========================================== ==================================

so that, per worker, ``rx = tx + Σ drops`` holds once its queue has drained: the rendered
``rx_packets`` includes ``tun_queue`` (packets that reached the worker's queue) and the rendered
``tx_packets`` excludes ``tun_out`` (packets the kernel accepted). Interface and socket drops are
site-wide (labels ``site``, ``dev``, ``reason``); they count from the daemon's start (a baseline
is taken then), the TUN devices are the daemon's own and count from their creation.

The counters come from netlink (``ip -s -s -j link``) and ``/proc/net/snmp``, both of which
follow the calling process's network namespace (``/sys/class/net`` follows the namespace sysfs
was mounted in, which ``nsenter --net`` does not change).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pcsite_lite.metrics import WorkerStats

__all__ = ["KernelDrops", "Sample", "fold", "link_stats", "site_drops", "udp_socket_drops"]

#: reason -> (direction, stats64 fields summed)
_TUN: Final = {
    "tun_queue": ("tx", ("dropped", "errors")),
    "tun_out": ("rx", ("dropped", "errors")),
}
_NIC: Final = {
    "nic_rx": ("rx", ("dropped", "missed_errors", "fifo_errors", "over_errors")),
    "nic_tx": ("tx", ("dropped", "fifo_errors")),
}
_SNMP: Final = {"socket_rcvbuf": "RcvbufErrors", "socket_sndbuf": "SndbufErrors"}

Stats = dict[str, dict[str, int]]  #: "rx"/"tx" -> counter -> value


def link_stats() -> dict[str, Stats]:
    """``ifname -> stats64`` of every interface in this network namespace (netlink via ip)."""
    try:
        proc = subprocess.run(
            ["ip", "-s", "-s", "-j", "link", "show"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return {}  # the metrics then lack the kernel's drops rather than fail
    if proc.returncode != 0:
        return {}
    try:
        doc = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        return {}
    return {d["ifname"]: d.get("stats64", {}) for d in doc if "ifname" in d}


def udp_socket_drops(text: str | None = None) -> dict[str, int]:
    """``reason -> count`` of UDP socket buffer drops from ``/proc/net/snmp`` (this netns)."""
    if text is None:
        try:
            text = Path("/proc/net/snmp").read_text()
        except OSError:
            return {}
    rows = [ln.split() for ln in text.splitlines() if ln.startswith("Udp:")]
    if len(rows) < 2:
        return {}
    fields = dict(zip(rows[0][1:], rows[1][1:], strict=False))
    return {reason: int(fields.get(name, 0)) for reason, name in _SNMP.items()}


def _sum(stats: Stats, spec: tuple[str, tuple[str, ...]]) -> int:
    direction, names = spec
    d = stats.get(direction, {})
    return sum(int(d.get(n, 0)) for n in names)


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading: per-worker TUN drops and site-wide (dev, reason) drops."""

    workers: dict[int, dict[str, int]]
    site: dict[tuple[str, str], int]  #: (dev or "", reason) -> packets


class KernelDrops:
    """The kernel's drop counters for one site, relative to its start.

    ``tuns`` maps worker index -> TUN device name. Every other non-loopback interface in the
    namespace counts as one of the site's interfaces.
    """

    def __init__(self, tuns: Mapping[int, str]) -> None:
        self.tuns = dict(tuns)
        self._base: dict[tuple[str, str], int] = {}
        self._last: dict[tuple[str, str], int] = {}  #: kept when a device disappears
        self._base = self._site_raw(link_stats(), udp_socket_drops())

    def _site_raw(self, links: Mapping[str, Stats], snmp: Mapping[str, int]) -> dict:
        own = set(self.tuns.values())
        out: dict[tuple[str, str], int] = {}
        for dev, st in links.items():
            if dev == "lo" or dev in own:
                continue
            for reason, spec in _NIC.items():
                out[(dev, reason)] = _sum(st, spec)
        for reason, v in snmp.items():
            out[("", reason)] = v
        return out

    def sample(self) -> Sample:
        links = link_stats()
        workers = {
            i: {reason: _sum(links.get(dev, {}), spec) for reason, spec in _TUN.items()}
            for i, dev in self.tuns.items()
        }
        raw = self._site_raw(links, udp_socket_drops())
        for key, v in raw.items():
            self._last[key] = max(0, v - self._base.get(key, 0))
        return Sample(workers, dict(self._last))


def fold(stats: WorkerStats, kernel: Mapping[str, int]) -> WorkerStats:
    """``stats`` with a worker's TUN drops folded in (see the module docstring)."""
    drops = dict(stats.drops)
    if stats.tx_errors:  # a Forward the kernel refused: dropped after the worker's verdict
        drops["tx_error"] = drops.get("tx_error", 0) + stats.tx_errors
    for reason, v in kernel.items():
        if v:
            drops[reason] = drops.get(reason, 0) + v
    return WorkerStats(
        rx_packets=stats.rx_packets + kernel.get("tun_queue", 0),
        rx_bytes=stats.rx_bytes,
        tx_packets=max(0, stats.tx_packets - kernel.get("tun_out", 0)),
        tx_bytes=stats.tx_bytes,
        tx_errors=stats.tx_errors,
        native_packets=stats.native_packets,
        drops=drops,
        alive=stats.alive,
        restarts=stats.restarts,
    )


def site_drops(sample: Sample) -> list[tuple[str, str, int]]:
    """``(dev, reason, packets)`` of the site-wide drops, sorted (dev "" for sockets)."""
    return sorted((dev, reason, v) for (dev, reason), v in sample.site.items())
