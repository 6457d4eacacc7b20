"""Compute nodes' usage batches travel through the FIS engine (a Redis stream per node) to the
controller's collector: pushing twice adds nothing, a node that cannot be reached is billed
later, and the ledger holds each node's usage once."""

from __future__ import annotations

import uuid
from pathlib import Path

from pcsite_lite.billing.cluster import (
    ClusterCollector,
    NodeUsageLog,
    UsageBatch,
    fetch_batches,
    push_batches,
)
from pcsite_lite.billing.ledger import Ledger
from pcsite_lite.fis import RedisFIS, open_engine
from pcsite_lite.metering import Counters, UsageRecord


def _rec(start: float, nbytes: int) -> UsageRecord:
    return UsageRecord("s1", "acme", "relay", start, start + 1, Counters(bytes_in=nbytes))


def test_usage_batches_reach_the_ledger_once_through_the_engine(
    redis_url: str, tmp_path: Path
) -> None:
    prefix = f"use-{uuid.uuid4().hex[:8]}"
    fis = open_engine(f"{redis_url}?prefix={prefix}")
    assert isinstance(fis, RedisFIS)
    logs = {n: NodeUsageLog(tmp_path / f"{n}.db", n) for n in ("n1", "n2")}
    for i in range(5):
        logs["n1"].append([_rec(100.0 + i, 1000 + i)])
        logs["n2"].append([_rec(100.0 + i, 2000 + i)])
    for log in logs.values():
        assert fis.call(lambda r, log=log: push_batches(r, prefix, log), write=True) == 5
        assert fis.call(lambda r, log=log: push_batches(r, prefix, log)) == 0  # already there

    def fetcher(node: str, up: bool = True):
        def fetch(after: int) -> list[UsageBatch]:
            if not up:
                raise ConnectionError(f"{node} unreachable")
            return fis.call(lambda r: fetch_batches(r, prefix, node, after))

        return fetch

    with Ledger(tmp_path / "central.ledger") as ledger:
        col = ClusterCollector(ledger, "s1")
        r1 = col.collect_from({"n1": fetcher("n1"), "n2": fetcher("n2", up=False)}, now=200.0)
        assert r1.taken == 5 and col.last_seq() == {"n1": 5}
        assert r1.skipped == {"n2": "ConnectionError: n2 unreachable"}
        logs["n1"].append([_rec(106.0, 7)])
        fis.call(lambda r: push_batches(r, prefix, logs["n1"]), write=True)
        junk = fis.call(lambda r: r.xadd(f"{prefix}:usage:n3", {"b": "{not json"}, id="1-0"))
        assert junk
        r2 = col.collect_from(
            {"n1": fetcher("n1"), "n2": fetcher("n2"), "n3": fetcher("n3")}, now=210.0
        )
        assert r2.skipped["n3"].startswith("LedgerError: malformed usage batch")
        assert r2.taken == 6 and r2.duplicates == 0 and col.last_seq() == {"n1": 6, "n2": 5}
        total = sum(r.counters.bytes_in for r in ledger.records())
        assert total == sum(1000 + i for i in range(5)) + 7 + sum(2000 + i for i in range(5))
    for log in logs.values():
        log.close()
