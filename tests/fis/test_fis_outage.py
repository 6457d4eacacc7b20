"""A FIS outage is survivable: the node cache keeps answering from what it holds while Redis is
away, re-validates from the change log (not a flush) when it is back, and a process started
during the outage starts from a snapshot."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pcsite_lite.fis import CachedFIS, FISUnavailableError, namespace, open_engine
from tests.support import wait_until

NS = namespace("acme", "srouting")
StartRedis = Callable[..., contextlib.AbstractContextManager[str]]


def _until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    assert wait_until(pred, timeout, 0.01), "condition never held"


def _reads(cache: CachedFIS, key: str) -> object:
    try:
        return cache.get(NS, key)
    except FISUnavailableError:
        return "unavailable"


def test_cache_serves_through_an_outage_and_revalidates_after_it(
    tmp_path: Path, start_redis: StartRedis
) -> None:
    with start_redis(tmp_path, persist=True) as url:
        node, writer = open_engine(url), open_engine(url)
        writer.put_many(NS, [("a", 1), ("b", 2)], writer="acme")
        cache = CachedFIS(node)  # subscribed after that write
        assert cache.get(NS, "a") == 1 and cache.get(NS, "b") == 2
        writer.close()
    # the server is gone: hits still answer, misses raise the platform fault, polls do not
    t0 = time.monotonic()
    for _ in range(200):
        cache.refresh()
        assert cache.get(NS, "a") == 1 and cache.get(NS, "b") == 2
    assert not cache.available and cache.outages == 1
    with pytest.raises(FISUnavailableError, match="FIS engine unavailable"):
        cache.get(NS, "never-read")
    with pytest.raises(FISUnavailableError):
        node.put(NS, "a", 5, writer="acme")
    assert time.monotonic() - t0 < 2.0  # failing fast: no connection attempt per read
    assert cache.flushes == 0
    with start_redis(tmp_path, persist=True) as url:  # same directory: the AOF brings it back
        writer = open_engine(url)
        assert writer.get(NS, "a") == 1  # the store survived the restart
        writer.put(NS, "a", 10, writer="acme")
        _until(lambda: _reads(cache, "a") == 10)
        assert cache.available and cache.flushes == 0  # re-validated from the log
        misses = cache.misses
        assert cache.get(NS, "b") == 2 and cache.misses == misses  # "b" was never dropped
        node.put(NS, "b", 20, writer="acme")  # writes work again through the node's engine
        assert cache.get(NS, "b") == 20
        cache.close()
        node.close()
        writer.close()


def test_a_process_started_during_an_outage_starts_from_a_snapshot(
    tmp_path: Path, start_redis: StartRedis
) -> None:
    snap = tmp_path / "fis-cache.json"
    with start_redis(tmp_path, persist=True) as url:
        first = CachedFIS(open_engine(url))
        writer = open_engine(url)
        writer.put_many(NS, [("a", 1), ("b", {"next_hop": "198.18.2.1"})], writer="acme")
        writer.lpm_put(NS, "egress", "198.18.0.0/15", {"via": 1}, writer="acme")
        assert first.get(NS, "a") == 1 and first.get(NS, "b") == {"next_hop": "198.18.2.1"}
        assert first.lookup(NS, "egress", "198.18.3.4") == {"via": 1}
        assert first.dirty and first.save_snapshot(snap) and not first.dirty
        first.close()
    # a restarted process, the engine away: it answers from the snapshot
    second = CachedFIS(open_engine(url))
    assert second.load_snapshot(snap) == 3
    assert second.get(NS, "a") == 1
    assert second.get(NS, "b") == {"next_hop": "198.18.2.1"}
    assert second.lookup(NS, "egress", "198.18.3.4") == {"via": 1}
    with start_redis(tmp_path, persist=True) as url:
        writer = open_engine(url)
        writer.put(NS, "a", 2, writer="acme")  # changed after the snapshot
        _until(lambda: _reads(second, "a") == 2)
        assert second.flushes == 0 and second.get(NS, "b") == {"next_hop": "198.18.2.1"}
        second.close()
        writer.close()


def test_a_snapshot_of_another_store_is_refused(tmp_path: Path, start_redis: StartRedis) -> None:
    snap = tmp_path / "snap.json"
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with start_redis(tmp_path / "one") as url:
        cache = CachedFIS(open_engine(url))
        open_engine(url).put(NS, "a", 1, writer="acme")
        assert cache.get(NS, "a") == 1 and cache.save_snapshot(snap)
        cache.close()
    with start_redis(tmp_path / "two") as url:  # a different (empty) store
        other = CachedFIS(open_engine(url))
        assert other.load_snapshot(snap) == 0
        assert other.get(NS, "a") is None
        other.close()
    (tmp_path / "junk.json").write_text("{not json")
    assert (
        CachedFIS(open_engine(f"sqlite://{tmp_path / 'f.db'}")).load_snapshot(
            tmp_path / "junk.json"
        )
        == 0
    )


def test_daemon_workers_snapshot_their_cache_and_start_from_it(tmp_path: Path) -> None:
    from pcsite_lite.daemon.config import parse
    from pcsite_lite.daemon.state import WorkerSite, fis_snapshot_path

    cfg = parse({
        "site": {"name": "t1", "public_ip": "198.18.9.1", "state_dir": str(tmp_path)},
        "control": {"admin_token": "admin-token-0123456789abcdef"},
    })  # fmt: skip
    first = WorkerSite(cfg, index=0)
    first.fis.put(NS, "a", {"next_hop": "198.18.2.1"}, writer="acme")
    assert first.fis.get(NS, "a") == {"next_hop": "198.18.2.1"}
    first.refresh()  # between batches: the changed cache is written
    path = fis_snapshot_path(cfg, 0)
    assert path.exists() and oct(path.stat().st_mode & 0o777) == "0o600"
    mtime = path.stat().st_mtime_ns
    first.refresh()  # unchanged: not written again
    assert path.stat().st_mtime_ns == mtime
    second = WorkerSite(cfg, index=0)
    misses = second.fis.misses
    assert second.fis.get(NS, "a") == {"next_hop": "198.18.2.1"}
    assert second.fis.misses == misses  # answered from the snapshot
    assert not fis_snapshot_path(cfg, 1).exists()
