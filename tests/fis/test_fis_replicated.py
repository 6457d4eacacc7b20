"""The replicated FIS: a Redis primary, two replicas and Sentinel (real servers on loopback).

Killing the primary under a stream of writes: writes fail with a clear error while there is
no primary and succeed again after Sentinel's failover; no write that was acknowledged (after
``WAIT`` for a replica) is lost; node caches keep answering throughout; the state stream
follows the new primary from its log."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pcsite_lite.fis import (
    CachedFIS,
    FISUnavailableError,
    FISValueError,
    RedisFIS,
    namespace,
    open_engine,
)
from pcsite_lite.fis.local_group import LocalRedisGroup
from pcsite_lite.statestream import StatePublisher, StateSubscriber
from tests.support import wait_until

NS = namespace("acme", "relay")


@pytest.fixture
def group(tmp_path: Path) -> Iterator[LocalRedisGroup]:
    with LocalRedisGroup(tmp_path / "group", replicas=2, sentinels=1, down_after_ms=1000) as g:
        yield g


def _retry(fn: Any, timeout: float = 30.0) -> Any:
    """``fn()``, again while the store is unavailable (Sentinel may flap on a loaded machine);
    after ``timeout`` s, once more, raising the store's error."""
    out: list[Any] = []

    def attempt() -> bool:
        try:
            out.append(fn())
            return True
        except FISUnavailableError:
            return False

    return out[-1] if wait_until(attempt, timeout, 0.05) else fn()


def _wait(pred: Any, timeout: float, what: str) -> None:
    assert wait_until(pred, timeout, 0.01), f"timed out waiting for {what}"


class Writer(threading.Thread):
    """Writes k0, k1, ... one at a time; remembers which were acknowledged and the errors."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.fis = open_engine(url)
        self.acked: list[int] = []
        self.errors: list[FISUnavailableError] = []
        self.unexpected: list[Exception] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                self.fis.put(NS, f"k{i}", i, writer="acme")
                self.acked.append(i)
            except FISUnavailableError as exc:
                self.errors.append(exc)
                time.sleep(0.005)  # paces the writer's retries (a failed write may be instant)
            except Exception as exc:  # anything else is a bug: the test reports it
                self.unexpected.append(exc)
                return
            i += 1


def test_killing_the_primary_loses_no_acknowledged_write(group: LocalRedisGroup) -> None:
    url = group.url(wait=1, wait_ms=3000)  # generous: CI shares 2 vCPUs
    fis = open_engine(url)
    assert isinstance(fis, RedisFIS) and fis.wait_replicas == 1
    fis.put(NS, "route", {"next_hop": "198.18.2.1"}, writer="acme")
    now = [0.0]  # the node's clock: it polls the engine only when the test advances it
    node = CachedFIS(open_engine(group.url()), clock=lambda: now[0])  # a compute node's cache
    assert node.get(NS, "route") == {"next_hop": "198.18.2.1"}
    pub = StatePublisher(fis)
    applied: list[dict[str, Any]] = []
    sub = StateSubscriber(open_engine(group.url()), applied.append)
    pub.publish({"op": "service_id", "id": 7, "psp": "acme", "service": "relay"})
    assert sub.poll() == 1

    writer = Writer(url)
    writer.start()
    try:
        _wait(lambda: len(writer.acked) >= 30, 20, "writes before the kill")
        old = group.kill_primary()
        killed_at = len(writer.acked)
        # while there is no primary the node forwards from its cache
        assert node.get(NS, "route") == {"next_hop": "198.18.2.1"}
        _wait(lambda: writer.errors, 10, "a failed write")
        assert node.get(NS, "route") == {"next_hop": "198.18.2.1"}
        new = group.wait_failover(old)
        _wait(
            lambda: len(writer.acked) >= killed_at + 20 or writer.unexpected,
            60,
            "writes after the failover",
        )
    finally:
        writer.stop.set()
        writer.join(10)
    assert not writer.unexpected, repr(writer.unexpected)
    assert new != old
    assert writer.errors and all(
        "unavailable" in str(e) or "not acknowledged" in str(e) for e in writer.errors
    )
    check = open_engine(group.url())
    lost = [i for i in writer.acked if _retry(lambda i=i: check.get(NS, f"k{i}")) != i]
    assert lost == [], f"{len(lost)} acknowledged writes lost"
    # the cache and the state stream follow the new primary (same epoch: no flush, no snapshot)
    _retry(lambda: fis.put(NS, "route", {"next_hop": "198.18.3.1"}, writer="acme"))

    def follows() -> bool:
        now[0] += 1.0
        try:
            return node.get(NS, "route") == {"next_hop": "198.18.3.1"}
        except FISUnavailableError:  # flushed (it saw writes the new primary lacks), refilling
            return False

    _wait(follows, 20, "the cache to follow the new primary")
    _retry(lambda: pub.publish({"op": "release_id", "id": 7}))
    _wait(lambda: sub.poll() >= 1, 10, "the state stream on the new primary")
    assert sub.snapshots == 1 and applied[-1] == {"op": "release_id", "id": 7}


def test_a_write_no_replica_acknowledges_fails_clearly(tmp_path: Path) -> None:
    with LocalRedisGroup(tmp_path / "g", replicas=1, sentinels=1) as g:
        fis = open_engine(g.url(wait=2, wait_ms=100))  # only one replica exists
        with pytest.raises(FISUnavailableError, match=r"not acknowledged: [01] of 2 replicas"):
            fis.put(NS, "a", 1, writer="acme")
    with pytest.raises(FISValueError, match="Sentinel"):
        open_engine("redis+sentinel://127.0.0.1/pcfis")
