"""Usage of a site that spans machines: two real compute nodes (each a ``WorkerSite`` with its
pipeline) meter their own packets; the controller collects their numbered batches into the
ledger once, whatever is replayed or duplicated, and invoices conserve bytes exactly."""

from __future__ import annotations

import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pcsite_lite.billing.cluster import ClusterCollector, NodeUsageLog, UsageBatch
from pcsite_lite.billing.invoice import build_invoice
from pcsite_lite.billing.ledger import Ledger, LedgerError
from pcsite_lite.billing.prices import PriceSheet
from pcsite_lite.daemon.config import parse
from pcsite_lite.daemon.state import WorkerSite
from pcsite_lite.verdicts import Forward
from pcsock import wire

SITE_NAME = "cl-t"
SITE = "198.18.9.1"
SRC = "198.18.9.2"
NEXT = "198.18.9.3"
K_IN, K_OUT = bytes(range(16)), bytes(range(3, 19))
PRICES = PriceSheet(ingress_per_gb=Decimal("0.05"))


def _node(tmp: Path) -> WorkerSite:
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = parse({"site": {"name": SITE_NAME, "public_ip": SITE,
                          "fis": f"sqlite://{tmp / 'fis.db'}", "state_dir": str(tmp)},
                 "control": {"admin_token": "cl-admin-token-0123456789abcdef"}})  # fmt: skip
    ws = WorkerSite(cfg)
    for label, service in ((11, "relay"), (12, "mirror")):
        ws.apply({"op": "circuit", "label": label, "psp": "acme", "service": service,
                  "in_key": K_IN.hex(), "expires": time.time() + 600, "destination": None,
                  "out": [{"label": 4242, "next_hop": NEXT, "key": K_OUT.hex(),
                           "final": False, "strip": False}]})  # fmt: skip
    return ws


def _run(ws: WorkerSite, log: NodeUsageLog, n: int, seed: int, t0: float) -> Counter[str]:
    """Send ``n`` packets of varied sizes through the node; a metering interval ends every 40
    packets (the node snapshots its meters into its outbox). Returns the bytes it saw."""
    truth: Counter[str] = Counter()
    t = t0
    for i in range(n):
        label = 11 if (i + seed) % 3 else 12
        pkt = bytes(wire.build_circuit_packet(src=SRC, dst=SITE, label=label, key=K_IN,
                                              payload=bytes((i * 37 + seed) % 900)))  # fmt: skip
        service = "relay" if label == 11 else "mirror"
        truth[f"{service}:in"] += len(pkt)
        for v in ws.process(pkt):
            assert isinstance(v, Forward)
            truth[f"{service}:out"] += len(v.data)
        t += 0.001
        if i % 40 == 39:
            log.append(ws.site.snapshot(t))
    log.append(ws.site.snapshot(t + 0.001))
    return truth


def _billed(ledger: Ledger) -> Counter[str]:
    out: Counter[str] = Counter()
    for r in ledger.records():
        out[f"{r.service}:in"] += r.counters.bytes_in
        out[f"{r.service}:out"] += r.counters.bytes_out
    return out


def test_two_nodes_usage_is_billed_once_despite_replays_and_conserves_bytes(
    tmp_path: Path,
) -> None:
    t0 = 1_800_000_000.0
    logs = {name: NodeUsageLog(tmp_path / f"{name}.outbox", name) for name in ("n1", "n2")}
    truth = _run(_node(tmp_path / "n1"), logs["n1"], 300, 1, t0)
    truth += _run(_node(tmp_path / "n2"), logs["n2"], 220, 2, t0)
    assert truth["relay:in"] > 0 and truth["mirror:in"] > 0
    with Ledger(tmp_path / "central.ledger") as ledger:
        col = ClusterCollector(ledger, SITE_NAME)
        n1, n2 = logs["n1"].since(0), logs["n2"].since(0)
        assert len(n1) == 8 and len(n2) == 6
        # round 1: n1's first batches, n2's batches 1-3 delivered twice, and n2's 5 (a gap)
        r1 = col.collect([*n1[:4], *n2[:3], *n2[:3], n2[4]], now=t0 + 10)
        assert (r1.taken, r1.duplicates, r1.deferred) == (7, 3, 1)
        assert r1.last_seq == {"n1": 4, "n2": 3}
        # round 2: the collector "crashed" after fetching and fetches everything again
        r2 = col.collect([*logs["n1"].since(0), *logs["n2"].since(0)], now=t0 + 20)
        assert (r2.taken, r2.duplicates, r2.deferred) == (7, 7, 0)
        # round 3: everything replayed once more: nothing new is billed
        r3 = col.collect([*n1, *n2], now=t0 + 30)
        assert (r3.taken, r3.records) == (0, [])
        assert col.last_seq() == {"n1": 8, "n2": 6}
        billed = _billed(ledger)
        assert billed == truth  # every byte of both nodes, exactly once
        for service in ("relay", "mirror"):
            assert billed[f"{service}:in"] == truth[f"{service}:in"]
        records = list(ledger.records())
        assert {r.site for r in records} == {SITE_NAME}
        inv = build_invoice(records, "acme", 0.0, t0 + 40, PRICES)
        usage = Counter()
        for li in inv.lines:
            usage[li.resource] += li.usage
        out = usage["bandwidth_local"] + usage["bandwidth_interdomain"]
        assert out == truth["relay:out"] + truth["mirror:out"] > 0
        assert usage["bandwidth_ingress"] == truth["relay:in"] + truth["mirror:in"]
        with pytest.raises(LedgerError, match="not after"):
            col.collect([], now=t0 + 30)
    for log in logs.values():
        assert log.prune(5) == 5 and next(b.seq for b in log.since(0)) == 6
        log.close()


def test_bad_batches_are_refused_with_a_reason(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.ledger") as ledger:
        col = ClusterCollector(ledger, SITE_NAME)
        good = UsageBatch.from_json(
            '{"node":"n1","seq":1,"records":[{"site":"other","psp":"p","service":"s",'
            '"start":1.0,"end":2.0,"counters":{"bytes_in":5}}]}'
        )
        with pytest.raises(LedgerError, match="site 'other'"):
            col.collect([good], now=10.0)
        assert col.last_seq() == {} and list(ledger.records()) == []
        bad: list[Any] = [
            "{", '{"node":"","seq":1,"records":[]}', '{"node":"n","seq":0,"records":[]}',
            '{"node":"n","seq":1,"records":[{"site":"s","psp":"p","service":"x","start":1,'
            '"end":2,"counters":{"bytes_in":-1}}]}',
            '{"node":"n","seq":1,"records":[{"site":"s","psp":"p","service":"x","start":1,'
            '"end":2,"counters":{"rootkit":1}}]}',
        ]  # fmt: skip
        for text in bad:
            with pytest.raises(LedgerError):
                UsageBatch.from_json(text)
