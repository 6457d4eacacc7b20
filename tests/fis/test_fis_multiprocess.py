"""Several processes share one FIS store, writing and reading at the same time (both engines)."""

from __future__ import annotations

import json
import subprocess
import sys

from pcsite_lite.fis import namespace, open_engine

NS = namespace("acme", "srouting")
PROCS = 3
WRITES = 60

_WORKER = r"""
import json, sys
from pcdemo.rig import wait_until  # (tests.support's; a child cannot import tests)
from pcsite_lite.fis import CachedFIS, namespace, open_engine
url, me, procs, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ns = namespace("acme", "srouting")
fis = open_engine(url)
cache = CachedFIS(fis)  # real clock, 5 ms staleness
peer = (me + 1) % procs
for i in range(n):
    fis.put(ns, f"w{me}-{i}", i, writer="acme")
    fis.put(ns, "shared", [me, i], writer="acme")
    fis.lpm_put(ns, "t", f"10.{me}.{i}.0/24", i, writer="acme")
    cache.get(ns, f"w{peer}-{i // 2}")          # read a peer's keys while it writes them
    cache.lookup(ns, "t", f"10.{peer}.{i // 2}.1")
fis.put(ns, f"done-{me}", True, writer="acme")
# barrier: wait (through the cache) for every writer to finish
if not wait_until(lambda: all(cache.get(ns, f"done-{p}") for p in range(procs)), 20, 0.001):
    sys.exit("never saw every writer finish")
keys = [f"w{p}-{i}" for p in range(procs) for i in range(n)] + ["shared"]
addrs = [f"10.{p}.{i}.1" for p in range(procs) for i in range(n)]


def stale():
    out = [(k, cache.get(ns, k), fis.get(ns, k)) for k in keys]
    out += [(a, cache.lookup(ns, "t", a), fis.lookup(ns, "t", a)) for a in addrs]
    return [x for x in out if x[1] != x[2]]


wait_until(lambda: not stale(), 20)  # the cache converges (what stays stale is reported)
print(json.dumps({"stale": stale(), "misses": cache.misses, "polls": cache.polls}))
"""


def test_processes_write_and_read_concurrently_and_caches_converge(store_url: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, store_url, str(i), str(PROCS), str(WRITES)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCS)
    ]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        reports.append(json.loads(out))
    for report in reports:
        assert report["stale"] == []
        assert report["polls"] > 0
    fis = open_engine(store_url)
    try:
        items = dict(fis.items(NS))
        assert len(items) == PROCS * WRITES + 1 + PROCS
        assert all(items[f"w{p}-{i}"] == i for p in range(PROCS) for i in range(WRITES))
        assert items["shared"][1] == WRITES - 1  # last write of some process wins whole
        assert len(list(fis.lpm_items(NS, "t"))) == PROCS * WRITES
    finally:
        fis.close()
