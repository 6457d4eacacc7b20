"""CachedFIS: hits never reach the engine, writes invalidate, other writers are seen within the
staleness bound (driven by an injected clock), losses flush. Runs on SQLite and Redis."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from pcsite_lite.fis import (
    CONGESTION,
    ISP,
    CachedFIS,
    FISEngine,
    FISValueError,
    FrozenDict,
    SqliteFIS,
    namespace,
    open_engine,
)
from tests.support import FakeClock, wait_until

NS = namespace("acme", "srouting")


@pytest.fixture
def engines(store_url: str) -> Iterator[tuple[FISEngine, FISEngine]]:
    """Two engine objects on one store: the node's own, and 'someone else' (another writer)."""
    mine, theirs = open_engine(store_url), open_engine(store_url)
    try:
        yield mine, theirs
    finally:
        mine.close()
        theirs.close()


def _settle(cache: CachedFIS, clock: FakeClock, check: Callable[[], object]) -> None:
    """Advance past the staleness bound until ``check()`` holds (Redis: pub/sub delivery)."""

    def step() -> object:
        clock.advance(cache.staleness)
        return check()

    assert wait_until(step, 10, 0.002), "cache never converged"


def test_hit_is_answered_without_touching_the_engine(
    engines: tuple[FISEngine, FISEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, _ = engines
    mine.put(NS, "7", {"out_label": 9}, writer="acme")
    mine.lpm_put(NS, "routes", "198.18.0.0/15", "t", writer="acme")
    clock = FakeClock(1000.0)
    cache = CachedFIS(mine, clock=clock)
    assert cache.get(NS, "7") == {"out_label": 9}
    assert cache.get(NS, "missing") is None
    assert cache.lookup(NS, "routes", "198.18.3.4") == "t"
    assert cache.misses == 3

    def boom(*_: object) -> None:
        raise AssertionError("engine touched on a cache hit")

    for name in ("_get", "_lookup", "_lpm_items", "_lpm_get"):
        monkeypatch.setattr(mine, name, boom)
    for _ in range(100):
        assert cache.get(NS, "7") == {"out_label": 9}
        assert cache.get(NS, "missing") is None  # absence is cached too
        assert cache.lookup(NS, "routes", 0xC6120304) == "t"
    assert cache.misses == 3 and cache.polls == 0


def test_own_writes_invalidate_at_once(engines: tuple[FISEngine, FISEngine]) -> None:
    mine, _ = engines
    clock = FakeClock(1000.0)  # never advances: only the write itself can invalidate
    cache = CachedFIS(mine, clock=clock)
    assert cache.get(NS, "k") is None
    cache.put(NS, "k", 1, writer="acme")
    assert cache.get(NS, "k") == 1
    mine.put(NS, "k", 2, writer="acme")  # through the engine, not the cache: same process
    assert cache.get(NS, "k") == 2
    cache.delete(NS, "k", writer="acme")
    assert cache.get(NS, "k") is None
    assert cache.lookup(NS, "r", "198.18.0.1") is None
    cache.lpm_put(NS, "r", "198.18.0.0/24", "x", writer="acme")
    assert cache.lookup(NS, "r", "198.18.0.1") == "x"
    cache.lpm_delete(NS, "r", "198.18.0.0/24", writer="acme")
    assert cache.lookup(NS, "r", "198.18.0.1") is None


def test_other_writers_are_seen_after_the_staleness_bound(
    engines: tuple[FISEngine, FISEngine],
) -> None:
    mine, theirs = engines
    clock = FakeClock(1000.0)
    cache = CachedFIS(mine, clock=clock, staleness=0.005)
    theirs.put(NS, "k", "old", writer="acme")
    theirs.lpm_put(ISP, CONGESTION, "198.18.0.0/16", {"level": 0.1}, writer=ISP)
    assert cache.get(NS, "k") == "old"
    assert cache.lookup(ISP, CONGESTION, "198.18.9.9") == {"level": 0.1}

    theirs.put(NS, "k", "new", writer="acme")
    theirs.lpm_put(ISP, CONGESTION, "198.18.9.0/24", {"level": 0.9}, writer=ISP)
    # the engine the cache reads already has the change, yet the cache must not show it
    # before its own clock passes the bound
    assert wait_until(lambda: mine.get(NS, "k") == "new", 10)
    assert cache.get(NS, "k") == "old"
    assert cache.lookup(ISP, CONGESTION, "198.18.9.9") == {"level": 0.1}
    clock.advance(0.004)  # still inside the bound
    assert cache.get(NS, "k") == "old"
    clock.advance(0.001)  # bound reached: the cache polls and applies the update
    assert cache.get(NS, "k") == "new"
    assert cache.lookup(ISP, CONGESTION, "198.18.9.9") == {"level": 0.9}
    assert cache.lookup(ISP, CONGESTION, "198.18.8.1") == {"level": 0.1}

    theirs.delete(NS, "k", writer="acme")
    theirs.lpm_delete(ISP, CONGESTION, "198.18.9.0/24", writer=ISP)
    _settle(cache, clock, lambda: cache.get(NS, "k") is None)
    assert cache.lookup(ISP, CONGESTION, "198.18.9.9") == {"level": 0.1}


def test_lost_change_feed_flushes_the_cache(store_url: str) -> None:
    """The change log was pruned past the reader: nothing can be repaired, so it flushes."""
    if store_url.startswith("sqlite"):
        mine = open_engine(store_url)
        theirs: FISEngine = SqliteFIS(store_url[len("sqlite://") :], keep_changes=0)
    else:
        from pcsite_lite.fis import RedisFIS

        base, _, prefix = store_url.partition("?prefix=")
        mine = open_engine(store_url)
        theirs = RedisFIS(base, prefix=prefix, log_keep=1)
    clock = FakeClock(1000.0)
    cache = CachedFIS(mine, clock=clock)
    try:
        theirs.put(NS, "k", 1, writer="acme")
        assert cache.get(NS, "k") == 1
        if not store_url.startswith("sqlite"):  # the node misses every message from now on
            redis.Redis.from_url(base).client_kill_filter(_type="pubsub")
        for i in range(300):  # SQLite prunes every 256 writes; Redis trims the log to ~1
            theirs.put(NS, f"x{i}", i, writer="acme")
        theirs.put(NS, "k", 2, writer="acme")
        _settle(cache, clock, lambda: cache.get(NS, "x") is None and cache.flushes > 0)
        assert cache.get(NS, "k") == 2
        if not store_url.startswith("sqlite"):
            # after the flush the feed keeps delivering
            theirs.put(NS, "k", 3, writer="acme")
            _settle(cache, clock, lambda: cache.get(NS, "k") == 3)
    finally:
        cache.close()
        mine.close()
        theirs.close()


def test_broken_subscription_is_repaired_from_the_log_without_a_flush(redis_url: str) -> None:
    """Redis: the pub/sub link is killed and writes happen meanwhile; the feed re-subscribes,
    reads the missed changes from the log and drops only those entries."""
    url = f"{redis_url}?prefix=pcf-repair"
    mine, theirs = open_engine(url), open_engine(url)
    clock = FakeClock(1000.0)
    theirs.put_many(NS, [("k", 1), ("same", "x")], writer="acme")
    cache = CachedFIS(mine, clock=clock)  # subscribed after that write
    try:
        assert cache.get(NS, "k") == 1 and cache.get(NS, "same") == "x"
        misses = cache.misses
        redis.Redis.from_url(redis_url).client_kill_filter(_type="pubsub")
        theirs.put(NS, "k", 2, writer="acme")  # published while nobody listens
        _settle(cache, clock, lambda: cache.get(NS, "k") == 2)
        assert cache.flushes == 0
        assert cache.get(NS, "same") == "x"
        assert cache.misses == misses + 1  # only "k" was read again
        theirs.put(NS, "k", 3, writer="acme")  # and the new subscription delivers
        _settle(cache, clock, lambda: cache.get(NS, "k") == 3)
        assert cache.flushes == 0
    finally:
        cache.close()
        mine.close()
        theirs.close()


def test_cached_values_are_read_only(engines: tuple[FISEngine, FISEngine]) -> None:
    mine, _ = engines
    mine.put(NS, "k", {"hops": ["198.18.0.1"], "n": 1}, writer="acme")
    cache = CachedFIS(mine, clock=FakeClock(1000.0))
    value = cache.get(NS, "k")
    assert isinstance(value, FrozenDict) and value["hops"] == ["198.18.0.1"]
    with pytest.raises(TypeError):
        value["n"] = 2
    with pytest.raises(TypeError):
        value.update(n=2)
    with pytest.raises(TypeError):
        value["hops"].append("x")
    with pytest.raises(TypeError):
        value["hops"][0] = "x"
    assert dict(value) == {"hops": ["198.18.0.1"], "n": 1}
    assert json.loads(json.dumps(value)) == {"hops": ["198.18.0.1"], "n": 1}
    assert cache.get(NS, "k")["n"] == 1


def test_cache_bounds_its_key_value_entries(engines: tuple[FISEngine, FISEngine]) -> None:
    mine, _ = engines
    mine.put_many(NS, [(str(i), i) for i in range(10)], writer="acme")
    cache = CachedFIS(mine, clock=FakeClock(1000.0), max_entries=4)
    for i in range(10):
        assert cache.get(NS, str(i)) == i
    assert len(cache) == 4
    assert cache.get(NS, "9") == 9 and cache.misses == 10  # newest kept
    assert cache.get(NS, "0") == 0 and cache.misses == 11  # oldest evicted


def test_namespace_view_reads_own_and_isp_namespaces(engines: tuple[FISEngine, FISEngine]) -> None:
    mine, _ = engines
    mine.put(NS, "7", "x", writer="acme")
    mine.put(ISP, "mtu", 1500, writer=ISP)
    mine.lpm_put(ISP, CONGESTION, "198.18.0.0/15", {"level": 0.2}, writer=ISP)
    view = CachedFIS(mine, clock=FakeClock(1000.0)).view(NS)
    assert view.fetch("7") == "x"
    assert view.isp_fetch("mtu") == 1500
    assert view.isp_lookup(CONGESTION, "198.18.1.1") == {"level": 0.2}
    assert view.lookup("none", "198.18.1.1") is None


def test_cache_rejects_bad_input_clearly(engines: tuple[FISEngine, FISEngine]) -> None:
    cache = CachedFIS(engines[0], clock=FakeClock(1000.0))
    with pytest.raises(FISValueError):
        cache.get("not a namespace", "k")
    with pytest.raises(FISValueError):
        cache.get(NS, 7)  # type: ignore[arg-type]
    cache.lpm_put(NS, "r", "198.18.0.0/15", 1, writer="acme")
    with pytest.raises(FISValueError):
        cache.lookup(NS, "r", "198.18.0.300")


_WRITER = """
import sys
from pcsite_lite.fis import open_engine, namespace
fis = open_engine(sys.argv[1])
fis.put(namespace("acme", "srouting"), "k", sys.argv[2], writer="acme")
"""


def test_real_clock_cache_sees_another_process_within_the_bound(store_url: str) -> None:
    engine = open_engine(store_url)
    cache = CachedFIS(engine)  # real monotonic clock, 5 ms staleness
    try:
        engine.put(NS, "k", "before", writer="acme")
        assert cache.get(NS, "k") == "before"
        subprocess.run([sys.executable, "-c", _WRITER, store_url, "after"], check=True)
        written = time.monotonic()
        while cache.get(NS, "k") != "after":
            assert time.monotonic() - written < 3.0, "update not seen within 3 s"
        lag = time.monotonic() - written
        assert lag < 0.5  # bound: 5 ms + delivery + scheduling on a loaded 2-core machine
    finally:
        cache.close()
        engine.close()


def test_a_bad_change_record_flushes_instead_of_failing(tmp_path: Path) -> None:
    path = str(tmp_path / "fis.db")
    node, other = SqliteFIS(path), SqliteFIS(path)
    clock = FakeClock(1000.0)
    cache = CachedFIS(node, clock=clock)
    other.put(NS, "k", 1, writer="acme")
    other.lpm_put(NS, "r", "198.18.0.0/15", 1, writer="acme")
    clock.advance(cache.staleness)
    assert cache.get(NS, "k") == 1 and cache.lookup(NS, "r", "198.18.0.1") == 1
    raw = sqlite3.connect(path)
    with raw:  # someone writes a change row by hand that names no valid prefix
        raw.execute("INSERT INTO changes (kind, ns, tbl, key) VALUES ('lpm', ?, 'r', 'x')", (NS,))
    raw.close()
    other.put(NS, "k", 2, writer="acme")
    clock.advance(cache.staleness)
    assert cache.get(NS, "k") == 2
    assert cache.flushes == 1
    assert cache.lookup(NS, "r", "198.18.0.1") == 1  # reloaded after the flush
    cache.close()
    node.close()
    other.close()
