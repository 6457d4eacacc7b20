"""The durable usage ledger: metered usage and accounting log lines of a site (paper §2.5).

A site appends one :class:`~pcsite_lite.metering.UsageRecord` per (psp, service) per metering
interval with :meth:`Ledger.append`. The embedded store is SQLite in WAL mode with
``synchronous=FULL``: :meth:`Ledger.append` returns only after its transaction is committed and
synced, so a site that is killed (even with SIGKILL) never loses a record it acknowledged.
Several worker processes may append to the same file at once (WAL + a busy timeout).

Every usage record has a unique id derived from ``(site, psp, service, interval_start)``
(:func:`record_id`). Appending or importing a record whose id is already present is a no-op
when the content is identical and an error (:class:`LedgerConflict`) when it differs, so
re-importing an export never double counts.

Log lines that services emit through the Packet API's ``log(text)`` call (the "logging API" of
§2.5) are stored per (site, psp, service) in the same file. :meth:`Ledger.log_sink` makes the
sink callable the site hands to a service runtime; each line gets a unique id
``<stream>:<seq>`` so exports of log lines are idempotent too.

:meth:`Ledger.export` writes a canonical JSON-lines document for a period (the same period
always gives the same bytes); :meth:`Ledger.import_export` merges one into another ledger.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pcsite_lite.metering import Counters, UsageRecord

__all__ = [
    "EXPORT_FORMAT",
    "ImportResult",
    "Ledger",
    "LedgerConflict",
    "LedgerError",
    "LogLine",
    "LogSink",
    "record_id",
]

EXPORT_FORMAT = "pcbill-ledger-export"
EXPORT_VERSION = 1
SCHEMA_VERSION = 1
COUNTER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Counters))
_MAX_INT = 2**63 - 1  # SQLite INTEGER range


class LedgerError(Exception):
    """A ledger operation failed (bad record, bad export file, unusable database)."""


class LedgerConflict(LedgerError):
    """A record with the same id but different content is already in the ledger."""


@dataclass(frozen=True, slots=True)
class LogLine:
    """One accounting log line a service emitted."""

    id: str  #: ``<stream>:<seq>``, unique per sink instance and line
    site: str
    psp: str
    service: str
    ts: float  #: unix seconds
    text: str


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What :meth:`Ledger.import_export` did."""

    records_added: int
    records_skipped: int  #: already present with identical content
    logs_added: int
    logs_skipped: int


