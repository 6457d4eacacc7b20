"""StopIt-style filter management: the PSP control plane's side (pure, clock passed in).

A destination (an *owner* that proved it owns a prefix) asks to block the traffic of one source
towards one of its addresses for a while. The manager enforces what StopIt's control plane
enforces: an owner may only filter traffic *to its own prefixes*; each owner holds at most
``quota`` live filters (so one customer cannot exhaust the sites' filter memory); durations are
capped; filters expire on their own. The resulting FIS entries (``key -> {"until": t}``) are
what the service reads (:func:`.service.filter_key`); :meth:`FilterManager.expire` returns the
filters whose keys ``control.py`` deletes.

>>> m = FilterManager(quota=2)
>>> m.add_owner("google", ["198.19.0.0/24"])
>>> f = m.request("google", src="198.18.66.6", dst="198.19.0.80", duration=60, now=0.0)
>>> (f.key, f.until)
('stopit:198.18.66.6>198.19.0.80', 60.0)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from examples.errors import ReasonError

from .service import filter_key

__all__ = ["MAX_DURATION", "Filter", "FilterError", "FilterManager", "filter_key"]

#: Longest a filter may live, seconds (StopIt uses minutes; renew to keep blocking).
MAX_DURATION: Final = 3600.0


class FilterError(ReasonError):
    """A refused filter request; ``reason``: unknown_owner, not_owner, quota, bad_request."""


@dataclass(frozen=True, slots=True)
class Filter:
    owner: str
    src: str
    dst: str
    until: float

    @property
    def key(self) -> str:
        return filter_key(self.src, self.dst)


def _addr(a: str) -> str:
    try:
        return str(ipaddress.IPv4Address(a))
    except ValueError as exc:
        raise FilterError("bad_request", f"not an IPv4 address: {a!r}") from exc


class FilterManager:
    """Owners, their prefixes and their live filters."""

    def __init__(self, *, quota: int = 64, max_duration: float = MAX_DURATION) -> None:
        self.quota = quota
        self.max_duration = max_duration
        self._prefixes: dict[str, list[ipaddress.IPv4Network]] = {}
        self._filters: dict[str, Filter] = {}

    def add_owner(self, owner: str, prefixes: list[str]) -> None:
        """Record an owner's proven prefixes (after the DNSSEC sign-up)."""
        self._prefixes[owner] = [ipaddress.IPv4Network(p) for p in prefixes]

    def live(self, owner: str | None = None) -> list[Filter]:
        return [f for f in self._filters.values() if owner is None or f.owner == owner]

    def request(self, owner: str, *, src: str, dst: str, duration: float, now: float) -> Filter:
        """Install or renew the filter (src -> dst) for ``duration`` seconds from ``now``."""
        if owner not in self._prefixes:
            raise FilterError("unknown_owner", owner)
        if not duration > 0:
            raise FilterError("bad_request", "duration must be positive")
        s, d = _addr(src), _addr(dst)
        if not any(ipaddress.IPv4Address(d) in net for net in self._prefixes[owner]):
            raise FilterError("not_owner", f"{dst} is not in {owner}'s prefixes")
        self.expire(now)
        key = filter_key(s, d)
        existing = self._filters.get(key)
        if existing is not None and existing.owner != owner:
            raise FilterError("not_owner", "filter held by another owner")
        if existing is None and len(self.live(owner)) >= self.quota:
            raise FilterError("quota", f"{owner} holds {self.quota} filters")
        f = Filter(owner, s, d, now + min(duration, self.max_duration))
        self._filters[key] = f
        return f

    def cancel(self, owner: str, *, src: str, dst: str) -> Filter | None:
        key = filter_key(_addr(src), _addr(dst))
        f = self._filters.get(key)
        if f is None or f.owner != owner:
            return None
        return self._filters.pop(key)

    def expire(self, now: float) -> list[Filter]:
        """Remove and return the filters whose time is up."""
        gone = [f for f in self._filters.values() if f.until <= now]
        for f in gone:
            del self._filters[f.key]
        return gone
