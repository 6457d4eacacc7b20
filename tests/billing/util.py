"""Record builders shared by the billing tests."""

from __future__ import annotations

from pcsite_lite.metering import Counters, UsageRecord

T0 = 1_764_028_800.0  # 2025-11-25T00:00:00Z
DAY = 86_400.0


def rec(
    i: int,
    *,
    site: str = "site-a",
    psp: str = "acme",
    service: str = "mcast",
    step: float = 60.0,
    **counters: int,
) -> UsageRecord:
    """The usage record of interval number i (step seconds each, from T0)."""
    start = T0 + i * step
    return UsageRecord(site, psp, service, start, start + step, Counters(**counters))