def record_id(site: str, psp: str, service: str, interval_start: float) -> str:
    """The unique id of the usage record of (site, psp, service) starting at interval_start.

    128 bits of SHA-256 over the canonical JSON ``[site, psp, service, interval_start]``.
    """
    key = json.dumps([site, psp, service, float(interval_start)], separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise LedgerError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _check_time(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LedgerError(f"{what} must be a number of unix seconds, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise LedgerError(f"{what} must be finite, got {value!r}")
    return v


def _validate(rec: UsageRecord) -> tuple[str, str, str, float, float, dict[str, int]]:
    site = _check_name("site", rec.site)
    psp = _check_name("psp", rec.psp)
    service = _check_name("service", rec.service)
    start = _check_time("interval_start", rec.interval_start)
    end = _check_time("interval_end", rec.interval_end)
    if end < start:
        raise LedgerError(f"interval_end {end} is before interval_start {start}")
    if not isinstance(rec.counters, Counters):
        raise LedgerError(f"counters must be a Counters, got {type(rec.counters).__name__}")
    counters = rec.counters.as_dict()
    for name, v in counters.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > _MAX_INT:
            raise LedgerError(f"counter {name} must be an integer in 0..2^63-1, got {v!r}")
    return site, psp, service, start, end, counters


class Ledger:
    """A usage ledger in one SQLite file. Use as a context manager or call :meth:`close`.

    ``create=False`` refuses to create a missing file (readers such as invoicing).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        busy_timeout_s: float = 30.0,
        check_same_thread: bool = True,
    ) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise LedgerError(f"ledger {self.path} does not exist")
        try:
            self._db = sqlite3.connect(
                self.path,
                isolation_level=None,
                timeout=busy_timeout_s,
                check_same_thread=check_same_thread,  # False: the caller serialises its use
            )
        except sqlite3.Error as e:
            raise LedgerError(f"cannot open ledger {self.path}: {e}") from e
        try:
            self._setup()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise LedgerError(f"{self.path} is not a usable ledger: {e}") from e

    # -- lifecycle ------------------------------------------------------------------------

    def _setup(self) -> None:
        db = self._db
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise LedgerError(f"cannot put {self.path} in WAL mode (got {mode})")
        # FULL: the WAL is fsynced at every commit, so a committed append survives a crash.
        db.execute("PRAGMA synchronous=FULL")
        counter_cols = ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in COUNTER_FIELDS)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise LedgerError(f"ledger schema {row[0]} is not supported")
            db.execute(
                "CREATE TABLE IF NOT EXISTS usage ("
                " id TEXT PRIMARY KEY, site TEXT NOT NULL, psp TEXT NOT NULL,"
                " service TEXT NOT NULL, interval_start REAL NOT NULL,"
                f" interval_end REAL NOT NULL, {counter_cols},"
                " UNIQUE (site, psp, service, interval_start))"
            )
            # counters added to metering.Counters after a ledger was created
            have = {r[1] for r in db.execute("PRAGMA table_info(usage)")}
            for c in COUNTER_FIELDS:
                if c not in have:
                    db.execute(f"ALTER TABLE usage ADD COLUMN {c} INTEGER NOT NULL DEFAULT 0")
            db.execute("CREATE INDEX IF NOT EXISTS usage_psp_start ON usage (psp, interval_start)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS log ("
                " id TEXT PRIMARY KEY, site TEXT NOT NULL, psp TEXT NOT NULL,"
                " service TEXT NOT NULL, ts REAL NOT NULL, text TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS log_psp_ts ON log (psp, ts)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS checkpoint ("
                " name TEXT PRIMARY KEY, ts REAL NOT NULL, state TEXT NOT NULL)"
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the database connection (appends already returned are durable)."""
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pragma(self, name: str) -> object:
        """The value of a SQLite pragma (``journal_mode``, ``synchronous``, ...)."""
        if not name.isidentifier():
            raise LedgerError(f"bad pragma name {name!r}")
        return self._db.execute(f"PRAGMA {name}").fetchone()[0]

    # -- writing ----------------------------------------------------------------------------

    def _insert_usage(self, rec: UsageRecord) -> tuple[str, bool]:
        site, psp, service, start, end, counters = _validate(rec)
        rid = record_id(site, psp, service, start)
        cols = ", ".join(COUNTER_FIELDS)
        marks = ", ".join("?" for _ in COUNTER_FIELDS)
        values = [counters[c] for c in COUNTER_FIELDS]
        cur = self._db.execute(
            f"INSERT OR IGNORE INTO usage (id, site, psp, service, interval_start, interval_end,"
            f" {cols}) VALUES (?, ?, ?, ?, ?, ?, {marks})",
            (rid, site, psp, service, start, end, *values),
        )
        if cur.rowcount == 1:
            return rid, True
        row = self._db.execute(
            f"SELECT interval_end, {cols} FROM usage WHERE id=?", (rid,)
        ).fetchone()
        if row is None or row[0] != end or list(row[1:]) != values:
            raise LedgerConflict(
                f"record {rid} ({site}/{psp}/{service} at {start!r}) is already in the ledger"
                " with different usage"
            )
        return rid, False

    def append(self, record: UsageRecord) -> str:
        """Durably store one usage record and return its id.

        Returns only after the row is committed and synced to disk. Appending an identical
        record again is a no-op; a different record with the same id raises
        :class:`LedgerConflict`.
        """
        return self.append_many([record])[0]

    def append_many(
        self,
        records: Iterable[UsageRecord],
        *,
        checkpoint: tuple[str, float, object] | None = None,
    ) -> list[str]:
        """Durably store several records in one transaction (all or none); return their ids.

        ``checkpoint=(name, ts, state)`` stores a JSON-compatible ``state`` under ``name`` in
        the same transaction (see :meth:`checkpoint`): a collector that records how far it
        got together with the records it derived never bills an interval twice or not at all.
        """
        ids: list[str] = []
        with self._transaction():
            for rec in records:
                ids.append(self._insert_usage(rec)[0])
            if checkpoint is not None:
                name, ts, state = checkpoint
                self._db.execute(
                    "INSERT OR REPLACE INTO checkpoint (name, ts, state) VALUES (?, ?, ?)",
                    (_check_name("checkpoint name", name), _check_time("ts", ts), _dumps(state)),
                )
        return ids

    def checkpoint(self, name: str) -> tuple[float, object] | None:
        """The ``(ts, state)`` last stored under ``name`` by :meth:`append_many`, or None."""
        row = self._db.execute("SELECT ts, state FROM checkpoint WHERE name=?", (name,)).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def _insert_log(self, line: LogLine) -> bool:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO log (id, site, psp, service, ts, text) VALUES (?,?,?,?,?,?)",
            (line.id, line.site, line.psp, line.service, line.ts, line.text),
        )
        if cur.rowcount == 1:
            return True
        row = self._db.execute(
            "SELECT site, psp, service, ts, text FROM log WHERE id=?", (line.id,)
        ).fetchone()
        if row is None or tuple(row) != (line.site, line.psp, line.service, line.ts, line.text):
            raise LedgerConflict(f"log line {line.id} is already in the ledger with other text")
        return False

    def append_logs(self, lines: Iterable[LogLine]) -> int:
        """Durably store log lines in one transaction; return how many were new."""
        added = 0
        with self._transaction():
            for line in lines:
                _check_name("site", line.site)
                _check_name("psp", line.psp)
                _check_name("service", line.service)
                _check_time("ts", line.ts)
                if not isinstance(line.text, str):
                    raise LedgerError(f"log text must be a string, got {line.text!r}")
                added += self._insert_log(line)
        return added

    def log_sink(self, site: str, psp: str, service: str, **options: Any) -> LogSink:
        """A ``log(text)`` sink for one service of one PSP at ``site`` (``options``: ``batch``,
        ``clock``, as :class:`LogSink` takes them).

        Lines are buffered and written ``batch`` lines at a time; ``batch=1`` makes every line
        durable before ``log`` returns. Call :meth:`LogSink.flush` at the end of each metering
        interval (``Site.snapshot`` does). A write triggered by a full batch happens inside
        the ``log`` call, i.e. inside the calling service's metered time, so keep ``batch``
        above the lines a service logs per interval.
        """
        return LogSink(self, site, psp, service, **options)

    def log_sinks(
        self, site: str, *, batch: int = 1024, clock: Callable[[], float] = time.time
    ) -> Callable[[str, str], LogSink]:
        """The ``log_sinks`` factory :class:`pcsite_lite.site.Site` takes:
        ``(psp, service) -> LogSink`` for services at ``site``.

        ``Site.snapshot`` flushes every sink it handed out, so an interval's log lines are
        durable once its usage records are appended. Pass the site's packet clock
        (``clock=site.clock``) to time-stamp lines with packet time.
        """
        _check_name("site", site)

        def factory(psp: str, service: str) -> LogSink:
            return LogSink(self, site, psp, service, batch=batch, clock=clock)

        return factory

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> None:
            try:
                self.db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise LedgerError(f"cannot start a ledger transaction: {e}") from e

        def __exit__(self, et: type[BaseException] | None, *rest: object) -> None:
            if et is None:
                try:
                    self.db.execute("COMMIT")
                except sqlite3.Error as e:
                    self.db.execute("ROLLBACK")
                    raise LedgerError(f"ledger commit failed: {e}") from e
            else:
                self.db.execute("ROLLBACK")

    def _transaction(self) -> Ledger._Tx:
        return Ledger._Tx(self._db)

    # -- reading ----------------------------------------------------------------------------

    def _usage_rows(
        self, psp: str | None, start: float | None, end: float | None
    ) -> Iterator[UsageRecord]:
        where, args = self._period_clause("interval_start", psp, start, end)
        cols = ", ".join(COUNTER_FIELDS)
        q = (
            f"SELECT site, psp, service, interval_start, interval_end, {cols} FROM usage{where}"
            " ORDER BY interval_start, site, psp, service"
        )
        for row in self._db.execute(q, args):
            counters = Counters(**dict(zip(COUNTER_FIELDS, row[5:])))
            yield UsageRecord(row[0], row[1], row[2], row[3], row[4], counters)

    @staticmethod
    def _period_clause(
        col: str, psp: str | None, start: float | None, end: float | None
    ) -> tuple[str, list[object]]:
        conds: list[str] = []
        args: list[object] = []
        if psp is not None:
            conds.append("psp = ?")
            args.append(psp)
        if start is not None:
            conds.append(f"{col} >= ?")
            args.append(float(start))
        if end is not None:
            conds.append(f"{col} < ?")
            args.append(float(end))
        return (" WHERE " + " AND ".join(conds) if conds else ""), args

    def records(
        self, psp: str | None = None, start: float | None = None, end: float | None = None
    ) -> list[UsageRecord]:
        """Usage records whose ``interval_start`` lies in ``[start, end)``, in time order."""
        return list(self._usage_rows(psp, start, end))

    def logs(
        self,
        psp: str | None = None,
        start: float | None = None,
        end: float | None = None,
        service: str | None = None,
    ) -> list[LogLine]:
        """Log lines with ``ts`` in ``[start, end)``, ordered by time then id."""
        where, args = self._period_clause("ts", psp, start, end)
        if service is not None:
            where += (" AND" if where else " WHERE") + " service = ?"
            args.append(service)
        q = f"SELECT id, site, psp, service, ts, text FROM log{where} ORDER BY ts, id"
        return [LogLine(*row) for row in self._db.execute(q, args)]

    def ids(self) -> set[str]:
        """Ids of every usage record in the ledger."""
        return {r[0] for r in self._db.execute("SELECT id FROM usage")}

    def psps(self) -> list[str]:
        """Every PSP that has usage records or log lines in the ledger, sorted."""
        q = "SELECT psp FROM usage UNION SELECT psp FROM log ORDER BY 1"
        return [r[0] for r in self._db.execute(q)]

    # -- export / import --------------------------------------------------------------------

    def export(
        self, start: float | None = None, end: float | None = None, psp: str | None = None
    ) -> bytes:
        """A canonical JSON-lines export of the records and log lines in ``[start, end)``.

        Line 1 is a header ``{"format": ..., "version": 1, "from": ..., "to": ..., "psp": ...}``;
        then one ``{"kind": "usage", ...}`` line per record (ordered by interval start, site,
        psp, service) and one ``{"kind": "log", ...}`` line per log line (ordered by time, id).
        Keys are sorted and floats written in their shortest round-trip form, so exporting the
        same period of the same ledger always gives the same bytes.
        """
        header = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "from": None if start is None else float(start),
            "to": None if end is None else float(end),
            "psp": psp,
        }
        out = [_dumps(header)]
        for rec in self._usage_rows(psp, start, end):
            out.append(
                _dumps(
                    {
                        "kind": "usage",
                        "id": record_id(rec.site, rec.psp, rec.service, rec.interval_start),
                        "site": rec.site,
                        "psp": rec.psp,
                        "service": rec.service,
                        "interval_start": rec.interval_start,
                        "interval_end": rec.interval_end,
                        "counters": rec.counters.as_dict(),
                    }
                )
            )
        for line in self.logs(psp, start, end):
            out.append(
                _dumps(
                    {
                        "kind": "log",
                        "id": line.id,
                        "site": line.site,
                        "psp": line.psp,
                        "service": line.service,
                        "ts": line.ts,
                        "text": line.text,
                    }
                )
            )
        return ("\n".join(out) + "\n").encode()

    def import_export(self, data: bytes) -> ImportResult:
        """Merge an :meth:`export` document into this ledger, in one transaction.

        Records and log lines already present (same id, same content) are skipped, so
        importing the same export twice, or overlapping exports, never double counts. A
        malformed document or a conflicting record aborts the whole import.
        """
        usage, logs = _parse_export(data)
        added = skipped = ladded = lskipped = 0
        with self._transaction():
            for rec in usage:
                _, new = self._insert_usage(rec)
                added += new
                skipped += not new
            for line in logs:
                new = self._insert_log(line)
                ladded += new
                lskipped += not new
        return ImportResult(added, skipped, ladded, lskipped)


class LogSink:
    """The ``log(text)`` sink of one (site, psp, service); see :meth:`Ledger.log_sink`."""

    def __init__(
        self,
        ledger: Ledger,
        site: str,
        psp: str,
        service: str,
        *,
        batch: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self._ledger = ledger
        self.site = _check_name("site", site)
        self.psp = _check_name("psp", psp)
        self.service = _check_name("service", service)
        self._batch = batch
        self._clock = clock
        self.stream = uuid.uuid4().hex
        self._seq = 0
        self._pending: list[LogLine] = []

    def __call__(self, text: str) -> None:
        """Record one log line (durable at the next flush; at once when ``batch=1``)."""
        self._seq += 1
        self._pending.append(
            LogLine(
                f"{self.stream}:{self._seq}",
                self.site,
                self.psp,
                self.service,
                float(self._clock()),
                str(text),
            )
        )
        if len(self._pending) >= self._batch:
            self.flush()

    @property
    def pending(self) -> int:
        """Lines accepted but not yet durable."""
        return len(self._pending)

    def flush(self) -> None:
        """Make every accepted line durable."""
        if self._pending:
            self._ledger.append_logs(self._pending)
            self._pending = []


def _dumps(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _parse_export(data: bytes) -> tuple[list[UsageRecord], list[LogLine]]:
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        raise LedgerError(f"export is not UTF-8 text: {e}") from e
    lines = text.splitlines()
    if not lines:
        raise LedgerError("export is empty")
    usage: list[UsageRecord] = []
    logs: list[LogLine] = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise LedgerError(f"export line {n}: not JSON ({e.msg})") from e
        if not isinstance(obj, dict):
            raise LedgerError(f"export line {n}: expected a JSON object")
        try:
            if n == 1:
                if obj.get("format") != EXPORT_FORMAT or obj.get("version") != EXPORT_VERSION:
                    raise LedgerError(
                        f"export line 1: not a {EXPORT_FORMAT} version {EXPORT_VERSION} header"
                    )
                continue
            kind = obj["kind"]
            if kind == "usage":
                c = obj["counters"]
                if not isinstance(c, dict) or set(c) - set(COUNTER_FIELDS):
                    raise LedgerError(f"export line {n}: bad counters {c!r}")
                rec = UsageRecord(
                    obj["site"],
                    obj["psp"],
                    obj["service"],
                    obj["interval_start"],
                    obj["interval_end"],
                    Counters(**c),
                )
                site, psp, service, start, _, _ = _validate(rec)
                if obj.get("id") != record_id(site, psp, service, start):
                    raise LedgerError(f"export line {n}: record id does not match its key")
                usage.append(rec)
            elif kind == "log":
                line = LogLine(
                    obj["id"], obj["site"], obj["psp"], obj["service"], obj["ts"], obj["text"]
                )
                for what in ("id", "site", "psp", "service"):
                    _check_name(what, getattr(line, what))
                _check_time("ts", line.ts)
                if not isinstance(line.text, str):
                    raise LedgerError("log text must be a string")
                logs.append(line)
            else:
                raise LedgerError(f"export line {n}: unknown kind {kind!r}")
        except KeyError as e:
            raise LedgerError(f"export line {n}: missing field {e.args[0]!r}") from e
        except LedgerError as e:
            msg = str(e)
            raise LedgerError(msg if msg.startswith("export line") else f"line {n}: {msg}") from e
    return usage, logs
