"""A site's circuit table as the PSP's lookup service sees a site, in process.

:class:`pcsock.lookup.CircuitBroker` reaches a real site through its control API
(:class:`pcsock.lookup.HttpSiteControl`); :class:`TableSiteControl` gives it a
:class:`~pcsite_lite.circuits.CircuitTable` in the same process instead (the simulator, the
demo's simulated world, tests and benchmarks). Refusals surface as the lookup service's
``site_refused`` error, as the control API's do.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pcsite_lite.circuits import CircuitError, CircuitTable, OutHopEntry
from pcsock.lookup import HopSetup, site_refusals

__all__ = ["TableSiteControl"]


class TableSiteControl:
    """A site's :class:`pcsite_lite.circuits.CircuitTable` driven in process (simulator)."""

    def __init__(
        self, table: CircuitTable, *, psp: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.table = table
        self.psp = psp
        self.clock = clock

    _call = site_refusals(CircuitError, lambda exc: f"{exc.code}: {exc.detail}")

    def allocate(self, service: str, lifetime: float) -> int:
        return int(self._call(self.table.allocate, self.psp, now=self.clock()))

    def install(self, label: int, hop: HopSetup) -> None:
        if hop.out is not None:
            label_out, next_hop, key = hop.out
            hops = [OutHopEntry(label=label_out, next_hop=next_hop, key=key)]  # type: ignore[arg-type]
        else:
            assert hop.deliver is not None
            hops = [OutHopEntry(label=0, next_hop=hop.deliver, key=None, final=True)]
        now = self.clock()
        self._call(
            self.table.install, label, psp=self.psp, service=hop.service, in_key=hop.in_key,
            out_hops=hops, expires=now + hop.lifetime,
            destination=hop.destination or hop.deliver, now=now,
        )  # fmt: skip

    def renew(self, label: int, lifetime: float) -> None:
        self._call(self.table.renew, label, psp=self.psp, expires=self.clock() + lifetime)

    def teardown(self, label: int) -> None:
        self._call(self.table.teardown, label, psp=self.psp)

    def ping(self) -> None:
        return None
