"""Usage of a multi-machine site reaches the controller's ledger exactly once.

One implementation, two transports. Each compute node journals what its workers metered, one
numbered batch per metering interval (:class:`NodeJournal` over
:class:`~pcsite_lite.billing.cluster.NodeUsageLog`: SQLite, ``synchronous=FULL``; a batch is
*acknowledged* once it is in the journal, and a node killed with SIGKILL loses at most the
interval it had not yet journaled). The batches travel to the controller over the FIS engine
(a stream per node, :func:`~pcsite_lite.billing.cluster.push_batches`) or, without an engine,
in the node's reports on the TCP state feed (resent until billed). The controller's
:class:`Collector` bills them with :class:`~pcsite_lite.billing.cluster.ClusterCollector`: one
ledger transaction per round, each ``(node, seq)`` once, in sequence order; it then tells the
nodes how far it billed and they prune their journals to there.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Final

from pcsite_lite.billing.cluster import (
    ClusterCollector,
    CollectResult,
    NodeUsageLog,
    UsageBatch,
)
from pcsite_lite.billing.ledger import Ledger, LedgerError
from pcsite_lite.metering import UsageRecord

__all__ = ["Collector", "NodeJournal"]

MAX_INBOX: Final = 1000  #: batches held per node before they are billed (more: resent later)
MAX_REPORT_BYTES: Final = 512 * 1024  #: batches sent in one report over the TCP feed


class NodeJournal:
    """A compute node's numbered usage journal (``<state_dir>/usage-journal.db``)."""

    def __init__(self, path: str, node: str) -> None:
        self.log = NodeUsageLog(path, node)
        self.node = node
        self.billed = 0  #: how far the controller said it billed (pruned up to there)

    def sink(self, records: list[UsageRecord]) -> None:
        """The usage recorder's writer: one durable, numbered batch per metering interval."""
        try:
            self.log.append(records)
        except sqlite3.Error as exc:
            raise LedgerError(f"usage journal: {exc}") from None

    def unbilled(self, limit_bytes: int = MAX_REPORT_BYTES) -> list[str]:
        """The journal's batches past what was billed, as JSON, at most ``limit_bytes``."""
        out: list[str] = []
        size = 0
        for b in self.log.since(self.billed):
            text = b.to_json()
            if out and size + len(text) > limit_bytes:
                break
            out.append(text)
            size += len(text)
        return out

    def mark_billed(self, seq: int) -> None:
        if seq > self.billed:
            self.billed = seq
            self.log.prune(seq)

    def close(self) -> None:
        self.log.close()


class Collector:
    """The controller's side: batches offered by nodes (TCP) or gathered from the engine are
    billed into the site's ledger every round."""

    def __init__(self, ledger_path: str, site: str) -> None:
        self.ledger = Ledger(ledger_path, check_same_thread=False)
        self.collector = ClusterCollector(self.ledger, site)
        self._inbox: dict[str, dict[int, UsageBatch]] = {}
        self._lock = threading.Lock()
        self.refused: Counter[str] = Counter()  #: batches refused, by reason
        self.taken = 0  #: batches billed by this process
        self.last_seq: dict[str, int] = self.collector.last_seq()

    def offer(self, node: str, docs: Any, max_nodes: int = 256) -> None:
        """Batches a node sent (JSON texts); malformed or foreign ones are counted, not
        raised. Bounded: past :data:`MAX_INBOX` per node the rest waits on the node."""
        if not isinstance(docs, list):
            self.refused["malformed"] += 1
            return
        with self._lock:
            if node not in self._inbox and len(self._inbox) >= max_nodes:
                self.refused["too_many_nodes"] += 1
                return
            box = self._inbox.setdefault(node, {})
            for doc in docs:
                try:
                    b = UsageBatch.from_json(doc)
                except (LedgerError, TypeError):
                    self.refused["malformed"] += 1
                    continue
                if b.node != node:
                    self.refused["wrong_node"] += 1
                    continue
                if b.seq <= self.last_seq.get(node, 0) or b.seq in box:
                    continue  # billed, or already waiting
                if len(box) >= MAX_INBOX:
                    self.refused["inbox_full"] += 1
                    continue
                box[b.seq] = b

    def collect(self, more: Iterable[UsageBatch] = (), now: float | None = None) -> CollectResult:
        """One round: bill what was offered plus ``more`` (one ledger transaction)."""
        with self._lock:
            batches = [b for box in self._inbox.values() for b in box.values()]
        batches += list(more)
        t = time.time() if now is None else now
        prev = self.ledger.checkpoint(self.collector.checkpoint)
        if prev is not None and t <= float(prev[0]):
            t = float(prev[0]) + 1e-6  # a clock step backwards: rounds stay increasing
        result = self.collector.collect(batches, t)
        self.taken += result.taken
        with self._lock:
            self.last_seq = dict(result.last_seq)
            for node, box in self._inbox.items():
                done = self.last_seq.get(node, 0)
                for seq in [s for s in box if s <= done]:
                    del box[seq]
        return result

    async def run(
        self,
        interval: float,
        log: Callable[[str], None],
        gather: Callable[[dict[str, int]], list[UsageBatch]] | None = None,
        billed: Callable[[dict[str, int]], None] | None = None,
    ) -> None:
        """Collect every ``interval`` s until cancelled, then once more. ``gather(last_seq)``
        (on a thread) fetches batches past what was billed; ``billed(last_seq)`` tells the
        nodes (on a thread)."""
        import trio

        failing = ""

        def round_() -> None:
            more = gather(dict(self.last_seq)) if gather is not None else []
            result = self.collect(more)
            if result.last_seq and billed is not None:  # every round: a node may have missed it
                billed(result.last_seq)

        try:
            while True:
                try:
                    await trio.to_thread.run_sync(round_)
                    failing = ""
                except LedgerError as exc:
                    if str(exc) != failing:
                        log(f"usage collection: {exc} (retrying)")
                    failing = str(exc)
                await trio.sleep(interval)
        finally:
            with trio.CancelScope(shield=True):
                try:  # a last round: what the nodes sent as they stopped
                    await trio.to_thread.run_sync(round_)
                except Exception as exc:  # stopping anyway: say what was not billed
                    log(f"usage collection: last round failed: {type(exc).__name__}: {exc}")
            self.ledger.close()
