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
from typing import Any

from pcsite_lite.circuits import CircuitError, CircuitTable, OutHopEntry
from pcsock.lookup import LookupServiceError

__all__ = ["TableSiteControl"]


class TableSiteControl:
    """A site's :class:`pcsite_lite.circuits.CircuitTable` driven in process (simulator)."""

    def __init__(
        self, table: CircuitTable, *, psp: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.table = table
        self.psp = psp
        self.clock = clock

    def _call(self, fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except CircuitError as exc:
            raise LookupServiceError("site_refused", f"{exc.code}: {exc.detail}") from exc

    def allocate(self, service: str, lifetime: float) -> int:
        return int(self._call(self.table.allocate, self.psp, now=self.clock()))

    def install(
        self,
        label: int,
        *,
        service: str,
        in_key: bytes,
        out: tuple[int, str, bytes] | None,
        deliver: str | None,
        lifetime: float,
        destination: str | None = None,
    ) -> None:
        if out is not None:
            hops = [OutHopEntry(label=out[0], next_hop=out[1], key=out[2])]  # type: ignore[arg-type]
        else:
            assert deliver is not None
            hops = [OutHopEntry(label=0, next_hop=deliver, key=None, final=True)]
        now = self.clock()
        self._call(
            self.table.install, label, psp=self.psp, service=service, in_key=in_key,
            out_hops=hops, expires=now + lifetime, destination=destination or deliver, now=now,
        )  # fmt: skip

    def renew(self, label: int, lifetime: float) -> None:
        self._call(self.table.renew, label, psp=self.psp, expires=self.clock() + lifetime)

    def teardown(self, label: int) -> None:
        self._call(self.table.teardown, label, psp=self.psp)

    def ping(self) -> None:
        return None
