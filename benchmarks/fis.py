"""FIS benchmark: what a service pays per FIS read on the per-packet path.

Measured in one run, over the same 1000 keys / addresses, next to the baseline a Python
programmer cannot beat, a plain ``dict.get``:

- ``fis_cached_get_ns``: ``CachedFIS.get(ns, key)`` hit (default clock ``time.monotonic``,
  5 ms staleness: includes the clock read and the poll check);
- ``fis_cached_get_vs_dict``: that divided by ``dict_get_ns``;
- ``fis_cached_lookup_ns``: ``CachedFIS.lookup(ns, table, addr)`` on a 10 000-prefix table with
  /8, /16, /24 and /32 prefixes (half the addresses inside some prefix);
- ``lpm_lookup_ns``: ``LpmTable.lookup(addr)`` directly on that table, with the search this
  process uses (``lpm_backend``); ``lpm_lookup_vs_dict``: divided by ``dict_get_ns``;
- ``lpm_python_search_ns``: the pure-Python search alone (``LpmTable(accelerated=False).search``)
  and, if ``pytricia`` is installed, ``lpm_pytricia_search_ns``: the C radix tree's ``get`` alone
  on the same prefixes and addresses; ``lpm_python_vs_pytricia``: the first divided by the second
  (why ``LpmTable`` uses pytricia when it can);
- ``sqlite_get_us``: an uncached ``SqliteFIS.get`` on a WAL file (what a cache miss costs);
  ``sqlite_lookup_us``: an uncached LPM ``lookup`` (one indexed query over 33 candidates);
- ``redis_get_us`` (only with ``--redis URL``): an uncached ``RedisFIS.get`` round trip;

Invalidation lag (the staleness bound, measured): a second engine object on the same store (its
own SQLite connection or Redis client, which is what another process is to the cache) writes a
key; a ``CachedFIS`` (real clock, default 5 ms staleness) that was being read continuously
records how long after the write returned the new value became visible:

- ``fis_sqlite_invalidation_ms_median`` / ``_p90`` / ``_max`` over 200 writes; with
  ``--redis``, the same for ``fis_redis_...``.

Timings are process CPU time (wall time for the uncached engines, which wait on I/O), in
interleaved rounds; the best round of each is reported, so other processes' load stays out of
the figures and out of the ratios.

Run: ``python -m benchmarks.fis [--json PATH] [--quick] [--redis URL]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pcsite_lite.fis import CachedFIS, FISEngine, SqliteFIS, namespace, open_engine
from pcsite_lite.lpm import BACKEND, MASKS, LpmTable

NS = namespace("bench", "svc")
N_KEYS = 1000
N_PREFIXES = 10_000


def _setup(engine: FISEngine, rng: random.Random) -> tuple[list[str], list[int]]:
    keys = [str(rng.getrandbits(24)) for _ in range(N_KEYS)]
    values = [(k, {"out_label": i, "next_hop": "198.18.1.1"}) for i, k in enumerate(keys)]
    engine.put_many(NS, values, writer="bench")
    rows: list[tuple[tuple[int, int], int]] = []
    inside: list[int] = []
    for i in range(N_PREFIXES):
        plen = rng.choice((8, 16, 24, 32))
        net = rng.getrandbits(32) & MASKS[plen]
        rows.append(((net, plen), i))
        if len(inside) < N_KEYS // 2:
            inside.append(net | (rng.getrandbits(32) & ~MASKS[plen] & 0xFFFFFFFF))
    engine.lpm_put_many(NS, "routes", rows, writer="bench")
    addrs = inside + [rng.getrandbits(32) for _ in range(N_KEYS - len(inside))]
    rng.shuffle(addrs)
    return keys, addrs


def _round(fn: Callable[[], None], reps: int, clock: Callable[[], float]) -> float:
    t0 = clock()
    for _ in range(reps):
        fn()
    return clock() - t0


def invalidation_lag_ms(url: str, writes: int) -> list[float]:
    """Milliseconds from the commit of a write made through *another* engine object (its own
    SQLite connection or Redis client: for the cache, that is exactly another process) until
    a ``CachedFIS.get`` spinning here returns it. Between writes the reader keeps spinning for
    a random 0..20 ms, so writes land at random points of its 5 ms polling period."""
    rng = random.Random(6253)
    node, other = open_engine(url), open_engine(url)
    other.put(NS, "lag", -1, writer="bench")
    cache = CachedFIS(node)
    lags: list[float] = []
    try:
        for i in range(writes):
            until = time.monotonic() + rng.uniform(0.0, 0.02)
            while time.monotonic() < until:
                cache.get(NS, "lag")
            other.put(NS, "lag", i, writer="bench")
            committed = time.monotonic()
            deadline = committed + 5.0
            while cache.get(NS, "lag") != i:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"write {i} not visible after 5 s")
            lags.append((time.monotonic() - committed) * 1e3)
    finally:
        cache.close()
        node.close()
        other.close()
    return lags


def _lag_figures(engine: str, lags: list[float]) -> dict[str, float]:
    ordered = sorted(lags)
    return {
        f"fis_{engine}_invalidation_ms_median": round(statistics.median(ordered), 2),
        f"fis_{engine}_invalidation_ms_p90": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
        f"fis_{engine}_invalidation_ms_max": round(ordered[-1], 2),
    }


def run(quick: bool = False, redis_url: str | None = None) -> dict[str, Any]:
    rng = random.Random(253)
    reps, rounds = (2, 2) if quick else (200, 7)
    with tempfile.TemporaryDirectory(prefix="pcf-bench-") as tmp:
        engine = SqliteFIS(str(Path(tmp) / "fis.db"))
        keys, addrs = _setup(engine, rng)
        cache = CachedFIS(engine)
        table: LpmTable[Any] = LpmTable()
        for prefix, value in engine.lpm_items(NS, "routes"):
            table.insert(prefix, value)
        plain = {k: engine.get(NS, k) for k in keys}
        for k in keys:  # warm the cache; check it answers like the store
            assert cache.get(NS, k) == plain[k]
        for a in addrs:
            assert cache.lookup(NS, "routes", a) == table.lookup(a)

        get, lookup, tlookup, dget = cache.get, cache.lookup, table.lookup, plain.get

        def b_dict() -> None:
            for k in keys:
                dget(k)

        def b_cached_get() -> None:
            for k in keys:
                get(NS, k)

        def b_cached_lookup() -> None:
            for a in addrs:
                lookup(NS, "routes", a)

        def b_lpm() -> None:
            for a in addrs:
                tlookup(a)

        def b_sqlite_get() -> None:
            for k in keys[:100]:
                engine.get(NS, k)

        def b_sqlite_lookup() -> None:
            for a in addrs[:100]:
                engine.lookup(NS, "routes", a)

        cpu: dict[str, tuple[Callable[[], None], int]] = {
            "dict_get_ns": (b_dict, N_KEYS),
            "fis_cached_get_ns": (b_cached_get, N_KEYS),
            "fis_cached_lookup_ns": (b_cached_lookup, N_KEYS),
            "lpm_lookup_ns": (b_lpm, N_KEYS),
        }
        searches: dict[str, LpmTable[Any]] = {"lpm_python_search_ns": LpmTable(accelerated=False)}
        if BACKEND == "pytricia":
            searches["lpm_pytricia_search_ns"] = LpmTable(accelerated=True)
        for name, other in searches.items():
            for prefix, value in table.items():
                other.insert(prefix, value)
            search = other.search
            for a in addrs:
                assert search(a) == table.lookup(a)

            def b_search(search: Callable[[int], Any] = search) -> None:
                for a in addrs:
                    search(a)

            cpu[name] = (b_search, N_KEYS)
        best: dict[str, float] = {name: float("inf") for name in cpu}
        for _ in range(rounds):
            for name, (fn, n) in cpu.items():
                t = _round(fn, reps, time.process_time)
                best[name] = min(best[name], t / (reps * n) * 1e9)
        io_reps = 1 if quick else 5
        sqlite_get = min(
            _round(b_sqlite_get, io_reps, time.perf_counter) / (io_reps * 100) for _ in range(3)
        )
        sqlite_lookup = min(
            _round(b_sqlite_lookup, io_reps, time.perf_counter) / (io_reps * 100) for _ in range(3)
        )
        cache.close()
        engine.close()
        lag_writes = 5 if quick else 200
        sqlite_lags = invalidation_lag_ms(f"sqlite://{Path(tmp) / 'fis.db'}", lag_writes)

    out: dict[str, Any] = {k: round(v, 1) for k, v in best.items()}
    out["fis_cached_get_vs_dict"] = round(best["fis_cached_get_ns"] / best["dict_get_ns"], 2)
    out["lpm_lookup_vs_dict"] = round(best["lpm_lookup_ns"] / best["dict_get_ns"], 2)
    if "lpm_pytricia_search_ns" in best:
        out["lpm_python_vs_pytricia"] = round(
            best["lpm_python_search_ns"] / best["lpm_pytricia_search_ns"], 2
        )
    out["lpm_backend"] = BACKEND
    out["sqlite_get_us"] = round(sqlite_get * 1e6, 2)
    out["sqlite_lookup_us"] = round(sqlite_lookup * 1e6, 2)
    out.update(_lag_figures("sqlite", sqlite_lags))
    if redis_url:
        out.update(_lag_figures("redis", invalidation_lag_ms(redis_url, lag_writes)))
        r = open_engine(redis_url)
        try:
            r.put(NS, "k", {"out_label": 1}, writer="bench")
            n = 20 if quick else 2000
            t0 = time.perf_counter()
            for _ in range(n):
                r.get(NS, "k")
            out["redis_get_us"] = round((time.perf_counter() - t0) / n * 1e6, 2)
            r.drop_namespace(NS, writer="bench")
        finally:
            r.close()
    out["quick"] = quick
    out["python"] = platform.python_version()
    out["machine"] = platform.machine()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fis", description=__doc__)
    parser.add_argument("--json", metavar="PATH", help="write the figures here")
    parser.add_argument("--quick", action="store_true", help="tiny iteration counts")
    parser.add_argument("--redis", metavar="URL", help="also time RedisFIS.get on this server")
    args = parser.parse_args(argv)
    figures = run(quick=args.quick, redis_url=args.redis)
    text = json.dumps(figures, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
