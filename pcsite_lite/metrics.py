"""Site metrics in the Prometheus text exposition format (version 0.0.4).

Two sources: the dataplane (per worker: packets/bytes received and sent, drops by reason,
liveness) and metering (per PSP and service: the :class:`~pcsite_lite.metering.Counters`
fields). :class:`WorkerStats` is what a worker process reports; :func:`render` turns the
site's snapshot into text that ``GET /metrics`` on the control API serves.

>>> w = WorkerStats(rx_packets=3, rx_bytes=300, tx_packets=2, tx_bytes=200, drops={"bad_mac": 1})
>>> print(render({0: w}, {}, site="s1").splitlines()[2])
pcsite_rx_packets_total{site="s1",worker="0"} 3
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Final

from pcsite_lite.metering import Counters

__all__ = ["CONTENT_TYPE", "MetricFamily", "WorkerStats", "render"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(slots=True)
class WorkerStats:
    """Dataplane counters of one compute-node worker (monotonic while the worker lives)."""

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_errors: int = 0  #: sends the kernel refused (no route, buffer full)
    drops: dict[str, int] = field(default_factory=dict)  #: reason -> packets
    #: packets switched entirely in C (pcsite_lite.native), a subset of rx_packets
    native_packets: int = 0
    alive: bool = True
    restarts: int = 0

    def to_json(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> WorkerStats:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})  # type: ignore[arg-type]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


@dataclass(slots=True)
class MetricFamily:
    """One metric name with its help text, type and samples (labels -> value)."""

    name: str
    type: str  #: "counter" or "gauge"
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, labels: Mapping[str, str], value: float) -> None:
        self.samples.append((dict(labels), value))

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.type}"
        for labels, value in self.samples:
            v = int(value) if float(value).is_integer() else value
            yield f"{self.name}{_labels(labels)} {v}"


_COUNTER_HELP: Final[dict[str, str]] = {
    "packets": "Packets a service processed",
    "bytes_in": "Bytes a service received",
    "bytes_out": "Bytes a service sent on",
    "cpu_ns": "Nanoseconds of CPU time spent in service code",
    "fis_reads": "FIS reads by a service",
    "fis_writes": "FIS writes for a service",
    "cache_bytes": "Bytes a service wrote to node-local caches",
    "log_lines": "Log lines a service wrote",
    "bytes_interdomain": "Bytes a service forwarded to next hops outside the ISP",
    "bytes_local": "Bytes a service forwarded to next hops inside the ISP",
    "drops": "Packets of a service that were dropped",
}


def render(
    workers: Mapping[int, WorkerStats],
    usage: Mapping[tuple[str, str], Counters],
    *,
    site: str,
    gauges: Mapping[str, tuple[str, float]] | None = None,
    site_drops: Iterable[tuple[str, str, int]] = (),
) -> str:
    """The exposition text for the site ``site``.

    ``workers`` maps worker index -> stats, ``usage`` maps (psp, service) -> counters,
    ``gauges`` adds site gauges ``name -> (help, value)`` (names get a ``pcsite_`` prefix),
    ``site_drops`` adds site-wide drops ``(dev, reason, packets)`` to ``pcsite_drops_total``
    (labels ``site``, ``dev`` unless empty, ``reason``; see ``pcsite_lite.daemon.kstats``).
    """
    fams: list[MetricFamily] = []
    base = {"site": site}

    def fam(name: str, typ: str, help_: str) -> MetricFamily:
        f = MetricFamily(name, typ, help_)
        fams.append(f)
        return f

    rxp = fam("pcsite_rx_packets_total", "counter", "Packets a worker received from its queue")
    rxb = fam("pcsite_rx_bytes_total", "counter", "Bytes a worker received")
    txp = fam("pcsite_tx_packets_total", "counter", "Packets a worker sent on")
    txb = fam("pcsite_tx_bytes_total", "counter", "Bytes a worker sent on")
    txe = fam("pcsite_tx_errors_total", "counter", "Sends the kernel refused")
    nat = fam("pcsite_native_packets_total", "counter", "Packets a worker switched in C")
    drp = fam("pcsite_drops_total", "counter", "Packets dropped, by reason")
    alv = fam("pcsite_worker_up", "gauge", "1 if the worker process is alive")
    rst = fam("pcsite_worker_restarts_total", "counter", "Times the worker was restarted")
    for idx in sorted(workers):
        w = workers[idx]
        lb = {**base, "worker": str(idx)}
        rxp.add(lb, w.rx_packets)
        rxb.add(lb, w.rx_bytes)
        txp.add(lb, w.tx_packets)
        txb.add(lb, w.tx_bytes)
        txe.add(lb, w.tx_errors)
        nat.add(lb, w.native_packets)
        for reason in sorted(w.drops):
            drp.add({**lb, "reason": reason}, w.drops[reason])
        alv.add(lb, 1 if w.alive else 0)
        rst.add(lb, w.restarts)
    for dev, reason, packets in site_drops:
        drp.add({**base, **({"dev": dev} if dev else {}), "reason": reason}, packets)
    for name, help_ in _COUNTER_HELP.items():
        f = fam(f"pcsite_service_{name}_total", "counter", help_)
        for psp, service in sorted(usage):
            f.add({**base, "psp": psp, "service": service}, getattr(usage[(psp, service)], name))
    for name, (help_, value) in sorted((gauges or {}).items()):
        fam(f"pcsite_{name}", "gauge", help_).add(base, value)
    return "\n".join(line for f in fams for line in f.lines()) + "\n"
