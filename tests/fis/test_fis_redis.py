"""Redis-specific failure cases of the pub/sub invalidation: server restart, store reset."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import redis

from pcsite_lite.fis import CachedFIS, RedisFIS, namespace
from tests.support import FakeClock, wait_until

NS = namespace("acme", "srouting")


def _converges(cache: CachedFIS, clock: FakeClock, want: object) -> bool:
    def step() -> bool:  # each poll moves the cache's clock past its staleness bound
        clock.now += cache.staleness
        try:
            return bool(cache.get(NS, "k") == want)
        except redis.ConnectionError:
            return False  # the engine's own client may need a moment to reconnect

    return wait_until(step, 10, 0.005)


def test_cache_keeps_following_writes_after_a_server_restart(
    tmp_path: Path, start_redis: Callable[[Path], contextlib.AbstractContextManager[str]]
) -> None:
    clock = FakeClock()
    with start_redis(tmp_path) as url:
        node = RedisFIS(url, clock=clock)
        cache = CachedFIS(node, clock=clock)
        writer = RedisFIS(url)
        for i in range(3):  # the node's feed has seen version 3
            writer.put(NS, "k", i, writer="acme")
        assert _converges(cache, clock, 2)
    with start_redis(tmp_path) as url:  # same socket, empty store: versions restart at 1
        writer = RedisFIS(url)
        writer.put(NS, "k", "after restart", writer="acme")
        assert _converges(cache, clock, "after restart")
        for value in ("second", "third"):  # later writes must still invalidate
            writer.put(NS, "k", value, writer="acme")
            assert _converges(cache, clock, value)
        cache.close()
        node.close()
        writer.close()


def test_cache_recovers_when_the_store_is_reset_under_it(redis_url: str) -> None:
    clock = FakeClock()
    node = RedisFIS(redis_url, prefix="pcf-reset", clock=clock, verify_interval=0.0)
    writer = RedisFIS(redis_url, prefix="pcf-reset")
    cache = CachedFIS(node, clock=clock)
    try:
        for i in range(5):
            writer.put(NS, "k", i, writer="acme")
        assert _converges(cache, clock, 4)
        admin = redis.Redis.from_url(redis_url)
        for key in admin.scan_iter(match="pcf-reset:*"):
            admin.delete(key)  # what FLUSHALL does to this store: version back to 0
        writer.put(NS, "k", "fresh", writer="acme")  # published as version 1
        assert _converges(cache, clock, "fresh")
        assert cache.flushes >= 1
    finally:
        cache.close()
        node.close()
        writer.close()


def test_junk_on_the_change_channel_flushes_instead_of_failing(redis_url: str) -> None:
    clock = FakeClock()
    node = RedisFIS(redis_url, prefix="pcf-junk", clock=clock)
    writer = RedisFIS(redis_url, prefix="pcf-junk")
    cache = CachedFIS(node, clock=clock)
    try:
        writer.put(NS, "k", 1, writer="acme")
        assert _converges(cache, clock, 1)
        admin = redis.Redis.from_url(redis_url)
        for junk in (b"not a number", b"99 {not json", b"7 [[1]]"):
            admin.publish("pcf-junk:changes", junk)
        flushes = cache.flushes
        assert _converges(cache, clock, 1)
        assert cache.flushes > flushes
        writer.put(NS, "k", 2, writer="acme")  # and it keeps following real changes
        assert _converges(cache, clock, 2)
    finally:
        cache.close()
        node.close()
        writer.close()


def test_a_server_that_lost_writes_and_reused_their_numbers_flushes_the_cache(
    redis_url: str,
) -> None:
    """A crash with a laxer fsync policy can lose the last writes; later writes then reuse
    their numbers. The feed notices (the log entry it applied last has another write id)."""
    clock = FakeClock()
    node = RedisFIS(redis_url, prefix="pcf-lost", clock=clock)
    writer = RedisFIS(redis_url, prefix="pcf-lost")
    cache = CachedFIS(node, clock=clock)
    admin = redis.Redis.from_url(redis_url)
    try:
        writer.put(NS, "k", 1, writer="acme")
        writer.put(NS, "k", 2, writer="acme")
        assert _converges(cache, clock, 2)
        version = int(admin.get("pcf-lost:version"))
        # the server "loses" the last write: value, log entry and number
        admin.hset(f"pcf-lost:kv:{NS}", "k", "1")
        admin.xdel("pcf-lost:log", f"{version}-0")
        admin.set("pcf-lost:version", version - 1)
        admin.client_kill_filter(_type="pubsub")
        writer.put(NS, "other", "x", writer="acme")  # reuses the lost number
        assert int(admin.get("pcf-lost:version")) == version
        assert _converges(cache, clock, 1)  # not the lost 2
        assert cache.flushes == 1
    finally:
        cache.close()
        node.close()
        writer.close()
