"""Usage of a site that spans machines: every node's usage reaches the ledger exactly once.

Each compute node meters its own packets. It appends what it counted, one metering interval
at a time, to a durable outbox (:class:`NodeUsageLog`) as a numbered *batch*
(:class:`UsageBatch`: node, sequence number, records). The controller's
:class:`ClusterCollector` takes batches from every node (``fetch(node, after_seq)``: over the
FIS engine with :func:`push_batches` / :func:`fetch_batches`, or any other transport) and, in one
ledger transaction, appends their sum per (psp, service) as the site's records for the collection
round ``[previous round, now)`` together with a checkpoint holding, per node, the last sequence
number it took. So:

* a batch delivered twice, or fetched again after a collector crash, is recognised by its
  ``(node, seq)`` and ignored: usage is billed once;
* a batch that arrives past a gap (``seq`` > last + 1) is left for a later round, so nothing is
  skipped: the node's sequence is collected in order;
* invoices conserve bytes exactly across nodes: the site's records are sums of the nodes'.

The site's records cover collection rounds, not the nodes' metering intervals (nodes' intervals
are not aligned, and two nodes' records for one (psp, service) would collide on the ledger's
record id): usage is billed in the round that collected it; the nodes' own intervals stay in
their outboxes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pcsite_lite.billing.ledger import Ledger, LedgerError
from pcsite_lite.fis import FISUnavailableError
from pcsite_lite.metering import Counters, UsageRecord

__all__ = [
    "ClusterCollector",
    "CollectResult",
    "NodeUsageLog",
    "UsageBatch",
    "fetch_batches",
    "push_batches",
]

MAX_BATCHES: Final = 1000  #: batches one fetch returns at most
MAX_RECORDS: Final = 10_000  #: records in one batch at most
_COUNTERS: Final = tuple(Counters.__slots__)


def _record_doc(r: UsageRecord) -> dict[str, Any]:
    return {"site": r.site, "psp": r.psp, "service": r.service,
            "start": r.interval_start, "end": r.interval_end,
            "counters": r.counters.as_dict()}  # fmt: skip


def _record(doc: dict[str, Any]) -> UsageRecord:
    c = doc["counters"]
    if not isinstance(c, dict) or not set(c) <= set(_COUNTERS):
        raise LedgerError(f"usage batch: unknown counters {sorted(set(c) - set(_COUNTERS))}")
    for v in c.values():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise LedgerError("usage batch: counters must be integers >= 0")
    return UsageRecord(
        str(doc["site"]), str(doc["psp"]), str(doc["service"]),
        float(doc["start"]), float(doc["end"]), Counters(**c),
    )  # fmt: skip


@dataclass(frozen=True)
class UsageBatch:
    """What one node metered over one of its intervals, numbered ``seq`` (1, 2, ...)."""

    node: str
    seq: int
    records: tuple[UsageRecord, ...]

    def to_json(self) -> str:
        doc = {"node": self.node, "seq": self.seq,
               "records": [_record_doc(r) for r in self.records]}  # fmt: skip
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> UsageBatch:
        """Parse a batch; :class:`LedgerError` for anything malformed."""
        try:
            doc = json.loads(text)
            node, seq, recs = doc["node"], doc["seq"], doc["records"]
            if not isinstance(node, str) or not node or isinstance(seq, bool) or seq < 1:
                raise ValueError("bad node or seq")
            if not isinstance(recs, list) or len(recs) > MAX_RECORDS:
                raise ValueError(f"records must be a list of at most {MAX_RECORDS}")
            return cls(node, int(seq), tuple(_record(r) for r in recs))
        except LedgerError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise LedgerError(f"malformed usage batch: {exc}") from None


class NodeUsageLog:
    """A node's outbox of usage batches (SQLite, ``synchronous=FULL``): :meth:`append` numbers
    and keeps each interval's records until the controller confirms it has them
    (:meth:`prune`)."""

    def __init__(self, path: str | Path, node: str) -> None:
        if not node:
            raise ValueError("a node needs a name")
        self.node = node
        self._lock = threading.Lock()  #: one connection, used from the node's threads in turn
        self._db = sqlite3.connect(
            str(path), isolation_level=None, timeout=5.0, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batch (seq INTEGER PRIMARY KEY, doc TEXT NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER)")

    def append(self, records: Iterable[UsageRecord]) -> int:
        """Durably add one interval's records as the next batch; returns its sequence number
        (0, and nothing stored, when there are no records)."""
        recs = tuple(records)
        if not recs:
            return 0
        if len(recs) > MAX_RECORDS:
            raise LedgerError(f"a batch holds at most {MAX_RECORDS} records")
        with self._lock:
            return self._append(recs)

    def _append(self, recs: tuple[UsageRecord, ...]) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT v FROM meta WHERE k = 'seq'").fetchone()
            seq = (row[0] if row else 0) + 1
            db.execute("INSERT OR REPLACE INTO meta VALUES ('seq', ?)", (seq,))
            db.execute(
                "INSERT INTO batch VALUES (?, ?)",
                (seq, UsageBatch(self.node, seq, recs).to_json()),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return seq

    def since(self, after: int, limit: int = MAX_BATCHES) -> list[UsageBatch]:
        """Batches numbered above ``after``, in order (at most ``limit``)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT doc FROM batch WHERE seq > ? ORDER BY seq LIMIT ?",
                (int(after), min(int(limit), MAX_BATCHES)),
            ).fetchall()
        return [UsageBatch.from_json(doc) for (doc,) in rows]

    def prune(self, upto: int) -> int:
        """Forget batches numbered ``upto`` and below (the controller has them)."""
        with self._lock:
            return self._db.execute("DELETE FROM batch WHERE seq <= ?", (int(upto),)).rowcount

    def last_seq(self) -> int:
        """The number of the last batch appended (0 before the first)."""
        with self._lock:
            row = self._db.execute("SELECT v FROM meta WHERE k = 'seq'").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class CollectResult:
    """What one collection round did."""

    taken: int = 0  #: batches billed now
    duplicates: int = 0  #: batches billed before (a replay), ignored
    deferred: int = 0  #: batches past a gap in a node's sequence, left for a later round
    records: list[UsageRecord] = field(default_factory=list)  #: appended to the ledger
    last_seq: dict[str, int] = field(default_factory=dict)  #: per node, after this round
    skipped: dict[str, str] = field(default_factory=dict)  #: node -> why it was not collected


