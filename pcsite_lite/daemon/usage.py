"""Metered usage made durable where it is counted: the daemon's own usage ledger.

The workers report their cumulative per-(PSP, service) counters to the supervisor every
:data:`~pcsite_lite.daemon.worker.STATS_INTERVAL` seconds; the supervisor's
:class:`UsageRecorder` appends, every ``metering.interval`` seconds (default 0.5), the increase
since its previous append as one :class:`~pcsite_lite.metering.UsageRecord` per (PSP, service)
over ``[previous append, now)`` to a SQLite ledger (:class:`~pcsite_lite.billing.ledger.Ledger`,
WAL, ``synchronous=FULL``) in the site's state directory. On SIGTERM the workers send a last
report as they stop and the recorder appends once more before the daemon exits, so a clean stop
loses nothing; SIGKILL of the daemon loses at most one interval plus one worker report interval.

The recorder is the only writer. Each append covers an interval that starts where the previous
one ended (a restarted daemon starts a new interval at its start, its counters from zero), so
record ids (site, psp, service, interval start) never repeat, and the ledger's records are in
the order of their interval starts. Collection is then an idempotent export
(``GET /v1/isp/usage/{since}``, :func:`export_since`): ``pcbill collect`` imports every record
whose interval starts at or after the last one it has, and importing a record twice is a no-op.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pcsite_lite.billing.ledger import Ledger, LedgerError
from pcsite_lite.metering import Counters, UsageRecord
from pcsite_lite.metrics import WorkerStats

__all__ = ["UsageRecorder", "drain_reports", "export_since", "totals"]

Key = tuple[str, str]  #: (psp, service)
MAX_BATCH = 10_000  #: records per ledger transaction


def totals(per_worker: list[dict[str, dict[str, int]]]) -> dict[Key, Counters]:
    """Sum the workers' ``"psp/service" -> counters`` documents per (psp, service)."""
    out: dict[Key, Counters] = {}
    for doc in per_worker:
        for name, fields in doc.items():
            psp, _, service = name.partition("/")
            c = out.setdefault((psp, service), Counters())
            c.add(Counters(**{k: int(v) for k, v in fields.items() if k in Counters.__slots__}))
    return out


class UsageRecorder:
    """Appends a site's metered usage to its ledger (see the module docstring).

    ``usage()`` returns the site's cumulative counters (monotonic for the life of the daemon).
    :meth:`take` runs on the caller's thread (it reads the supervisor's state), :meth:`write`
    may run on another thread (one at a time).
    """

    def __init__(
        self,
        site: str,
        path: str | os.PathLike[str],
        usage: Callable[[], Mapping[Key, Counters]],
        *,
        clock: Callable[[], float] = time.time,
        sink: Callable[[list[UsageRecord]], object] | None = None,
    ) -> None:
        """``sink(records)``: where :meth:`write` puts records durably instead of the ledger
        at ``path`` (a compute node's numbered journal,
        :class:`~pcsite_lite.billing.cluster.NodeUsageLog`); it must raise
        :class:`LedgerError` (records stay queued) or have stored them."""
        self.site = site
        self.path = Path(path)
        self._sink = sink
        self.ledger = Ledger(self.path, check_same_thread=False) if sink is None else None
        self._usage = usage
        self._clock = clock
        self._start = clock()
        self._base: dict[Key, Counters] = {}
        self.pending: list[UsageRecord] = []  #: taken, not yet durable
        self.appended = 0  #: records appended by this recorder

    def take(self) -> None:
        """Queue the records of the usage since the previous take (the interval restarts)."""
        now = self._clock()
        if now <= self._start:  # a clock step backwards: keep intervals increasing
            now = self._start + 1e-6
        current = {k: Counters(**c.as_dict()) for k, c in self._usage().items()}
        records = []
        for (psp, service), c in sorted(current.items()):
            before = self._base.get((psp, service), Counters())
            delta = Counters(**{f: max(0, v - getattr(before, f)) for f, v in c.as_dict().items()})
            if any(delta.as_dict().values()):
                records.append(UsageRecord(self.site, psp, service, self._start, now, delta))
        self._base = current
        self._start = now
        self.pending.extend(records)

    def write(self) -> int:
        """Append the queued records durably (returns once SQLite has synced them); how many.

        On a ledger error the records stay queued for the next write.
        """
        batch = self.pending[:MAX_BATCH]
        if batch:
            if self._sink is not None:
                self._sink(batch)
            else:
                assert self.ledger is not None
                self.ledger.append_many(batch)
            del self.pending[: len(batch)]
            self.appended += len(batch)
        return len(batch)

    def flush(self) -> int:
        """Take and write everything on this thread; how many records were appended."""
        self.take()
        n = 0
        while self.pending:
            n += self.write()
        return n

    async def run(self, interval: float, log: Callable[[str], None]) -> None:
        """Take every ``interval`` seconds, write on a thread (never two writes at once)."""
        import trio

        limiter = trio.CapacityLimiter(1)
        failing = False
        while True:
            await trio.sleep(interval)
            self.take()
            try:
                await trio.to_thread.run_sync(self.write, limiter=limiter)
            except LedgerError as exc:
                if not failing:
                    log(f"usage ledger {self.path}: {exc} (usage kept in memory, retrying)")
                failing = True
            else:
                if failing:
                    log(f"usage ledger {self.path}: writing again")
                failing = False

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()


def export_since(path: str | os.PathLike[str], since: float) -> str:
    """The canonical export (JSON lines) of the ledger's records starting at ``since`` or later."""
    with Ledger(path, create=False) as led:
        return led.export(start=since).decode()


def drain_reports(sock: socket.socket | None) -> tuple[WorkerStats | None, dict[str, Any] | None]:
    """The last stats report a stopped worker left queued on its control socket, if any."""
    stats = usage = None
    if sock is None:
        return None, None
    sock.setblocking(False)
    while True:
        try:
            msg = sock.recv(1 << 20)
        except (BlockingIOError, OSError):
            break
        if not msg:
            break
        try:
            doc = json.loads(msg)
        except ValueError:
            continue
        if isinstance(doc, dict) and "stats" in doc:
            stats = WorkerStats.from_json(doc["worker"])
            usage = doc.get("usage") or {}
    return stats, usage
