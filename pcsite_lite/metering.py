"""Metering: the per-service, per-PSP usage counters that billing charges for (paper §2.5).

The pipeline keeps one :class:`Counters` per (psp, service) and the site snapshots them into
:class:`UsageRecord` rows per interval; ``pcsite_lite.billing`` stores and prices those rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

__all__ = ["Counters", "UsageRecord"]


@dataclass(slots=True)
class Counters:
    """Running usage of one service of one PSP at one site."""

    packets: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    cpu_ns: int = 0  #: CPU time spent in service code
    fis_reads: int = 0
    fis_writes: int = 0
    cache_bytes: int = 0  #: bytes written to the node-local cache
    log_lines: int = 0
    bytes_interdomain: int = 0  #: bytes forwarded to next hops outside the ISP's prefixes
    bytes_local: int = 0  #: bytes forwarded to next hops inside the ISP's prefixes
    drops: int = 0

    def add(self, other: Counters) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """Usage of one service over one metering interval, as a site reports it for billing."""

    site: str
    psp: str
    service: str
    interval_start: float  #: unix seconds
    interval_end: float  #: unix seconds
    counters: Counters = field(default_factory=Counters)