class ClusterCollector:
    """Bills a multi-node site's usage into ``ledger`` (see the module docstring)."""

    def __init__(self, ledger: Ledger, site: str) -> None:
        self.ledger = ledger
        self.site = site
        self.checkpoint = f"cluster:{site}"

    def last_seq(self) -> dict[str, int]:
        """Per node, the last batch number billed."""
        cp = self.ledger.checkpoint(self.checkpoint)
        if cp is None:
            return {}
        nodes = cp[1].get("nodes", {}) if isinstance(cp[1], dict) else {}
        return {str(k): int(v) for k, v in nodes.items()}

    def collect(self, batches: Iterable[UsageBatch], now: float) -> CollectResult:
        """Bill ``batches`` (from any nodes, in any order, repeats allowed) as the round ending
        at ``now``; one ledger transaction. :class:`LedgerError` (nothing billed) for a batch
        of another site or a round that does not end after the previous one."""
        cp = self.ledger.checkpoint(self.checkpoint)
        prev = None if cp is None else float(cp[0])
        if prev is not None and now <= prev:
            raise LedgerError(f"collection time {now} is not after the previous one ({prev})")
        last = self.last_seq()
        result = CollectResult()
        sums: dict[tuple[str, str], Counters] = {}
        starts: list[float] = []
        for b in sorted(batches, key=lambda b: (b.node, b.seq)):
            have = last.get(b.node, 0)
            if b.seq <= have:
                result.duplicates += 1
                continue
            if b.seq != have + 1:
                result.deferred += 1
                continue
            for r in b.records:
                if r.site != self.site:
                    raise LedgerError(f"batch {b.node}#{b.seq} holds usage of site {r.site!r}")
                sums.setdefault((r.psp, r.service), Counters()).add(r.counters)
                starts.append(r.interval_start)
            last[b.node] = b.seq
            result.taken += 1
        start = prev if prev is not None else min(starts, default=now)
        start = min(start, now)
        result.records = [
            UsageRecord(self.site, psp, service, start, now, c)
            for (psp, service), c in sorted(sums.items())
            if any(c.as_dict().values())
        ]
        self.ledger.append_many(result.records, checkpoint=(self.checkpoint, now, {"nodes": last}))
        result.last_seq = dict(last)
        return result

    def collect_from(
        self, fetchers: dict[str, Callable[[int], list[UsageBatch]]], now: float
    ) -> CollectResult:
        """Fetch every node's batches past what was billed (``fetch(after_seq)``) and bill
        them. A node that cannot be reached (``OSError``, ``ConnectionError``, an unavailable
        engine) or whose batches are malformed (:class:`LedgerError`) is skipped this round,
        with the reason in :attr:`CollectResult.skipped`: its batches wait in its outbox and
        the other nodes are billed."""
        last = self.last_seq()
        batches: list[UsageBatch] = []
        skipped: dict[str, str] = {}
        for node, fetch in sorted(fetchers.items()):
            try:
                got = fetch(last.get(node, 0))
            except (OSError, ConnectionError, FISUnavailableError, LedgerError) as exc:
                skipped[node] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            batches += [b for b in got if b.node == node]
        result = self.collect(batches, now)
        result.skipped = skipped
        return result


