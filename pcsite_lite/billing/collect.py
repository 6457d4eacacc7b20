"""Collect a running site daemon's metered usage into the ledger.

**From the site's usage ledger (the default).** The daemon appends its metered usage to its own
durable ledger as it counts it (:mod:`pcsite_lite.daemon.usage`) and serves it as a canonical
export: ``GET /v1/isp/usage/{since}`` (ISP credential) returns every record whose interval
starts at ``since`` or later. :func:`collect_export` imports that into the central ledger and
remembers, in a checkpoint ``export:<name>``, the latest interval start it imported; the next
collection asks from there. The site appends records in the order of their interval starts, so
nothing is skipped, and a record fetched twice is a no-op (:meth:`Ledger.import_export`), so a
collector killed at any point continues exactly where it stopped.

**From ``/metrics`` (older sites).** The site daemon (:mod:`pcsite_lite.daemon`) serves
cumulative per-(PSP, service) counters on its control API at ``GET /metrics`` (ISP
credential), in the Prometheus text format rendered by :func:`pcsite_lite.metrics.render`::

    pcsite_service_bytes_in_total{site="site-a",psp="acme",service="relay"} 123456

:class:`UsageCollector` turns successive scrapes into :class:`~pcsite_lite.metering.UsageRecord`
rows: for every (site, psp, service) it bills the increase of each counter since the previous
scrape, over the interval ``[previous scrape, this scrape)``. The previous scrape's counters are
stored in the ledger *in the same transaction* as the records derived from them
(:meth:`~pcsite_lite.billing.ledger.Ledger.append_many` with a checkpoint), so a collector that
is killed and restarted neither bills an interval twice nor skips one. The first scrape only
records the baseline.

A counter that went down was reset (a worker restarted and the site's sum lost that worker's
counts). The increase is then unknowable from the sums alone, so the collector bills
``max(0, now - before)`` for that counter: it never charges a PSP twice for the same usage, at
the price of not billing one interval's usage of that service on the restarted worker.

The exposition parser below reads exactly the subset :mod:`pcsite_lite.metrics` writes
(``name{labels} value`` lines, ``#`` comments); a general Prometheus parser
(``prometheus_client``) would be a new dependency for these twenty lines.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import fields

from pcsite_lite.billing.ledger import ImportResult, Ledger, LedgerError
from pcsite_lite.metering import Counters, UsageRecord

__all__ = ["MetricsError", "UsageCollector", "collect_export", "parse_service_counters"]

_FIELDS = frozenset(f.name for f in fields(Counters))
_SAMPLE = re.compile(r"^pcsite_service_([a-z_]+)_total\{(.*)\}\s+(\S+)$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Key = tuple[str, str, str]  #: (site, psp, service)


class MetricsError(ValueError):
    """The metrics text is not what a site daemon serves."""


def _unescape(value: str) -> str:
    return re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], value)


def parse_service_counters(text: str) -> dict[Key, Counters]:
    """The ``pcsite_service_*_total`` samples of a metrics text, as counters per key."""
    out: dict[Key, Counters] = {}
    for n, line in enumerate(text.splitlines(), 1):
        m = _SAMPLE.match(line)
        if m is None:
            continue
        name, labels_text, value_text = m.groups()
        if name not in _FIELDS:
            continue  # a counter billing does not know (yet): not billed
        labels = {k: _unescape(v) for k, v in _LABEL.findall(labels_text)}
        try:
            key = (labels["site"], labels["psp"], labels["service"])
        except KeyError as e:
            raise MetricsError(f"metrics line {n}: no {e.args[0]!r} label") from None
        try:
            value = float(value_text)
        except ValueError:
            raise MetricsError(f"metrics line {n}: bad value {value_text!r}") from None
        if not math.isfinite(value) or value < 0 or not value.is_integer():
            raise MetricsError(f"metrics line {n}: a counter must be a whole number >= 0")
        setattr(out.setdefault(key, Counters()), name, int(value))
    return out


def _state(counters: dict[Key, Counters]) -> list[object]:
    return [[*key, c.as_dict()] for key, c in sorted(counters.items())]


def _load(state: object) -> dict[Key, Counters]:
    out: dict[Key, Counters] = {}
    if not isinstance(state, list):
        raise MetricsError("corrupt collector checkpoint")
    for site, psp, service, c in state:
        out[(site, psp, service)] = Counters(**{k: v for k, v in c.items() if k in _FIELDS})
    return out


class UsageCollector:
    """Turns scrapes of a site's ``/metrics`` into ledger records (see the module docstring).

    ``name`` identifies the scraped site in the ledger's checkpoints (one collector per site).
    """

    def __init__(self, ledger: Ledger, name: str) -> None:
        self.ledger = ledger
        self.checkpoint = f"collector:{name}"

    def observe(self, metrics_text: str, now: float) -> list[UsageRecord]:
        """Account one scrape taken at ``now``; returns the records appended (durably)."""
        current = parse_service_counters(metrics_text)
        cp = self.ledger.checkpoint(self.checkpoint)
        if cp is None:
            self.ledger.append_many([], checkpoint=(self.checkpoint, now, _state(current)))
            return []
        prev_ts, prev_state = cp
        if now <= prev_ts:
            raise MetricsError(f"scrape time {now} is not after the previous one ({prev_ts})")
        previous = _load(prev_state)
        records: list[UsageRecord] = []
        for key, c in sorted(current.items()):
            before = previous.get(key, Counters())
            delta = Counters(
                **{f: max(0, getattr(c, f) - getattr(before, f)) for f in sorted(_FIELDS)}
            )
            if any(delta.as_dict().values()):
                records.append(UsageRecord(key[0], key[1], key[2], prev_ts, now, delta))
        self.ledger.append_many(records, checkpoint=(self.checkpoint, now, _state(current)))
        return records


def collect_export(
    ledger: Ledger, name: str, fetch: Callable[[float], str]
) -> tuple[ImportResult, float]:
    """Import the site's usage since the last collection; returns what was done and the cursor.

    ``fetch(since)`` returns the site's export of records starting at ``since`` or later
    (``ControlClient.usage_export``). The cursor (the latest interval start imported) is kept in
    the ledger under ``export:<name>``.
    """
    cp_name = f"export:{name}"
    cp = ledger.checkpoint(cp_name)
    since = 0.0 if cp is None else float(cp[0])
    data = fetch(since).encode()
    result = ledger.import_export(data)
    latest = since
    for line in data.splitlines()[1:]:
        try:
            doc = json.loads(line)
        except ValueError as exc:
            raise LedgerError(f"export line: not JSON ({exc})") from exc
        if doc.get("kind") == "usage":
            latest = max(latest, float(doc["interval_start"]))
    if latest > since or cp is None:
        ledger.append_many([], checkpoint=(cp_name, latest, {}))
    return result, latest