# --- transport through the FIS engine (a Redis stream per node) ---------------------------------
def _stream(prefix: str, node: str) -> str:
    return f"{prefix}:usage:{node}"


def _batch_mac(key: bytes, text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return hmac.new(key, b"pcsite-usage-1|" + raw, hashlib.sha256).hexdigest()


def push_batches(
    client: Any, prefix: str, log: NodeUsageLog, *, keep: int = 100_000, key: bytes | None = None
) -> int:
    """Copy the node's outbox to its stream on the engine (entry id ``<seq>-0``); returns the
    number of batches added. Safe to repeat: an id already there is not added again.
    ``key``: each entry carries an HMAC of the batch (``m``), checked by :func:`fetch_batches`."""
    stream = _stream(prefix, log.node)
    top = client.xrevrange(stream, count=1)
    after = int(top[0][0].decode().partition("-")[0]) if top else 0
    added = 0
    for b in log.since(after):
        text = b.to_json()
        fields = {"b": text} if key is None else {"b": text, "m": _batch_mac(key, text)}
        client.xadd(stream, fields, id=f"{b.seq}-0", maxlen=keep, approximate=True)
        added += 1
    return added


def fetch_batches(
    client: Any, prefix: str, node: str, after: int, *, key: bytes | None = None
) -> list[UsageBatch]:
    """The node's batches numbered above ``after`` from its stream on the engine. With
    ``key``, an entry whose HMAC does not verify raises :class:`LedgerError` (``forged``):
    nothing of that node is billed until it is removed, and the collector says why."""
    raw = client.xrange(_stream(prefix, node), f"{int(after) + 1}-0", "+", count=MAX_BATCHES)
    out = []
    for entry_id, fields in raw:
        text = fields.get(b"b", b"")
        if key is not None:
            mac = fields.get(b"m", b"").decode(errors="replace")
            if not hmac.compare_digest(mac, _batch_mac(key, text)):
                raise LedgerError(f"usage batch {node} {entry_id.decode()}: forged (bad mac)")
        out.append(UsageBatch.from_json(text))
    return out
